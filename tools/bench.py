#!/usr/bin/env python3
"""Backup, re-backup, incremental, restore and check benchmarks: cas beside restic and borg.

    python tools/bench.py [--data /tmp/cas-bench] [--sets linux,big,edits,many]
                          [--tools cas,restic,borg] [--repeat 3] [--repeat-many 1]
                          [--cores 1,2] [--out docs/benchmarks.md]

The datasets come from ../shared/bench/datasets.sh.  Each tool runs at its
defaults (restic: zstd "auto"; borg 1.2: lz4, repokey-blake2; cas: zstd 3
with an incompressibility probe) and gets a fresh repository per dataset and
run; every operation is timed as a child process whose peak RSS comes from
wait4().  Per dataset:

- linux, big: first backup, unchanged re-backup, restore (to disk, and to tmpfs under
  /dev/shm, which takes the disk's noise out), check --read-data;
- edits: backup of linux and big (not reported), then the same paths holding
  edits/linux and edits/big (bind mounts, so every tool sees one path that
  changed), timed as "incremental", with the repository growth it caused;
- many: first backup and unchanged re-backup (files/s and peak RSS matter).

With ``--cores 1,2`` every tool runs pinned with ``taskset`` to the first N cores, once per
count, and the report adds each tool's speedup from the extra cores.  Peak RSS is summed
over the tool's whole process tree (sampled every 20 ms from /proc, and never below what
``wait4`` reports), so a helper process counts.

Times are medians over --repeat runs, RSS the maximum; each run's line on stderr and the
JSON also give the CPU time (user + system of the tool and the processes it waited for,
from wait4), which a shared machine moves far less than the wall time.  Prints Markdown
tables (results, then the issue's targets with the measured ratios) and,
with --out, writes them with the machine description and the date, and the
raw measurements next to it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-password"
TMPFS = Path("/dev/shm/cas-bench")
HERE = Path(__file__).resolve().parent


@dataclass
class Measure:
    """One timed child process."""

    seconds: float
    rss_mib: float
    # The tree's memory with pages of shared files (the interpreter, its libraries)
    # counted once, as a cgroup counts them: its processes' anonymous memory summed,
    # plus the largest file-backed resident set among them.
    unique_mib: float = 0.0
    # User plus system CPU time of the process and the descendants it waited for
    # (wait4): on a shared machine it moves far less than the wall time.
    cpu_seconds: float = 0.0


def run(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> Measure:
    """Run ``cmd`` (pinned to $BENCH_CPUS when set); fail loudly on a non-zero exit (a
    benchmark of a failure means nothing).  RSS: the peak of the process tree's sum."""
    cpus = env.get("BENCH_CPUS")
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    sampler = TreeRss(proc.pid)
    sampler.start()
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    sampler.stop()
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {err.decode(errors='replace')[-2000:]}")
    return Measure(
        elapsed,
        max(usage.ru_maxrss / 1024, sampler.peak / 2**20),
        sampler.unique_peak / 2**20,
        usage.ru_utime + usage.ru_stime,
    )


class TreeRss(threading.Thread):
    """Samples the summed resident memory of a process and all its descendants, and the
    same with file-backed pages counted once (``unique_peak``: each process's resident
    minus shared pages, summed, plus the largest shared part; /proc/PID/statm)."""

    PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.unique_peak = 0
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        while not self._done.wait(0.02):
            total, unique = self._sample()
            self.peak = max(self.peak, total)
            self.unique_peak = max(self.unique_peak, unique)

    def _sample(self) -> tuple[int, int]:
        total, anon, shared_most, todo, seen = 0, 0, 0, [self.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                with open(f"/proc/{pid}/statm") as f:
                    fields = f.read().split()
                resident, shared = int(fields[1]) * self.PAGE, int(fields[2]) * self.PAGE
                total += resident
                anon += resident - shared
                shared_most = max(shared_most, shared)
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError, IndexError):
                continue
        return total, anon + shared_most


class Tool:
    """How one backup program does init, backup and restore."""

    name = ""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.env = dict(os.environ)

    def init(self) -> None:
        raise NotImplementedError

    def backup(self, path: Path) -> Measure:
        raise NotImplementedError

    def restore(self, target: Path) -> Measure:
        raise NotImplementedError

    def check_data(self) -> Measure:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


class Cas(Tool):
    name = "cas"

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.env.update(CAS_PASSWORD=PASSWORD, CAS_REPOSITORY=str(repo))
        self.exe = [sys.executable, "-m", "cas"]

    def init(self) -> None:
        run([*self.exe, "init"], self.env)

    def backup(self, path: Path) -> Measure:
        return run([*self.exe, "backup", str(path)], self.env)

    def restore(self, target: Path) -> Measure:
        return run([*self.exe, "restore", "latest", "--target", str(target)], self.env)

    def check_data(self) -> Measure:
        return run([*self.exe, "check", "--read-data"], self.env)

    def version(self) -> str:
        out = subprocess.run([*self.exe, "--version"], capture_output=True, env=self.env)
        return out.stdout.decode().strip()


class Restic(Tool):
    name = "restic"

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.env.update(
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_REPOSITORY=str(repo),
            RESTIC_CACHE_DIR=str(repo) + ".cache",
        )

    def init(self) -> None:
        run(["restic", "init"], self.env)

    def backup(self, path: Path) -> Measure:
        return run(["restic", "backup", "--quiet", str(path)], self.env)

    def restore(self, target: Path) -> Measure:
        return run(["restic", "restore", "latest", "--target", str(target)], self.env)

    def check_data(self) -> Measure:
        return run(["restic", "check", "--read-data"], self.env)

    def version(self) -> str:
        return (
            subprocess.run(["restic", "version"], capture_output=True)
            .stdout.decode()
            .split(" compiled")[0]
            .strip()
        )


class Borg(Tool):
    name = "borg"

    def __init__(self, repo: Path) -> None:
        super().__init__(repo)
        self.env.update(
            BORG_PASSPHRASE=PASSWORD,
            BORG_REPO=str(repo),
            BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
            BORG_BASE_DIR=str(repo) + ".base",
        )
        self.n = 0

    def init(self) -> None:
        run(["borg", "init", "--encryption=repokey-blake2"], self.env)

    def backup(self, path: Path) -> Measure:
        self.n += 1
        return run(["borg", "create", f"::a{self.n}", str(path)], self.env)

    def restore(self, target: Path) -> Measure:
        target.mkdir(parents=True, exist_ok=True)
        return run(["borg", "extract", f"::a{self.n}"], self.env, cwd=str(target))

    def check_data(self) -> Measure:
        return run(["borg", "check", "--verify-data"], self.env)

    def version(self) -> str:
        return subprocess.run(["borg", "--version"], capture_output=True).stdout.decode().strip()


TOOLS = {"cas": Cas, "restic": Restic, "borg": Borg}


def du(path: Path) -> int:
    """Bytes used by files under ``path``."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(d, f)).st_size
    return total


def warm(path: Path) -> int:
    """Read every file once so all tools start from the same (warm) page cache; returns bytes."""
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        total += len(chunk)
    return total


OPS = {
    "linux": ("backup", "rebackup", "restore", "restore tmpfs", "check --read-data"),
    "big": ("backup", "rebackup", "restore", "restore tmpfs", "check --read-data"),
    "edits": ("incremental",),
    "many": ("backup", "rebackup"),
}


@contextlib.contextmanager
def bind(pairs: list[tuple[Path, Path]]) -> Iterator[None]:
    """Bind-mount each source directory on its mount point for the duration (needs root)."""
    done = []
    try:
        for src, dst in pairs:
            dst.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
            done.append(dst)
        yield
    finally:
        for dst in reversed(done):
            subprocess.run(["umount", str(dst)], check=False)


def fresh(tool_cls: type[Tool], work: Path) -> tuple[Tool, Path, Path]:
    repo = work / f"{tool_cls.name}-repo"
    target = work / f"{tool_cls.name}-restore"
    for p in (repo, target, Path(str(repo) + ".cache"), Path(str(repo) + ".base")):
        shutil.rmtree(p, ignore_errors=True)
    tool = tool_cls(repo)
    tool.init()
    return tool, repo, target


def run_once(tool_cls: type[Tool], name: str, root: Path, work: Path) -> dict[str, Measure | int]:
    """One run of the dataset's operations on a fresh repository."""
    tool, repo, target = fresh(tool_cls, work)
    out: dict[str, Measure | int] = {}
    # Each run starts from a warm page cache, whatever ran before it: a large restore or
    # another tool's runs may have pushed the tree out (on `many` a cold tree took cas
    # 122 s and restic 103 s to back up on two cores, warm about 42 and 35 s), and the
    # tool that runs first after that would pay for every tool.
    for part in ("edits/linux", "edits/big", "linux", "big") if name == "edits" else (name,):
        warm(root / part)
    if name == "edits":
        src = work / "src"
        with bind([(root / "linux", src / "linux"), (root / "big", src / "big")]):
            tool.backup(src)
        before = du(repo)
        with bind(
            [(root / "edits" / "linux", src / "linux"), (root / "edits" / "big", src / "big")]
        ):
            out["incremental"] = tool.backup(src)
        out["added_bytes"] = du(repo) - before
        out["repo_bytes"] = du(repo)
        return out
    data = root / name
    out["backup"] = tool.backup(data)
    out["rebackup"] = tool.backup(data)
    out["repo_bytes"] = du(repo)
    if "restore" in OPS[name]:
        out["restore"] = tool.restore(target)
        shutil.rmtree(target, ignore_errors=True)
        in_memory = TMPFS / target.name
        shutil.rmtree(in_memory, ignore_errors=True)
        out["restore tmpfs"] = tool.restore(in_memory)
        shutil.rmtree(in_memory, ignore_errors=True)
        out["check --read-data"] = tool.check_data()
    return out


def bench_one(
    tool_cls: type[Tool], name: str, root: Path, work: Path, repeat: int
) -> dict[str, object]:
    """Medians (times) and maxima (RSS) over ``repeat`` runs for one tool and dataset."""
    runs = []
    for i in range(repeat):
        r = run_once(tool_cls, name, root, work)
        runs.append(r)
        print(
            f"  {tool_cls.name} run {i + 1}: "
            + ", ".join(
                f"{k} {v.seconds:.1f}s/{v.rss_mib:.0f}MiB/cpu {v.cpu_seconds:.1f}s"
                for k, v in r.items()
                if isinstance(v, Measure)
            ),
            file=sys.stderr,
        )
    out: dict[str, object] = {}
    for k, v in runs[-1].items():
        if isinstance(v, Measure):
            ms = [r[k] for r in runs]
            out[k] = Measure(
                statistics.median(m.seconds for m in ms),  # type: ignore[union-attr]
                max(m.rss_mib for m in ms),  # type: ignore[union-attr]
                max(m.unique_mib for m in ms),  # type: ignore[union-attr]
                statistics.median(m.cpu_seconds for m in ms),  # type: ignore[union-attr]
            )
            out[k + " runs"] = [m.seconds for m in ms]  # type: ignore[union-attr]
        else:
            out[k] = int(statistics.median(int(r[k]) for r in runs))  # type: ignore[arg-type]
    return out


def dataset_size(path: Path) -> tuple[int, int]:
    """(bytes, files) of a dataset, reading every file so all tools start from a warm cache."""
    return warm(path), sum(len(f) for _, _, f in os.walk(path))


def targets(res: dict[str, dict[str, dict[str, object]]]) -> list[str]:
    """The issue's targets, each with the measured ratio and whether it holds."""

    def t(ds: str, tool: str, op: str) -> float | None:
        m = res.get(ds, {}).get(tool, {}).get(op)
        return m.seconds if isinstance(m, Measure) else None

    def rss(ds: str, tool: str, op: str) -> float | None:
        m = res.get(ds, {}).get(tool, {}).get(op)
        return m.rss_mib if isinstance(m, Measure) else None

    rows = []

    def row(what: str, cas: float | None, limit: float | None, unit: str = "s") -> None:
        if cas is None or limit is None:
            return
        ok = "met" if cas <= limit else "not met"
        rows.append(f"| {what} | {cas:.1f} {unit} | {limit:.1f} {unit} | {ok} |")

    def half_of(ds: str, op: str, *tools: str) -> float | None:
        xs = [x for x in (t(ds, tool, op) for tool in tools) if x is not None]
        return min(xs) / 2 if xs else None

    row(
        "big first backup: 2x borg's throughput",
        t("big", "cas", "backup"),
        half_of("big", "backup", "borg"),
    )
    rb = t("big", "restic", "backup")
    row(
        "big first backup: 4x restic's throughput",
        t("big", "cas", "backup"),
        rb / 4 if rb else None,
    )
    row(
        "linux first backup: half the faster of restic, borg",
        t("linux", "cas", "backup"),
        half_of("linux", "backup", "restic", "borg"),
    )
    row(
        "linux unchanged re-backup: half restic",
        t("linux", "cas", "rebackup"),
        half_of("linux", "rebackup", "restic"),
    )
    row(
        "edits incremental: half restic",
        t("edits", "cas", "incremental"),
        half_of("edits", "incremental", "restic"),
    )
    ca = res.get("edits", {}).get("cas", {}).get("added_bytes")
    ra = res.get("edits", {}).get("restic", {}).get("added_bytes")
    if isinstance(ca, int) and isinstance(ra, int):
        row("edits incremental: new data stored <= restic's", ca / 2**20, ra / 2**20, "MiB")
    for ds in ("big", "linux"):
        row(
            f"{ds} restore: half the faster of restic, borg",
            t(ds, "cas", "restore"),
            half_of(ds, "restore", "restic", "borg"),
        )
    row(
        "big check --read-data: half restic",
        t("big", "cas", "check --read-data"),
        half_of("big", "check --read-data", "restic"),
    )
    for ds, ops in OPS.items():
        for op in ops:
            row(
                f"{ds} {op}: peak RSS <= restic's", rss(ds, "cas", op), rss(ds, "restic", op), "MiB"
            )
    if not rows:
        return []
    return ["| target | cas | limit | |", "|---|---:|---:|---|", *rows]


def _command_line() -> str:
    """This run's command as a reader would type it (docs name the command beside every
    figure: tests/test_doc_figures.py)."""
    return " ".join(["python tools/bench.py", *map(shlex.quote, sys.argv[1:])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/cas-bench"))
    ap.add_argument("--sets", default="linux,big,edits,many")
    ap.add_argument("--tools", default="cas,restic,borg")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--repeat-many", type=int, default=1)
    ap.add_argument(
        "--cores", default="", help="e.g. 1,2: pin every tool to the first N cores, per N"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/cas-bench-work"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tools = [TOOLS[t] for t in args.tools.split(",")]
    core_counts = [int(c) for c in args.cores.split(",") if c] or [0]  # 0: not pinned
    by_cores: dict[int, dict[str, dict[str, dict[str, object]]]] = {n: {} for n in core_counts}
    sizes: dict[str, tuple[int, int]] = {}
    versions = {t.name: t(args.work / "v").version() for t in tools}
    for name in args.sets.split(","):
        parts = ["edits/linux", "edits/big", "linux", "big"] if name == "edits" else [name]
        for part in parts:
            if not (args.data / part).is_dir():
                raise SystemExit(
                    f"{args.data / part} missing: run "
                    f"../shared/bench/datasets.sh {args.data} {name}"
                )
        if name == "edits":
            (b1, f1), (b2, f2) = (dataset_size(args.data / p) for p in parts[:2])
            sizes[name] = (b1 + b2, f1 + f2)
            for p in parts[2:]:
                warm(args.data / p)
        else:
            sizes[name] = dataset_size(args.data / name)
        repeat = args.repeat_many if name == "many" else args.repeat
        for n in core_counts:
            if n:
                os.environ["BENCH_CPUS"] = ",".join(str(c) for c in range(n))
            for t in tools:
                print(f"{name}: {t.name}" + (f" on {n} cores" if n else ""), file=sys.stderr)
                by_cores[n].setdefault(name, {})[t.name] = bench_one(
                    t, name, args.data, args.work, repeat
                )
                if args.out:  # what is measured so far survives a run stopped before the end
                    partial = args.out.with_suffix(".partial.json")
                    partial.write_text(json.dumps(_raw(by_cores), indent=1) + "\n")
            os.environ.pop("BENCH_CPUS", None)
    text = report(by_cores, sizes, versions, args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Benchmarks\n\nGenerated by `{_command_line()}`. Where the time goes, the"
            " targets not met and what would close them: [performance.md](performance.md).\n\n"
            + text
        )
        args.out.with_suffix(".json").write_text(json.dumps(_raw(by_cores), indent=1) + "\n")
        args.out.with_suffix(".partial.json").unlink(missing_ok=True)


def _raw(by_cores: dict[int, dict[str, dict[str, dict[str, object]]]]) -> dict[str, object]:
    """The measurements as JSON: per core count, dataset, tool and operation."""
    return {
        str(n): {
            ds: {
                tool: {k: (v.__dict__ if isinstance(v, Measure) else v) for k, v in r.items()}
                for tool, r in tools_r.items()
            }
            for ds, tools_r in res.items()
        }
        for n, res in by_cores.items()
    }


def report(
    by_cores: dict[int, dict[str, dict[str, dict[str, object]]]],
    sizes: dict[str, tuple[int, int]],
    versions: dict[str, str],
    args: argparse.Namespace,
) -> str:
    pinned = [n for n in by_cores if n]
    lines = [
        f"Benchmarks run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}; median of {args.repeat} run(s) "
        f"({args.repeat_many} for `many`), warm page cache, each tool at its defaults"
        + (f", pinned with taskset to {' and '.join(map(str, pinned))} core(s)" if pinned else "")
        + "; peak RSS summed over each tool's processes, and that memory with the pages of "
        "shared files (interpreter, libraries) counted once, as a cgroup counts them.",
        "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()),
        "",
        "| dataset | tool | cores | operation | time (s) | runs (s) | MB/s | files/s "
        "| peak RSS (MiB) | shared once (MiB) | repo (MiB) | added (MiB) |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, res in by_cores.items():
        for ds, by_tool in res.items():
            nbytes, nfiles = sizes[ds]
            for tool, r in by_tool.items():
                repo = r.get("repo_bytes", 0)
                added = r.get("added_bytes")
                assert isinstance(repo, int)
                for op in OPS[ds]:
                    m = r[op]
                    assert isinstance(m, Measure)
                    each = " ".join(f"{x:.1f}" for x in r[op + " runs"])  # type: ignore[attr-defined]
                    lines.append(
                        f"| {ds} | {tool} | {n or 'all'} | {op} | {m.seconds:.1f} | {each} | "
                        f"{nbytes / m.seconds / 1e6:.0f} | {nfiles / m.seconds:.0f} | "
                        f"{m.rss_mib:.0f} | {m.unique_mib:.0f} | {repo / 2**20:.0f} | "
                        + (f"{added / 2**20:.1f} |" if isinstance(added, int) else "|")
                    )
    if len(pinned) >= 2:
        lines += [
            "",
            *speedups(by_cores[min(pinned)], by_cores[max(pinned)], min(pinned), max(pinned)),
        ]
    top = by_cores[max(by_cores)]
    floor = floor_targets(top, by_cores.get(1), by_cores.get(2) if 2 in by_cores else None)
    if floor:
        lines += [
            "",
            "Targets of issue #17 (floor and goal; every tool on the most cores):",
            "",
            *floor,
        ]
    tgt = targets(top)
    if tgt:
        lines += [
            "",
            "Targets of issue #7 (cas's median against the limit the others set):",
            "",
            *tgt,
        ]
    return "\n".join(lines) + "\n"


def _seconds(
    res: dict[str, dict[str, dict[str, object]]], ds: str, tool: str, op: str
) -> float | None:
    m = res.get(ds, {}).get(tool, {}).get(op)
    return m.seconds if isinstance(m, Measure) else None


def speedups(
    few: dict[str, dict[str, dict[str, object]]],
    many: dict[str, dict[str, dict[str, object]]],
    n_few: int,
    n_many: int,
) -> list[str]:
    """Each tool's speedup from ``n_few`` to ``n_many`` cores, per job."""
    tools = sorted({tool for res in (few, many) for by in res.values() for tool in by})
    rows = [
        f"Speedup from {n_few} to {n_many} cores (time on {n_few} / time on {n_many}):",
        "",
        "| dataset | operation | " + " | ".join(tools) + " |",
        "|---|---|" + "---:|" * len(tools),
    ]
    for ds, ops in OPS.items():
        for op in ops:
            cells = []
            for tool in tools:
                a, b = _seconds(few, ds, tool, op), _seconds(many, ds, tool, op)
                cells.append(f"x{a / b:.2f}" if a and b else "")
            if any(cells):
                rows.append(f"| {ds} | {op} | " + " | ".join(cells) + " |")
    return rows


def floor_targets(
    top: dict[str, dict[str, dict[str, object]]],
    one: dict[str, dict[str, dict[str, object]]] | None,
    two: dict[str, dict[str, dict[str, object]]] | None,
) -> list[str]:
    """Issue #17: floor (cas no slower than the faster of restic and borg on every job, x1.6
    from the second core, summed RSS <= restic's) and goal (half the time, x1.8)."""
    rows: list[str] = []

    def row(what: str, value: float | None, limit: float | None, better: str, unit: str) -> None:
        if value is None or limit is None:
            return
        ok = value <= limit if better == "lower" else value >= limit
        rows.append(
            f"| {what} | {value:.2f} {unit} | {limit:.2f} {unit} | {'met' if ok else 'not met'} |"
        )

    for ds, ops in OPS.items():
        for op in ops:
            others = [x for x in (_seconds(top, ds, t, op) for t in ("restic", "borg")) if x]
            cas = _seconds(top, ds, "cas", op)
            if others:
                row(
                    f"floor: {ds} {op} <= the faster of restic, borg",
                    cas,
                    min(others),
                    "lower",
                    "s",
                )
                row(f"goal: {ds} {op} <= half of it", cas, min(others) / 2, "lower", "s")
            m, r = top.get(ds, {}).get("cas", {}).get(op), top.get(ds, {}).get("restic", {}).get(op)
            if isinstance(m, Measure) and isinstance(r, Measure):
                row(
                    f"floor: {ds} {op} summed RSS <= restic's", m.rss_mib, r.rss_mib, "lower", "MiB"
                )
                row(
                    f"floor: {ds} {op} memory, shared pages once, <= restic's",
                    m.unique_mib,
                    r.unique_mib,
                    "lower",
                    "MiB",
                )
    if one is not None and two is not None:
        for ds, op in (("linux", "backup"), ("linux", "restore tmpfs")):
            a, b = _seconds(one, ds, "cas", op), _seconds(two, ds, "cas", op)
            if a and b:
                row(f"floor: {ds} {op} speedup from the second core", a / b, 1.6, "higher", "x")
                row(f"goal: {ds} {op} speedup from the second core", a / b, 1.8, "higher", "x")
    if not rows:
        return []
    return ["| target | cas | limit | |", "|---|---:|---:|---|", *rows]


if __name__ == "__main__":
    main()
