#!/usr/bin/env python3
"""``check --read-data`` of one existing repository by several checkouts of cas, interleaved.

    python tools/bench_check.py --repository REPO --cas-path NAME=DIR [--cas-path NAME=DIR ...]
                                [--cpus 0,1] [--repeat 3] [--restic RESTIC_REPO]

Runs ``PYTHONPATH=DIR python -m cas -r REPO check --read-data`` from each checkout in
turn (``CAS_PASSWORD`` from the environment), pinned with ``taskset -c CPUS``, and
``restic -r RESTIC_REPO check --read-data`` after them when given (``RESTIC_PASSWORD``
from the environment), ``--repeat`` rounds, and prints per run and as medians: wall
time, CPU time of the process tree (user + system, ``getrusage`` of the reaped
children), peak resident memory summed over the process tree (sampled every 10 ms
from /proc), and each process's CPU time (the main process first).

With helper processes it also splits the main process's CPU time at the first sample
of a helper and at the last sample where a helper's CPU time grew: ``head`` (alone
before the helpers), ``mid`` (beside them) and ``tail`` (alone after them), and prints
``critical`` = head + max(mid, each helper's CPU time) + tail, the run's length on idle
cores as its CPU times give it: on a shared machine, where wall times are noise, it
shows what the work the main process does alone costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[21]) * PAGE


def sampled(label: str, cmd: list[str], env: dict[str, str], cwd: str | None) -> dict[str, Any]:
    """One run of ``cmd``, its process tree sampled every 10 ms."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    seen: dict[int, dict[str, float]] = {}  # pid -> first, last work, cpu
    series: list[tuple[float, float]] = []  # (time, the main process's CPU)
    peak = 0
    while proc.poll() is None:
        now = time.monotonic() - t0
        pids, i = [proc.pid], 0
        while i < len(pids):
            pids += _children(pids[i])
            i += 1
        total = 0
        for pid in pids:
            s = _stat(pid)
            if s is None:
                continue
            cpu, rss = s
            d = seen.setdefault(pid, {"first": now, "work": 0.0, "cpu": 0.0})
            if cpu > d["cpu"]:
                d["cpu"], d["work"] = cpu, now
            if pid == proc.pid:
                series.append((now, cpu))
            total += rss
        peak = max(peak, total)
        time.sleep(0.01)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    main = seen.get(proc.pid, {"cpu": 0.0})
    helpers = [d for pid, d in seen.items() if pid != proc.pid and d["cpu"] > 0.05]
    run: dict[str, Any] = {
        "label": label,
        "code": proc.returncode,
        "wall": wall,
        "cpu": cpu_total,
        "rss_mib": peak / 2**20,
        "main": main["cpu"],
        "helpers": sorted((d["cpu"] for d in helpers), reverse=True),
    }
    if helpers:
        first = min(d["first"] for d in helpers)
        last = max(d["work"] for d in helpers)

        def at(t: float) -> float:
            return max([c for when, c in series if when <= t] or [0.0])

        head = at(first)
        mid = at(last) - head
        tail = main["cpu"] - at(last)
        run.update(
            head=head, mid=mid, tail=tail, critical=head + max([mid, *run["helpers"]]) + tail
        )
    return run


def _line(run: dict[str, Any]) -> str:
    text = (
        f"{run['label']:>12}  wall {run['wall']:6.2f} s  cpu {run['cpu']:5.2f} s  "
        f"rss {run['rss_mib']:6.1f} MiB  main {run['main']:5.2f} s  "
        f"helpers {' '.join(f'{c:.2f}' for c in run['helpers']) or '-'}"
    )
    if "critical" in run:
        text += (
            f"  head {run['head']:.2f} mid {run['mid']:.2f} tail {run['tail']:.2f}"
            f"  critical {run['critical']:.2f} s"
        )
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", required=True)
    ap.add_argument("--cas-path", action="append", required=True, help="NAME=DIR (a checkout)")
    ap.add_argument("--cpus", default="0,1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--restic", help="a restic repository of the same data")
    ap.add_argument("--json", action="store_true", help="every run as a JSON line too")
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for spec in args.cas_path:
            name, _, path = spec.partition("=")
            env = dict(os.environ, PYTHONPATH=path)
            cmd = ["taskset", "-c", args.cpus, sys.executable, "-m", "cas"]
            cmd += ["-r", args.repository, "check", "--read-data"]
            runs.append(sampled(name, cmd, env, path))
            print(_line(runs[-1]), flush=True)
        if args.restic:
            cmd = ["taskset", "-c", args.cpus, "restic", "-r", args.restic, "-q"]
            runs.append(sampled("restic", [*cmd, "check", "--read-data"], dict(os.environ), None))
            print(_line(runs[-1]), flush=True)
        if args.json:
            for run in runs[-len(args.cas_path) - bool(args.restic) :]:
                print(json.dumps(run))
    print("medians:")
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        med: dict[str, Any] = {"label": label, "helpers": []}
        for key in ("wall", "cpu", "rss_mib", "main", "head", "mid", "tail", "critical"):
            values = [r[key] for r in mine if key in r]
            if values:
                med[key] = statistics.median(values)
        med["helpers"] = (
            [statistics.median(r["helpers"][0] for r in mine if r["helpers"])]
            if any(r["helpers"] for r in mine)
            else []
        )
        print(_line(med))


if __name__ == "__main__":
    main()
