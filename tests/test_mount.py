"""``cas mount`` for real: a FUSE mount served by ``python -m cas mount`` in a subprocess.

Skipped only where /dev/fuse cannot be opened (no FUSE in the kernel or no
access to it, as in many containers).  Everything else (libfuse 3, the
fuse3 tools) must be installed: a missing piece fails rather than skips.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import TEST_ENV, run_cas


def _fuse_unusable() -> str | None:
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as e:
        return f"/dev/fuse cannot be opened here ({e.strerror}): no FUSE mounts possible"
    os.close(fd)
    return None


_WHY_NOT = _fuse_unusable()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=_WHY_NOT or "")

PASSWORD = "test-password"
WAIT = 60.0  # upper bound for a mount to come up or go away; never a timed assertion


def cas_env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(TEST_ENV, CAS_PASSWORD=PASSWORD, CAS_REPOSITORY=str(repo))
    return env


def force_unmount(mnt: Path) -> None:
    """Last-resort cleanup of a mount a failed test left behind."""
    for cmd in (["fusermount3", "-u", "-z", str(mnt)], ["umount", "-l", str(mnt)]):
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True, check=False)
        if not _is_mount(mnt):
            return


def _is_mount(mnt: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)


class Mount:
    """A running ``cas mount`` process and its mount point."""

    def __init__(self, repo: Path, mnt: Path, *args: str) -> None:
        self.mnt = mnt
        self.out = mnt.parent / f"{mnt.name}.out"
        self.err = mnt.parent / f"{mnt.name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cas", "mount", str(mnt), *args],
                env=cas_env(repo),
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + WAIT
        while not _is_mount(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"cas mount did not come up: {self.err.read_text()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait for it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=WAIT)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if _is_mount(self.mnt):
            force_unmount(self.mnt)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Mount]]:
    started: list[Mount] = []
    yield started
    for m in started:
        m.close()


def mount(mounts: list[Mount], repo: Path, mnt: Path, *args: str) -> Mount:
    mnt.mkdir(exist_ok=True)
    m = Mount(repo, mnt, *args)
    mounts.append(m)
    return m


def backed_up(tmp_path: Path, src: Path) -> Path:
    repo = tmp_path / "repo"
    if not (repo / "config").exists():
        r = run_cas("-r", repo, "init", password=PASSWORD)
        assert r.code == 0, r.err
    r = run_cas("-r", repo, "backup", src, password=PASSWORD)
    assert r.code == 0, r.err
    return repo


def small_tree(root: Path) -> Path:
    root.mkdir()
    (root / "hello.txt").write_bytes(b"hello\n")
    (root / "sub").mkdir()
    (root / "sub" / "data.bin").write_bytes(os.urandom(3 << 20))
    os.symlink("hello.txt", root / "link")
    return root


def _holes(path: Path) -> list[tuple[int, int]]:
    """(data start, hole start) pairs of a file, found with lseek as cp and rsync do."""
    fd = os.open(path, os.O_RDONLY)
    try:
        out, pos = [], 0
        size = os.fstat(fd).st_size
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                break
            pos = os.lseek(fd, data, os.SEEK_HOLE)
            out.append((data, pos))
        return out
    finally:
        os.close(fd)


def in_snapshot(mnt: Path, src: Path, snapshot: str = "latest") -> Path:
    return mnt / "snapshots" / snapshot / str(src.resolve()).lstrip("/")


def test_full_metadata_tree_copies_out_identical(tmp_path: Path, mounts: list[Mount]) -> None:
    from tests.support.trees import build_full_tree, compare_trees, unlock_tree

    src = tmp_path / "src"
    try:
        build_full_tree(src)
    except OSError as e:
        unlock_tree(src)
        pytest.skip(f"the full-metadata tree cannot be built here: {e}")
    try:
        repo = backed_up(tmp_path, src)
        m = mount(mounts, repo, tmp_path / "mnt")
        shown = in_snapshot(m.mnt, src)

        # The mount itself.  st_blocks is compared for the sparse files below: the
        # blocks a filesystem spends on a long symlink target or on xattrs that do
        # not fit the inode are its own, which the mount cannot know.
        assert [d for d in compare_trees(src, shown) if ": blocks " not in d] == []
        # The sparse files: the holes restore would leave (zero blobs, and zero
        # blocks inside blobs that compressed to almost nothing).
        for name in ("holes", "leading-data", "all-hole", "data-at-end"):
            a, b = src / "sparse" / name, shown / "sparse" / name
            assert os.lstat(b).st_blocks == os.lstat(a).st_blocks < os.lstat(a).st_size // 512
            assert _holes(b) == _holes(a), name  # lseek(SEEK_DATA/SEEK_HOLE)
            # cp's default (--sparse=auto) finds the holes through st_blocks and lseek.
            auto = tmp_path / f"auto-{name}"
            subprocess.run(["cp", str(b), str(auto)], check=True)
            assert os.lstat(auto).st_blocks == os.lstat(a).st_blocks
            assert _holes(auto) == _holes(a)

        # A copy made by cp from the mount: type, mode, owner, size, content,
        # times, link targets, device numbers, xattrs (ACLs), hardlinks, holes.
        # cp does not copy inode flags (chattr); the mount shows them (above).
        copy = tmp_path / "copy"
        r = subprocess.run(
            ["cp", "-a", "--sparse=always", str(shown), str(copy)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        copied = [d for d in compare_trees(src, copy) if ": flags " not in d]
        assert copied == []
    finally:
        unlock_tree(src)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_unmounts_cleanly(tmp_path: Path, mounts: list[Mount], sig: int) -> None:
    src = small_tree(tmp_path / "src")
    repo = backed_up(tmp_path, src)
    m = mount(mounts, repo, tmp_path / "mnt")
    assert (in_snapshot(m.mnt, src) / "hello.txt").read_bytes() == b"hello\n"
    assert list((repo / "locks").iterdir())  # a shared lock while mounted
    assert m.stop(sig) == 0, m.stderr()
    assert not _is_mount(m.mnt)
    assert os.listdir(m.mnt) == []
    assert list((repo / "locks").iterdir()) == []
    assert "mounted at" in m.stdout() and "unmounted" in m.stdout()


def test_content_and_layout(tmp_path: Path, mounts: list[Mount]) -> None:
    src = small_tree(tmp_path / "src")
    repo = backed_up(tmp_path, src)
    m = mount(mounts, repo, tmp_path / "mnt", "--allow-other")
    assert sorted(os.listdir(m.mnt)) == ["hosts", "ids", "snapshots", "tags"]
    names = os.listdir(m.mnt / "snapshots")
    assert "latest" in names and len(names) == 2
    latest = os.readlink(m.mnt / "snapshots" / "latest")
    assert latest in names and latest[4] == "-" and latest[10] == "T"
    shown = in_snapshot(m.mnt, src)
    data = (src / "sub" / "data.bin").read_bytes()
    h = hashlib.sha256()
    with open(shown / "sub" / "data.bin", "rb") as f:
        while block := f.read(1 << 16):
            h.update(block)
    assert h.digest() == hashlib.sha256(data).digest()
    assert os.readlink(shown / "link") == "hello.txt"
    (snap_id,) = os.listdir(m.mnt / "ids")
    assert os.stat(m.mnt / "ids" / snap_id).st_ino == os.stat(m.mnt / "snapshots" / latest).st_ino
    with open("/proc/self/mountinfo") as f:
        line = next(x for x in f if x.split()[4] == str(m.mnt))
    assert "allow_other" in line and " ro" in line and "default_permissions" in line


def test_host_tag_and_path_narrow_the_view_and_its_latest(
    tmp_path: Path, mounts: list[Mount]
) -> None:
    """Issue 15, item 3: ``mount --host/--tag/--path`` shows those snapshots only, so
    ``snapshots/latest`` is the latest of them."""
    one, two = tmp_path / "one", tmp_path / "two"
    for src in (one, two):
        src.mkdir()
        (src / "f").write_text(src.name)
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init", password=PASSWORD).code == 0
    for src, host in ((one, "alpha"), (two, "beta")):
        r = run_cas("-r", repo, "backup", src, "--host", host, "--tag", "t", password=PASSWORD)
        assert r.code == 0, r.err
    for i, (args, shown, count) in enumerate(
        (
            (["--host", "alpha"], one, 1),
            (["--path", str(two)], two, 1),
            (["--tag", "t", "--host", "alpha"], one, 1),
            (["--tag", "t"], two, 2),
        )
    ):
        m = mount(mounts, repo, tmp_path / f"mnt{i}", *args)
        assert len(os.listdir(m.mnt / "snapshots")) == count + 1  # and latest
        latest = m.mnt / "snapshots" / "latest" / str(shown).lstrip("/") / "f"
        assert latest.read_text() == shown.name
        assert m.stop() == 0


def test_writes_fail_with_erofs(tmp_path: Path, mounts: list[Mount]) -> None:
    src = small_tree(tmp_path / "src")
    repo = backed_up(tmp_path, src)
    m = mount(mounts, repo, tmp_path / "mnt")
    shown = in_snapshot(m.mnt, src)
    attempts = [
        lambda: os.open(shown / "hello.txt", os.O_RDWR),
        lambda: os.open(shown / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        lambda: os.mkdir(shown / "newdir"),
        lambda: os.unlink(shown / "hello.txt"),
        lambda: os.rename(shown / "hello.txt", shown / "moved"),
        lambda: os.chmod(shown / "hello.txt", 0o600),
        lambda: os.utime(shown / "hello.txt", (0, 0)),
        lambda: os.setxattr(shown / "hello.txt", "user.x", b"1"),
        lambda: os.symlink("x", shown / "newlink"),
        lambda: os.mkdir(m.mnt / "snapshots" / "mine"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS


def test_a_new_backup_appears_without_remounting(tmp_path: Path, mounts: list[Mount]) -> None:
    src = small_tree(tmp_path / "src")
    repo = backed_up(tmp_path, src)
    m = mount(mounts, repo, tmp_path / "mnt")
    assert len(os.listdir(m.mnt / "snapshots")) == 2
    (src / "added.txt").write_bytes(b"later\n")
    time.sleep(1.1)  # a different second: a name of its own without a suffix
    backed_up(tmp_path, src)
    deadline = time.monotonic() + WAIT
    while len(os.listdir(m.mnt / "snapshots")) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(os.listdir(m.mnt / "snapshots")) == 3
    latest = os.readlink(m.mnt / "snapshots" / "latest")
    newest = m.mnt / "snapshots" / latest / str(src.resolve()).lstrip("/") / "added.txt"
    assert newest.read_bytes() == b"later\n"
    assert len(os.listdir(m.mnt / "ids")) == 2


def test_a_stale_mount_is_reported_with_the_command_to_clear_it(
    tmp_path: Path, mounts: list[Mount]
) -> None:
    src = small_tree(tmp_path / "src")
    repo = backed_up(tmp_path, src)
    m = mount(mounts, repo, tmp_path / "mnt")
    m.stop(signal.SIGKILL)  # a crash: the kernel mount stays, with nobody serving it
    with pytest.raises(OSError) as e:
        os.stat(m.mnt)
    assert e.value.errno == errno.ENOTCONN
    try:
        r = run_cas("-r", repo, "mount", m.mnt, password=PASSWORD)
        assert r.code == 1
        assert "stale" in r.err
        assert f"fusermount3 -u {m.mnt}" in r.err and f"umount -l {m.mnt}" in r.err
    finally:
        subprocess.run(["fusermount3", "-u", str(m.mnt)], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            os.stat(m.mnt)
    assert not _is_mount(m.mnt)
    m2 = mount(mounts, repo, m.mnt)  # cleared: mounts again
    assert (in_snapshot(m2.mnt, src) / "hello.txt").read_bytes() == b"hello\n"


def test_mount_point_errors(tmp_path: Path) -> None:
    src = small_tree(tmp_path / "src")
    repo = backed_up(tmp_path, src)
    r = run_cas("-r", repo, "mount", tmp_path / "missing", password=PASSWORD)
    assert r.code == 2 and "does not exist" in r.err
    r = run_cas("-r", repo, "mount", src / "hello.txt", password=PASSWORD)
    assert r.code == 2 and "not a directory" in r.err
