#!/usr/bin/env python3
"""Backup, re-backup and restore benchmarks: cas beside restic and borg, in one run.

    python tools/bench.py [--data /tmp/cas-bench] [--sets linux,big] [--tools cas,restic,borg]
                          [--repeat 3] [--out docs/benchmarks.md]

The datasets come from ../shared/bench/datasets.sh.  Each tool gets a fresh
repository per dataset; every operation is timed as a child process whose
peak RSS comes from wait4().  Times are medians over --repeat runs (each run
on a fresh repository).  Prints a Markdown table and, with --out, writes it
with the machine description and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-password"
HERE = Path(__file__).resolve().parent


@dataclass
class Measure:
    """One timed child process."""

    seconds: float
    rss_mib: float


def run(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> Measure:
    """Run ``cmd``; fail loudly on a non-zero exit (a benchmark of a failure means nothing)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} exited {code}: {err.decode(errors='replace')[-2000:]}")
    return Measure(elapsed, usage.ru_maxrss / 1024)


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
        return run(
            ["borg", "create", "--compression", "zstd,3", f"::a{self.n}", str(path)], self.env
        )

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


def bench_one(tool_cls: type[Tool], data: Path, work: Path, repeat: int) -> dict[str, object]:
    """Medians of backup, unchanged re-backup and restore for one tool and dataset."""
    results: dict[str, list[Measure]] = {
        "backup": [],
        "rebackup": [],
        "restore": [],
        "check --read-data": [],
    }
    size = 0
    for i in range(repeat):
        repo = work / f"{tool_cls.name}-repo"
        target = work / f"{tool_cls.name}-restore"
        for p in (repo, target, Path(str(repo) + ".cache"), Path(str(repo) + ".base")):
            shutil.rmtree(p, ignore_errors=True)
        tool = tool_cls(repo)
        tool.init()
        results["backup"].append(tool.backup(data))
        results["rebackup"].append(tool.backup(data))
        size = du(repo)
        results["restore"].append(tool.restore(target))
        shutil.rmtree(target, ignore_errors=True)
        results["check --read-data"].append(tool.check_data())
        print(
            f"  {tool_cls.name} run {i + 1}: "
            + ", ".join(f"{k} {v[-1].seconds:.1f}s" for k, v in results.items()),
            file=sys.stderr,
        )
    out: dict[str, object] = {"repo_bytes": size}
    for k, ms in results.items():
        out[k] = Measure(statistics.median(m.seconds for m in ms), max(m.rss_mib for m in ms))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/cas-bench"))
    ap.add_argument("--sets", default="linux,big")
    ap.add_argument("--tools", default="cas,restic,borg")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cas-bench-work"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tools = [TOOLS[t] for t in args.tools.split(",")]
    rows = []
    versions = {}
    for name in args.sets.split(","):
        data = args.data / name
        if not data.is_dir():
            raise SystemExit(f"{data} missing: run ../shared/bench/datasets.sh {args.data} {name}")
        nbytes = warm(data)
        nfiles = sum(len(f) for _, _, f in os.walk(data))
        for t in tools:
            print(f"{name}: {t.name}", file=sys.stderr)
            versions[t.name] = t(args.work / "v").version()
            r = bench_one(t, data, args.work, args.repeat)
            for op in ("backup", "rebackup", "restore", "check --read-data"):
                m = r[op]
                assert isinstance(m, Measure)
                rows.append(
                    (
                        name,
                        t.name,
                        op,
                        m.seconds,
                        nbytes / m.seconds / 1e6,
                        nfiles / m.seconds,
                        m.rss_mib,
                        r["repo_bytes"],
                    )
                )
    lines = [
        f"Benchmarks run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"Python {platform.python_version()}; median of {args.repeat} run(s), warm page cache.",
        "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()),
        "",
        "| dataset | tool | operation | time (s) | MB/s | files/s | peak RSS (MiB) | repo (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for ds, tool, op, secs, mbs, fps, rss, repo in rows:
        assert isinstance(repo, int)
        lines.append(
            f"| {ds} | {tool} | {op} | {secs:.1f} | {mbs:.0f} | {fps:.0f} | "
            f"{rss:.0f} | {repo / 2**20:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Benchmarks\n\nGenerated by `tools/bench.py`.\n\n" + text)


if __name__ == "__main__":
    main()
