#!/usr/bin/env python3
"""Restores of one existing repository by several checkouts of cas, interleaved.

    python tools/bench_restore.py --repository REPO --cas-path NAME=DIR [--cas-path NAME=DIR ...]
                                  [--cpus 0,1] [--workers 2] [--repeat 3] [--target /dev/shm]

Restores the latest snapshot of REPO (``CAS_PASSWORD`` from the environment, or
``bench-memory`` as tools/bench_memory.py sets it; each checkout gets its own
XDG_STATE_HOME and XDG_CACHE_HOME) into a fresh directory under ``--target``
(tmpfs: /dev/shm) with each checkout in turn (``PYTHONPATH=DIR python -m cas``,
pinned with ``taskset -c CPUS``), ``--repeat`` rounds, and prints per run and as
medians: wall time, CPU time of the process tree (user + system, from ``wait4``
of the command's children; also user and system apart, and each process's share: the
main process first, then the writers, read from /proc/PID/stat at each sample, so a
process's last 20 ms may be missing), peak resident memory summed over the process tree
(sampled every 20 ms, as tools/bench.py does; each process's share at that peak)
and the bytes read from the repository (``requests.bytes_down`` of ``--json``).
``--workers auto`` leaves the number of writer processes to cas.  The checkouts
run interleaved under the same load, so their CPU times and bytes compare even
when wall times on a shared machine do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import SplitRss

_TICK = os.sysconf("SC_CLK_TCK")


class CpuRss(SplitRss):
    """SplitRss that also keeps the last CPU times (user, system) seen of each process
    of the tree: the main process and its children."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.cpu: dict[int, tuple[float, float]] = {}

    def _sample(self) -> tuple[int, int]:
        pids = [self.pid]
        try:
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with open(f"/proc/{self.pid}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except OSError:
            pass
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rpartition(")")[2].split()
                self.cpu[pid] = (int(fields[11]) / _TICK, int(fields[12]) / _TICK)
            except (OSError, ValueError, IndexError):
                continue
        return super()._sample()


def one_restore(
    repo: str, cas_path: str, state: Path, cpus: str, workers: str, target_root: str
) -> dict[str, object]:
    env = dict(os.environ, CAS_REPOSITORY=repo, PYTHONPATH=cas_path)
    env.setdefault("CAS_PASSWORD", "bench-memory")
    env.update(XDG_CACHE_HOME=str(state / "cache"), XDG_STATE_HOME=str(state / "state"))
    target = tempfile.mkdtemp(prefix="cas-bench-restore-", dir=target_root)
    cmd = ["taskset", "-c", cpus, sys.executable, "-m", "cas", "--json", "restore", "latest"]
    cmd += ["--target", target] + ([] if workers == "auto" else ["--workers", workers])
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, cwd=target_root)
        rss = CpuRss(proc.pid)
        rss.start()
        out, _ = proc.communicate()
        wall = time.monotonic() - started
        rss.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        shutil.rmtree(target, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"restore with {cas_path} failed (exit {proc.returncode})")
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    per_process = [round(u + s, 2) for u, s in rss.cpu.values()]  # main process first
    requests = json.loads(out).get("requests") or {}
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(user + system, 2),
        "user_s": round(user, 2),
        "sys_s": round(system, 2),
        "cpu_per_process_s": per_process,
        "rss_mib": round(rss.peak / 2**20),
        "rss_per_process_mib": [round(r / 2**20) for r in rss.at_peak],
        "bytes_read": requests.get("bytes_down", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", required=True, help="an existing repository")
    ap.add_argument(
        "--cas-path", action="append", required=True, metavar="NAME=DIR", help="a checkout"
    )
    ap.add_argument("--cpus", default="0,1", help="taskset CPU list")
    ap.add_argument("--workers", default="2", help="--workers of cas restore, or auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--target", default="/dev/shm", help="where to restore (tmpfs)")
    args = ap.parse_args()
    checkouts = dict(c.split("=", 1) for c in args.cas_path)
    work = Path(tempfile.mkdtemp(prefix="cas-bench-restore-state-"))
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in checkouts}
    try:
        for _ in range(args.repeat):
            for name, path in checkouts.items():
                run = one_restore(
                    args.repository, path, work / name, args.cpus, args.workers, args.target
                )
                runs[name].append(run)
                print(json.dumps({"checkout": name, **run}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, rows in runs.items():
        summary = {"checkout": name, "median_of": len(rows)}
        for key in ("wall_s", "cpu_s", "user_s", "sys_s", "rss_mib", "bytes_read"):
            values = [float(r[key]) for r in rows]  # type: ignore[arg-type]
            summary[key] = statistics.median(values)
            summary[key.split("_")[0] + "_range"] = [min(values), max(values)]
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
