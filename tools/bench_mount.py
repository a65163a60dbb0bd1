#!/usr/bin/env python3
"""``cas mount`` beside ``restic mount``: sequential read throughput and a metadata walk.

    python tools/bench_mount.py [--size-mib 1024] [--files 20000] [--dir /var/tmp]
                                [--tools cas,restic] [--keep]

Builds one source tree: a file of --size-mib random bytes and a tree of
--files small files in directories of 100.  Each tool backs it up into a
fresh repository and mounts it; then, with the page cache dropped first
(when run as root) so that the repository is read from disk:

- ``read``: the big file read through the mount in 1 MiB reads, MB/s
  (decimal megabytes, like dd);
- ``walk``: ``find TREE -ls`` (an lstat of every entry), cold, seconds;
- ``walk again``: the same once more, with whatever the mount caches.

Needs /dev/fuse and libfuse 3; restic is skipped when it is not installed.
Target for cas on the 2-core development machine: read >= 150 MB/s.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PASSWORD = "bench-password"
ROOT = Path(__file__).resolve().parent.parent
WAIT = 120.0


@dataclass
class Result:
    tool: str
    read_mb_s: float = 0.0
    walk_s: float = 0.0
    walk_again_s: float = 0.0
    entries: int = 0
    notes: list[str] = field(default_factory=list)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def drop_caches() -> bool:
    """Empty the page cache so the repository is read from disk (root only)."""
    if os.geteuid() != 0:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def make_source(src: Path, size_mib: int, files: int) -> None:
    src.mkdir(parents=True)
    with open(src / "big.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    rnd = random.Random(1)
    tree = src / "tree"
    for i in range(files):
        d = tree / f"d{i // 100:05d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}").write_bytes(rnd.randbytes(rnd.randrange(0, 4096)))


def run(cmd: list[str], env: dict[str, str]) -> None:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")


def read_throughput(path: Path) -> float:
    size = 0
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while block := os.read(fd, 1 << 20):
            size += len(block)
    finally:
        os.close(fd)
    return size / (time.perf_counter() - start) / 1e6


def walk(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    r = subprocess.run(["find", str(path), "-ls"], capture_output=True, check=True)
    return time.perf_counter() - start, r.stdout.count(b"\n")


class Tool:
    name = ""

    def __init__(self, work: Path) -> None:
        self.repo = work / f"repo-{self.name}"
        self.mnt = work / f"mnt-{self.name}"
        self.mnt.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def backup(self, src: Path) -> None:
        raise NotImplementedError

    def mount_cmd(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return is_mounted(self.mnt)

    def mount(self) -> None:
        self.proc = subprocess.Popen(
            self.mount_cmd(), env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + WAIT
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                self.unmount()
                raise SystemExit(f"{self.name} mount did not come up: {err.decode()[-2000:]}")
            time.sleep(0.1)

    def unmount(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False)

    def snapshot_path(self, src: Path) -> Path:
        return self.mnt / "snapshots" / "latest" / str(src).lstrip("/")


class Cas(Tool):
    name = "cas"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
        env.update(CAS_REPOSITORY=str(self.repo), CAS_PASSWORD=PASSWORD)
        env.update(CAS_TEST_WEAK_KDF="1", CAS_KDF_OPSLIMIT="1", CAS_KDF_MEMLIMIT=str(8 << 20))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def backup(self, src: Path) -> None:
        run([sys.executable, "-m", "cas", "init"], self.env())
        run([sys.executable, "-m", "cas", "backup", str(src)], self.env())

    def mount_cmd(self) -> list[str]:
        return [sys.executable, "-m", "cas", "mount", str(self.mnt)]


class Restic(Tool):
    name = "restic"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RESTIC_REPOSITORY=str(self.repo), RESTIC_PASSWORD=PASSWORD)
        return env

    def backup(self, src: Path) -> None:
        run(["restic", "init"], self.env())
        run(["restic", "backup", "--quiet", str(src)], self.env())

    def mount_cmd(self) -> list[str]:
        return ["restic", "mount", str(self.mnt)]

    def ready(self) -> bool:
        return is_mounted(self.mnt) and os.path.lexists(self.mnt / "snapshots" / "latest")


def bench(tool: Tool, src: Path) -> Result:
    res = Result(tool.name)
    tool.backup(src)
    tool.mount()
    try:
        shown = tool.snapshot_path(src)
        if not drop_caches():
            res.notes.append("page cache not dropped (not root): repository may be cached")
        os.stat(shown / "big.bin")
        res.read_mb_s = read_throughput(shown / "big.bin")
        drop_caches()
        res.walk_s, res.entries = walk(shown / "tree")
        res.walk_again_s, _ = walk(shown / "tree")
    finally:
        tool.unmount()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big file")
    ap.add_argument("--files", type=int, default=20000, help="small files in the tree")
    ap.add_argument("--dir", default=None, help="where to put the source and repositories")
    ap.add_argument("--tools", default="cas,restic")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    tools = [t for t in args.tools.split(",") if t]
    if "restic" in tools and not shutil.which("restic"):
        print("restic is not installed: skipped", file=sys.stderr)
        tools.remove("restic")
    work = Path(tempfile.mkdtemp(prefix="cas-bench-mount-", dir=args.dir))
    results: list[Result] = []
    try:
        src = work / "src"
        print(f"building {args.size_mib} MiB file and {args.files} small files in {src}")
        make_source(src, args.size_mib, args.files)
        for name in tools:
            tool: Tool = Cas(work) if name == "cas" else Restic(work)
            print(f"{name}: backup, mount, measure ...", flush=True)
            results.append(bench(tool, src))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    restic_version = ""
    if shutil.which("restic"):
        restic_version = subprocess.run(
            ["restic", "version"], capture_output=True, text=True, check=False
        ).stdout.split(" compiled")[0]
    print()
    print(f"{os.cpu_count()} cores; big file {args.size_mib} MiB; tree of {args.files} files")
    if restic_version:
        print(f"restic: {restic_version}")
    print()
    print("| tool | sequential read | find -ls, cold | find -ls, again | entries |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.tool} | {r.read_mb_s:.0f} MB/s | {r.walk_s:.2f} s | "
            f"{r.walk_again_s:.2f} s | {r.entries} |"
        )
    for r in results:
        for note in r.notes:
            print(f"note ({r.tool}): {note}")


if __name__ == "__main__":
    main()
