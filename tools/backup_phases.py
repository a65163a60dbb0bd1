#!/usr/bin/env python3
"""Where a backup's main process spends its CPU and memory: the walk, then the end.

    python tools/backup_phases.py [--data /tmp/cas-bench/many] [--cores 2] [--cas-path DIR]
                                  [--work /tmp/cas-backup-phases] [--timeline SECONDS]

Backs the tree up once into a fresh local repository, pinned with ``taskset`` to the
first ``--cores`` cores, with the main process's phases marked from inside it (the
archiver's and the pool's methods wrapped before the CLI runs; no change to cas): when
the walk starts, when it is done (every file's result in, the workers not yet flushed),
when the workers have flushed, and when the repository's last packs and index are
stored.  At each mark: wall and CPU seconds of the main process so far, its resident
and peak memory, and the blobs it holds as in flight (claimed or saved, in no stored
pack yet) beside the packs indexed so far.  ``--cas-path`` runs the cas found in that
directory (before and after a change).

With ``--timeline`` this process also samples, every SECONDS of wall, the CPU (user plus
system, ``/proc/PID/stat``) of the backup's main process and of each worker it started
(``/proc/PID/task/*/children``), and prints per phase (start: until the walk starts;
walk; the workers' flush; the last packs and index; exit: after them) its wall, each
process's CPU and the idle core-seconds (cores times wall, less the CPU of all the
processes): where a core waited, and in which phase.  The other engineers' jobs on the
machine take cores too, so idle is an upper bound of what better balance could win.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

PASSWORD = "bench-password"

_WRAP = r"""
import os, resource, sys, time
T0 = time.perf_counter()
def _mark(what, saver=None):
    r = resource.getrusage(resource.RUSAGE_SELF)
    st = dict(l.split(":", 1) for l in open("/proc/self/status") if l.startswith("Vm"))
    mib = lambda k: int(st[k].split()[0]) >> 10
    extra = ""
    if saver is not None:
        extra = f", in flight {len(saver._inflight)} blobs, {saver.stats.packs} packs indexed"
    print(f"{what}: wall {time.perf_counter() - T0:.1f} s, CPU {r.ru_utime + r.ru_stime:.1f} s, "
          f"RSS {mib('VmRSS')} MiB (peak {mib('VmHWM')} MiB){extra}", file=sys.stderr, flush=True)
from cas.backup import archiver, pool
from cas.repo import repository
_saver = []
_open = repository.Repository.claim_blobs
def claim_blobs(self, ids):
    if not _saver:
        _saver.append(self.saver)
    return _open(self, ids)
repository.Repository.claim_blobs = claim_blobs
_backup = archiver.Archiver.backup
def backup(self, *a, **k):
    _mark("walk starts")
    return _backup(self, *a, **k)
archiver.Archiver.backup = backup
_pflush = pool.SaverPool.flush
def pflush(self):
    _mark("walk done", _saver[0] if _saver else None)
    _pflush(self)
    _mark("workers flushed", _saver[0] if _saver else None)
pool.SaverPool.flush = pflush
_rflush = repository.Repository.flush
def rflush(self):
    _rflush(self)
    _mark("last packs and index stored", self.saver)
repository.Repository.flush = rflush
sys.argv = ["cas", "backup", sys.argv[1]]
from cas.cli.main import main
main()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/cas-bench/many"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--cas-path", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cas-backup-phases"))
    ap.add_argument(
        "--timeline",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="sample each process's CPU this often; print idle core-seconds per phase",
    )
    args = ap.parse_args()
    cas_path = args.cas_path.resolve()
    repo, state = args.work / "repo", args.work / "state"
    for p in (repo, state):
        shutil.rmtree(p, ignore_errors=True)
    env = dict(os.environ, CAS_PASSWORD=PASSWORD, CAS_REPOSITORY=str(repo))
    env["XDG_STATE_HOME"] = str(state)
    env["PYTHONPATH"] = str(cas_path)
    py = sys.executable
    subprocess.run(
        [py, "-m", "cas", "init"], env=env, cwd=cas_path, check=True, capture_output=True
    )
    cpus = ",".join(str(c) for c in range(args.cores))
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, py, "-c", _WRAP, str(args.data.resolve())],
        env=env,
        cwd=cas_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.perf_counter()
    assert proc.stderr is not None
    marks: list[tuple[float, str]] = []  # (wall since start, phase begun), as they come
    lines: list[str] = []

    def read_marks() -> None:
        assert proc.stderr is not None
        for ln in proc.stderr:
            lines.append(ln.rstrip("\n"))
            if ln.startswith(("walk starts:", "walk done:", "workers flushed:", "last packs")):
                marks.append((time.perf_counter() - t0, ln.split(":", 1)[0]))

    reader = threading.Thread(target=read_marks)
    reader.start()
    samples: list[tuple[float, dict[int, float]]] = []
    while proc.poll() is None:
        cpu = _tree_cpu(proc.pid)  # taskset execs python: same pid
        if cpu:
            samples.append((time.perf_counter() - t0, cpu))
        time.sleep(args.timeline or 0.5)
    reader.join()
    print("\n".join(ln for ln in lines if ": wall " in ln))
    if proc.returncode != 0:
        sys.exit(f"cas backup failed ({proc.returncode}): {' '.join(lines)[-500:]}")
    if args.timeline:
        print(_phase_table(samples, marks, proc.pid, args.cores))


PHASES = ("start", "walk", "flush", "last packs", "exit")
_NEXT = {"walk starts": 1, "walk done": 2, "workers flushed": 3, "last packs and index stored": 4}


def _tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of each process it started, by pid (those gone: absent)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        out[p] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _phase_table(
    samples: list[tuple[float, dict[int, float]]],
    marks: list[tuple[float, str]],
    main_pid: int,
    cores: int,
) -> str:
    """Per phase: wall, CPU of the main process and of the workers, idle core-seconds.
    A phase's CPU is the difference of the samples nearest its ends (a worker's last
    sample before it exits counts as its end)."""
    bounds = [0.0] * len(PHASES) + [samples[-1][0] if samples else 0.0]
    for at, what in marks:
        bounds[_NEXT[what]] = at
    last: dict[int, float] = {}
    rows = ["| phase | wall | main CPU | workers' CPU | idle core-s |", "|---|---:|---:|---:|---:|"]
    totals = [0.0, 0.0, 0.0, 0.0]
    for i, name in enumerate(PHASES):
        begin, end = bounds[i], bounds[i + 1]
        at_end: dict[int, float] = dict(last)
        for t, cpu in samples:
            if t <= end:
                at_end.update(cpu)
        main = at_end.get(main_pid, 0.0) - last.get(main_pid, 0.0)
        workers = sum(v - last.get(p, 0.0) for p, v in at_end.items() if p != main_pid)
        wall = max(0.0, end - begin)
        idle = max(0.0, cores * wall - main - workers)
        rows.append(f"| {name} | {wall:.1f} s | {main:.1f} s | {workers:.1f} s | {idle:.1f} |")
        for j, v in enumerate((wall, main, workers, idle)):
            totals[j] += v
        last = at_end
    rows.append("| all | {:.1f} s | {:.1f} s | {:.1f} s | {:.1f} |".format(*totals))
    return "\n".join(rows)


if __name__ == "__main__":
    main()
