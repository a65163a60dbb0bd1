#!/usr/bin/env python3
"""Summed peak RSS of ``cas backup`` and bytes a restore reads, for one tree.

    python tools/bench_memory.py [--data /tmp/cas-bench/linux] [--repeat 3] [--workers 2]
                                 [--cas-path DIR] [--restore] [--work /tmp/cas-bench-memory]
                                 [--jobs restore,check] [--first DIR] [--traced | --heap]

Each run makes a fresh local repository (with its own cache and client state under
``--work``), backs the tree up with ``--workers`` pinned with ``taskset`` to as many
cores, and prints the peak of the process tree's resident memory summed over its
processes (sampled every 20 ms from /proc, as tools/bench.py does), the same with
shared file pages counted once, and each process's share at that peak (the main
process first); then the peak of the summed PSS (every shared page counted once, the
anonymous pages a fork shares too: what a cgroup counts) with each process's
/proc/PID/smaps_rollup at that peak.  With ``--restore`` the last run's repository is then
restored into tmpfs (/dev/shm) with ``--workers 0`` and ``--workers`` and the bytes
read from the repository (``requests.bytes_down`` of ``--json``, helpers included)
are printed beside the size of its packs; with ``--copy``, the bytes ``cas copy`` reads
from it into a fresh repository with the same keys.  ``--cas-path`` runs the cas found in that
directory (a checkout of another commit: before and after a change, same conditions;
the tool runs cas from there, since the working directory comes first on ``sys.path``).
``--jobs restore,check`` also samples, after each backup, a restore of it to tmpfs and
``check --read-data`` (default helpers, pinned to as many cores as ``--workers``, at least
one), each with its CPU seconds.
``--first DIR`` measures an incremental backup instead: each directory in ``--data`` is
backed up first from DIR's directory of that name, at one path (bind mounts, as
tools/bench.py's ``edits``: ``--first /tmp/cas-bench --data /tmp/cas-bench/edits``).
``main_peak_mib`` is the main process's own peak over the run.
``--imports`` prints only what a fresh interpreter costs (peak RSS, modules) after
importing each helper process's module and the CLI's; ``--traced`` runs the main
process under tracemalloc and prints its traced peak and largest allocation sites;
``--heap`` prints where the main process's anonymous memory is at its peak (Python's
small-object arenas and what is in use in them, glibc's arenas and their free bytes,
glibc's blocks mapped on their own).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import TreeRss, bind


class SplitRss(TreeRss):
    """TreeRss that also keeps each process's resident memory at the summed peak, and
    the peak of the processes' summed proportional set size (PSS: each page divided
    among the processes that map it, so pages a fork shares are counted once, as a
    cgroup counts them, anonymous ones included) with each process's
    /proc/PID/smaps_rollup at that peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.at_peak: list[int] = []
        self.main_peak = 0  # the main process's own peak RSS
        self.pss_peak = 0
        self.at_pss_peak: list[dict[str, int]] = []

    def _sample(self) -> tuple[int, int]:
        total, unique = super()._sample()
        pids = [self.pid]
        with contextlib.suppress(OSError):  # gone: reaped by the last sample
            for task in os.listdir(f"/proc/{self.pid}/task"):
                path = f"/proc/{self.pid}/task/{task}/children"
                with contextlib.suppress(OSError), open(path) as f:
                    pids += [int(c) for c in f.read().split()]
        if total > self.peak:
            self.at_peak = [_rss(p) for p in pids]
        self.main_peak = max(self.main_peak, _rss(self.pid))
        rollups = [_rollup(p) for p in pids]
        pss = sum(r.get("Pss", 0) for r in rollups)
        if pss > self.pss_peak:
            self.pss_peak, self.at_pss_peak = pss, rollups
        return total, unique


_ROLLUP = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Shared_Dirty", "Anonymous")


def _rollup(pid: int) -> dict[str, int]:
    """The fields of ``_ROLLUP`` from /proc/PID/smaps_rollup, in bytes (empty if gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in _ROLLUP:
                    out[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * TreeRss.PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _env(work: Path, cas_path: str | None) -> dict[str, str]:
    env = dict(os.environ, CAS_PASSWORD="bench-memory", CAS_REPOSITORY=str(work / "repo"))
    env.update(XDG_CACHE_HOME=str(work / "cache"), XDG_STATE_HOME=str(work / "state"))
    if cas_path:
        env["PYTHONPATH"] = cas_path
    return env


# Runs cas with tracemalloc on in the main process only (helpers start their own
# interpreter without it); at exit, prints its traced peak and the largest allocation
# sites of the snapshot taken when the traced heap was highest (one every 4 MiB of
# growth, checked every 0.3 s) to stderr.
TRACED = """
import atexit, sys, threading, time, tracemalloc
tracemalloc.start(1)
best = [0, None]
def watch():
    while True:
        time.sleep(0.3)
        cur = tracemalloc.get_traced_memory()[0]
        if cur > best[0] + (4 << 20):
            best[0], best[1] = cur, tracemalloc.take_snapshot()
threading.Thread(target=watch, daemon=True).start()
def report():
    peak = tracemalloc.get_traced_memory()[1]
    print(f"main process traced peak {peak / 2**20:.1f} MiB; largest sites at "
          f"{best[0] / 2**20:.1f} MiB:", file=sys.stderr)
    for s in (best[1].statistics("lineno")[:15] if best[1] else []):
        print(f"  {s.size / 2**20:6.2f} MiB {s.count:8d} {s.traceback[0]}", file=sys.stderr)
atexit.register(report)
sys.argv = ["cas", *sys.argv[1:]]
from cas.cli.main import main
main()
"""


# Runs cas, sampling the main process's anonymous resident memory every 50 ms; at
# each new high it notes where the heap is: Python's small-object allocator (arenas
# of 1 MiB held, and the bytes of blocks in use in them, from
# sys._debugmallocstats), glibc's arenas (their count, the bytes they hold from the
# system and the free bytes among them, from malloc_info) and glibc's blocks mapped on
# their own (1 MiB or more, ipc.keep_heap_small). At exit it prints that breakdown
# at the highest point to stderr.
HEAP = """
import atexit, ctypes, os, re, sys, tempfile, threading, time
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
tmp = tempfile.mkdtemp(prefix="cas-heap-")
t0, best = time.monotonic(), [0, ""]
def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    return 0
def num(pattern, text):
    m = re.search(pattern, text)
    return int(m.group(1).replace(",", "")) if m else 0
def pymalloc():
    path = os.path.join(tmp, "py")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    text = open(path).read()
    return num(r"# arenas allocated current\\s*=\\s*([\\d,]+)", text), num(
        r"# bytes in allocated blocks\\s*=\\s*([\\d,]+)", text)
def glibc():
    path = os.path.join(tmp, "mi")
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    text = open(path).read()
    tail = text[text.rindex("</heap>"):]
    sizes = re.findall(r'<total type="(fast|rest)" count="\\d+" size="(\\d+)"', tail)
    free = sum(int(n) for _, n in sizes)
    mapped = num(r'<total type="mmap" count="\\d+" size="(\\d+)"', tail)
    held = num(r'<system type="current" size="(\\d+)"', tail)
    return text.count("<heap nr="), held, free, mapped
def watch():
    while True:
        time.sleep(0.05)
        a = anon()
        if a > best[0] + (1 << 20):
            arenas, used = pymalloc()
            heaps, held, free, mapped = glibc()
            m = 1 << 20
            best[:] = [a, f"main process anonymous peak {a / m:.1f} MiB at "
                f"{time.monotonic() - t0:.1f} s: pymalloc {arenas} arenas of 1 MiB, "
                f"{used / m:.1f} MiB in use; glibc {heaps} arenas holding {held / m:.1f} "
                f"MiB, {free / m:.1f} MiB of it free; glibc mapped blocks {mapped / m:.1f} MiB"]
threading.Thread(target=watch, daemon=True).start()
atexit.register(lambda: print(best[1], file=sys.stderr))
sys.argv = ["cas", *sys.argv[1:]]
from cas.cli.main import main
main()
"""


HOOKS = {"traced": TRACED, "heap": HEAP}


def backup(
    data: str,
    work: Path,
    workers: int,
    cas_path: str | None,
    hook: str | None = None,
    first: str | None = None,
) -> dict[str, object]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = _env(work, cas_path)
    subprocess.run([sys.executable, "-m", "cas", "init"], env=env, check=True, capture_output=True)
    if first is None:
        return sampled(["backup", "--workers", str(workers), data], env, workers, hook)
    # An incremental, as tools/bench.py runs `edits`: each directory in DATA at one path
    # (a bind mount), holding FIRST's directory of that name for the first backup.
    src = work / "src"
    parts = sorted(p.name for p in Path(data).iterdir() if p.is_dir())
    args = ["backup", "--workers", str(workers), str(src)]
    cpus = ",".join(str(c) for c in range(max(1, workers)))
    with bind([(Path(first) / p, src / p) for p in parts]):
        subprocess.run(
            ["taskset", "-c", cpus, sys.executable, "-m", "cas", "-q", *args],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    with bind([(Path(data) / p, src / p) for p in parts]):
        return sampled(args, env, workers, hook)


def sampled(
    args: list[str], env: dict[str, str], cores: int, hook: str | None = None
) -> dict[str, object]:
    """Run ``cas ARGS`` pinned to ``cores`` cores (at least one) under the sampler: its
    summed peaks, each process's share, and the CPU seconds of the process tree."""
    cpus = ",".join(str(c) for c in range(max(1, cores)))
    run = [sys.executable, "-c", HOOKS[hook]] if hook else [sys.executable, "-m", "cas"]
    cmd = ["taskset", "-c", cpus, *run, *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    sampler = SplitRss(proc.pid)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    sampler.stop()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 3):
        raise SystemExit(f"{args[0]} exited {code}")
    return {
        "job": args[0],
        "peak_mib": round(sampler.peak / 2**20),
        "shared_once_mib": round(sampler.unique_peak / 2**20),
        # the main process, then its children, at the summed peak
        "at_peak_mib": [round(r / 2**20) for r in sampler.at_peak],
        "main_peak_mib": round(sampler.main_peak / 2**20, 1),
        # summed PSS (a cgroup's count) and each process's smaps_rollup at its peak
        "pss_mib": round(sampler.pss_peak / 2**20),
        "at_pss_peak_mib": [
            {k: round(v / 2**20) for k, v in r.items()} for r in sampler.at_pss_peak
        ],
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
    }


def jobs(
    work: Path, names: list[str], cores: int, cas_path: str | None, hook: str | None
) -> list[dict[str, object]]:
    """``restore`` (to tmpfs) and ``check --read-data`` of the last backup's repository
    under the sampler, with their default helpers, pinned to ``cores`` cores."""
    env = _env(work, cas_path)
    out = []
    for name in names:
        if name == "restore":
            target = Path("/dev/shm") / f"cas-bench-memory-{os.getpid()}"
            shutil.rmtree(target, ignore_errors=True)
            try:
                out.append(
                    sampled(["restore", "latest", "--target", str(target)], env, cores, hook)
                )
            finally:
                shutil.rmtree(target, ignore_errors=True)
        elif name == "check":
            out.append(sampled(["check", "--read-data"], env, cores, hook))
        else:
            raise SystemExit(f"unknown job {name!r}: restore or check")
    return out


def restore_reads(work: Path, workers: int, cas_path: str | None) -> dict[str, int]:
    env = _env(work, cas_path)
    target = Path("/dev/shm") / f"cas-bench-memory-{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "cas", "--json", "restore", "latest", "--target", str(target)]
    try:
        out = subprocess.run(
            [*cmd, "--workers", str(workers)], env=env, check=True, stdout=subprocess.PIPE
        )
    finally:
        shutil.rmtree(target, ignore_errors=True)
    summary = json.loads(out.stdout.decode().strip().splitlines()[-1])
    packs = sum(f.stat().st_size for f in (work / "repo" / "data").rglob("*") if f.is_file())
    return {
        "workers": workers,
        "bytes_read": summary["requests"]["bytes_down"],
        "pack_bytes": packs,
    }


def copy_reads(work: Path, workers: int, cas_path: str | None) -> dict[str, int]:
    """Bytes ``cas copy`` reads from the repository into a fresh one that shares its keys."""
    env = _env(work, cas_path)
    env["CAS_OTHER_PASSWORD"] = env["CAS_PASSWORD"]
    target = work / "copy"
    cas = [sys.executable, "-m", "cas"]
    subprocess.run(
        [*cas, "init", "-r", str(target), "--copy-keys-from", str(work / "repo")],
        env=env,
        check=True,
        capture_output=True,
    )
    cmd = [*cas, "--json", "copy", "--to", str(target), "--workers", str(workers)]
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE)
    shutil.rmtree(target, ignore_errors=True)
    summary = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return {"copy_workers": workers, "bytes_read": summary["requests"]["bytes_down"]}


HELPER_MODULES = (
    "cas.backup.worker",
    "cas.restore.worker",
    "cas.check.verifier",
    "cas.chunking.worker",
    "cas.cli.main",
)


def import_costs(cas_path: str | None) -> list[dict[str, object]]:
    """What a fresh interpreter costs before it does anything: its peak RSS and module
    count with nothing imported, and after importing each helper's module (and the
    CLI's, the main process's floor)."""
    env = dict(os.environ, **({"PYTHONPATH": cas_path} if cas_path else {}))
    out: list[dict[str, object]] = []
    for module in ("", *HELPER_MODULES):
        code = (f"import {module}; " if module else "") + (
            "import resource, sys; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(sys.modules))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, stdout=subprocess.PIPE
        )
        kib, modules = done.stdout.split()
        out.append(
            {
                "imports": module or "(nothing)",
                "rss_mib": round(int(kib) / 1024, 1),
                "modules": int(modules),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/tmp/cas-bench/linux")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cas-path", default=None, help="run the cas package found in this directory")
    ap.add_argument("--restore", action="store_true", help="then count what restores read")
    ap.add_argument("--copy", action="store_true", help="then count what a copy reads")
    ap.add_argument(
        "--jobs",
        default="",
        help="e.g. restore,check: after each backup, sample these jobs too (same cores)",
    )
    ap.add_argument(
        "--first",
        default=None,
        help="measure an incremental: each directory in --data is first backed up from"
        " the one of that name in FIRST, at the same path (bind mounts: root), e.g."
        " --first /tmp/cas-bench --data /tmp/cas-bench/edits as tools/bench.py's edits",
    )
    ap.add_argument("--work", default="/tmp/cas-bench-memory")
    ap.add_argument(
        "--traced",
        action="store_true",
        help="tracemalloc in the main process (slower; its figures on stderr)",
    )
    ap.add_argument(
        "--heap",
        action="store_true",
        help="where the main process's anonymous memory is at its peak: Python's"
        " allocator and glibc's arenas (on stderr)",
    )
    ap.add_argument(
        "--imports", action="store_true", help="only the interpreter's cost for each module"
    )
    args = ap.parse_args()
    if args.cas_path:
        # ``python -m cas`` and ``python -c`` put the working directory first on sys.path,
        # before PYTHONPATH: run from the other checkout, or a checkout here shadows it.
        args.data, args.work = os.path.abspath(args.data), os.path.abspath(args.work)
        if args.first:
            args.first = os.path.abspath(args.first)
        os.chdir(args.cas_path)
    if args.imports:
        for row in import_costs(args.cas_path):
            print(json.dumps(row), flush=True)
        return
    work = Path(args.work)
    hook = "traced" if args.traced else "heap" if args.heap else None
    for run in range(args.repeat):
        result = backup(args.data, work, args.workers, args.cas_path, hook, args.first)
        print(json.dumps({"run": run, **result}), flush=True)
        names = [j for j in args.jobs.split(",") if j]
        for row in jobs(work, names, args.workers, args.cas_path, hook):
            print(json.dumps({"run": run, **row}), flush=True)
    if args.restore:
        for workers in (0, args.workers):
            print(json.dumps(restore_reads(work, workers, args.cas_path)), flush=True)
    if args.copy:
        print(json.dumps(copy_reads(work, args.workers, args.cas_path)), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
