#!/usr/bin/env python3
"""CPU time of ``cas backup`` per process: where the second core's overhead goes.

    python tools/bench_cpu.py [--data /tmp/cas-bench/linux] [--repeat 3] [--cores 1,2]
                              [--cas-path DIR ...] [--work /tmp/cas-bench-cpu]

Each run makes a fresh local repository (its own client state under ``--work``) and
backs the tree up pinned with ``taskset`` to the first N cores (N from ``--cores``; cas
picks its default number of workers from them: none on one core).  Runs go round
robin over every cas (``--cas-path``, default this checkout) and core count, so a
machine whose speed drifts moves them alike.  Per run it prints one JSON line: wall
seconds, user and system seconds of the whole tree (``wait4``), and per process (the
main process and each backup worker) user and system seconds, minor page faults,
voluntary and involuntary context switches, major page faults and blocks read from disk
(``inblock``: a tree no longer in the page cache shows there), written by each process
as it exits (a ``sitecustomize`` module put on ``PYTHONPATH`` for the run: no change to
cas).  Then the medians per cas and core
count.  With ``--faults`` each backup worker also counts the minor page faults its
thread took inside the calls that allocate its buffers (the chunks of files read with
the chunker, compression, packing, the one-read small files), as ``faults_in``:
``{"call": "faults/calls"}``.  CPU seconds summed over processes move far less than
wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PASSWORD = "bench-password"

_SITE = """
import atexit, collections, importlib, os, resource, sys, threading
_FAULTS = collections.Counter()
_CALLS = collections.Counter()
def _report():
    r = resource.getrusage(resource.RUSAGE_SELF)
    role = "worker" if sys.argv[0].endswith(os.path.join("backup", "worker.py")) else "main"
    faults = ",".join(f"{k}={v}/{_CALLS[k]}" for k, v in _FAULTS.most_common()) or "-"
    with open(os.environ["CAS_BENCH_CPU_OUT"], "a") as f:
        f.write(" ".join(map(str, (os.getpid(), role, r.ru_utime, r.ru_stime, r.ru_minflt,
                                   r.ru_nvcsw, r.ru_nivcsw, r.ru_majflt, r.ru_inblock,
                                   faults))) + "\\n")
def _thread_faults():
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
def _count(key, before):
    _FAULTS[key] += _thread_faults() - before
    _CALLS[key] += 1
def _wrap(module, name, cls=None):
    owner = importlib.import_module(module)
    owner = getattr(owner, cls) if cls else owner
    f = getattr(owner, name)
    key = f"{cls + '.' if cls else ''}{name}"
    def wrapped(*a, **k):
        before = _thread_faults()
        try:
            return f(*a, **k)
        finally:
            _count(key, before)
    setattr(owner, name, wrapped)
def _wrap_iter(module, name):
    owner = importlib.import_module(module)
    f = getattr(owner, name)
    def wrapped(*a, **k):
        it = f(*a, **k)
        while True:
            before = _thread_faults()
            try:
                x = next(it)
            except StopIteration:
                return
            finally:
                _count(name + ".next", before)
            yield x
    setattr(owner, name, wrapped)
def _instrument():
    # Minor faults (this thread's) inside the calls that allocate a worker's buffers.
    _wrap_iter("cas.chunking.resync", "chunk_ids")
    _wrap("cas.format.compress", "encode_payload")
    _wrap("cas.repo.packer", "add", "Packer")
    _wrap("cas.repo.packer", "finish", "Packer")
    _wrap("cas.backup.archiver", "read_small")
if os.environ.get("CAS_BENCH_CPU_OUT"):
    atexit.register(_report)
    if os.environ.get("CAS_BENCH_CPU_FAULTS") and "cas.backup.worker" in sys.orig_argv:
        _instrument()
"""


def one_run(
    cas_path: Path, cores: int, data: Path, work: Path, faults: bool = False
) -> dict[str, object]:
    repo, state, out = work / "repo", work / "state", work / "procs.txt"
    for p in (repo, state):
        shutil.rmtree(p, ignore_errors=True)
    out.unlink(missing_ok=True)
    site = work / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    env = dict(os.environ, CAS_PASSWORD=PASSWORD, CAS_REPOSITORY=str(repo))
    env["XDG_STATE_HOME"] = str(state)
    env["PYTHONPATH"] = os.pathsep.join([str(cas_path), str(site)])
    cas = [sys.executable, "-m", "cas"]
    subprocess.run([*cas, "init"], env=env, cwd=cas_path, check=True, capture_output=True)
    env["CAS_BENCH_CPU_OUT"] = str(out)
    if faults:
        env["CAS_BENCH_CPU_FAULTS"] = "1"
    cpus = ",".join(str(c) for c in range(cores))
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, *cas, "backup", str(data)],
        env=env,
        cwd=cas_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    if status != 0:
        sys.exit(f"cas backup failed ({status}): {err.strip()[-500:]}")
    procs = []
    for line in out.read_text().splitlines() if out.exists() else []:
        _pid, role, user, system, minflt, vcsw, ivcsw, majflt, inblock, faults = line.split()
        proc: dict[str, object] = {
            "role": role,
            "user": round(float(user), 2),
            "sys": round(float(system), 2),
            "minflt": int(minflt),
            "vcsw": int(vcsw),
            "ivcsw": int(ivcsw),
            "majflt": int(majflt),
            "inblock": int(inblock),
        }
        if faults != "-":  # --faults: "call=faults/calls,..."
            proc["faults_in"] = dict(f.split("=") for f in faults.split(","))
        procs.append(proc)
    procs.sort(key=lambda p: p["role"] != "main")
    return {
        "cas": str(cas_path),
        "cores": cores,
        "wall": round(wall, 2),
        "user": round(usage.ru_utime, 2),
        "sys": round(usage.ru_stime, 2),
        "cpu": round(usage.ru_utime + usage.ru_stime, 2),
        "procs": procs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/cas-bench/linux"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--cas-path", type=Path, action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path("/tmp/cas-bench-cpu"))
    ap.add_argument(
        "--faults",
        action="store_true",
        help="also count, in each backup worker, the minor page faults inside the calls "
        "that allocate its buffers (chunking, compression, packing, small reads): slower",
    )
    args = ap.parse_args()
    paths = [p.resolve() for p in args.cas_path] or [HERE.parent]
    cores = [int(c) for c in args.cores.split(",")]
    runs: dict[tuple[str, int], list[dict[str, object]]] = {}
    for _ in range(args.repeat):
        for path in paths:
            for n in cores:
                r = one_run(path, n, args.data.resolve(), args.work, args.faults)
                print(json.dumps(r), flush=True)
                runs.setdefault((str(path), n), []).append(r)
    for (path, n), rs in runs.items():
        med = {k: statistics.median(_num(r[k]) for r in rs) for k in ("wall", "user", "sys", "cpu")}
        spread = [r["wall"] for r in rs]
        print(
            f"{path} {n} core(s): median wall {med['wall']:.1f} s (runs {spread}), "
            f"user {med['user']:.1f} s, sys {med['sys']:.1f} s, cpu {med['cpu']:.1f} s"
        )


def _num(value: object) -> float:
    assert isinstance(value, (int, float))
    return float(value)


if __name__ == "__main__":
    main()
