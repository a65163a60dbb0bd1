"""The archiver's change detection against the parent snapshot, in-process.

A file is taken over from the parent unopened only when its size, mtime, ctime
and inode are the parent's and the parent's blobs are all still stored; with
only size and mtime the same it is hashed (not chunked) and compared with the
parent's digest.  Each test here was written against a mutant of
cas/backup/archiver.py that the rest of the suite let pass (docs/reliability.md
§8.3).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cas.backend.memory import MemoryBackend
from cas.backup.archiver import (
    CACHEDIR_SIGNATURE,
    Archiver,
    BackupOptions,
    Reporter,
    open_source,
)
from cas.backup.pool import SAVED, BatchDone
from cas.chunking.chunker import Guess
from cas.crypto import BlobType
from cas.format.tree import Node, decode_tree, encode_node, encode_tree
from cas.fs import dirfd
from cas.repo import Repository
from tests.support.cli import run_cas
from tests.support.repos import new_repo
from tests.support.trees import NUMERIC_GID, NUMERIC_UID
from tests.test_archiver import IS_ROOT, b, backup, below, content, landed, make_files, walk
from tests.test_backup_restore import run_unprivileged

DATA = random.Random(20).randbytes(5000)


class CountingChunker:
    """The repository's chunker, counting the files (streams) it chunks."""

    def __init__(self, repo: Repository) -> None:
        self.inner = repo.chunker()
        self.files = 0

    def iter_chunks(
        self, read: Callable[[int], bytes], guess: Guess | None = None
    ) -> Iterator[bytes]:
        self.files += 1
        return self.inner.iter_chunks(read, guess)


@pytest.fixture
def repo() -> Repository:
    store = MemoryBackend()
    store.create()
    return new_repo(store)


def _rewrite(repo: Repository, tree: bytes, change: Callable[[Node], None]) -> bytes:
    """A copy of snapshot tree ``tree`` with ``change`` applied to every file node."""
    nodes = decode_tree(repo.load_blob(BlobType.TREE, tree))
    for node in nodes:
        if node.type == "dir" and node.subtree:
            node.subtree = _rewrite(repo, node.subtree, change)
        elif node.type == "file":
            change(node)
    tree_id, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    repo.flush()
    return tree_id


def test_new_ctime_with_size_and_mtime_kept_is_hashed_not_chunked(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": DATA, "d/b": b"b" * 300})
    first = backup(repo, src)
    os.chmod(src / "a", 0o600)  # the ctime moves; size, mtime and content do not
    os.chmod(src / "a", 0o644)
    chunker = CountingChunker(repo)
    second = backup(repo, src, parent=first.tree, chunker=chunker)
    s = second.summary
    assert chunker.files == 0  # hashed and found the parent's: not chunked
    assert (s.files_changed, s.files_unchanged, s.bytes_read, s.data_blobs_new) == (1, 1, 5000, 0)
    old, new = walk(repo, first.tree)[b(src / "a")], walk(repo, second.tree)[b(src / "a")]
    assert (new.content, new.sizes, new.digest, new.size) == (
        old.content,
        old.sizes,
        old.digest,
        old.size,
    )
    assert new.ctime_ns == (src / "a").stat().st_ctime_ns != old.ctime_ns


def test_other_content_with_size_and_mtime_put_back_is_stored(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": DATA})
    first = backup(repo, src)
    before = (src / "a").stat()
    other = bytes(x ^ 1 for x in DATA)
    (src / "a").write_bytes(other)
    os.utime(src / "a", ns=(before.st_atime_ns, before.st_mtime_ns))  # only the ctime tells
    chunker = CountingChunker(repo)
    second = backup(repo, src, parent=first.tree, chunker=chunker)
    assert chunker.files == 1
    node = walk(repo, second.tree)[b(src / "a")]
    assert (
        content(repo, node) == other and node.digest != walk(repo, first.tree)[b(src / "a")].digest
    )
    assert second.summary.files_changed == 1 and second.summary.data_blobs_new >= 1
    assert second.summary.bytes_read == 2 * len(DATA)  # hashed once, then chunked


@pytest.mark.parametrize("lost", ["a blob", "the digest"])
def test_parent_whose_content_is_not_stored_is_not_taken_over(
    repo: Repository, tmp_path: Path, lost: str
) -> None:
    """An unchanged file whose parent node lists a blob no longer stored (pruned or
    lost), or has no digest, is read again, both when its ctime is the parent's and
    when only size and mtime are."""
    src = tmp_path / "src"
    make_files(src, {"a": DATA})
    first = backup(repo, src)

    def damage(node: Node) -> None:
        if lost == "a blob":
            node.content = [b"\x02" * 32, *node.content[1:]]
        else:
            node.digest = None

    parent = _rewrite(repo, first.tree, damage)
    again = backup(repo, src, parent=parent)
    node = walk(repo, again.tree)[b(src / "a")]
    assert content(repo, node) == DATA and again.summary.bytes_read == len(DATA)
    assert again.summary.files_unchanged == 0 and again.summary.files_changed == 1

    os.chmod(src / "a", 0o600)  # only size and mtime as in the parent now
    chunker = CountingChunker(repo)
    hashed = backup(repo, src, parent=parent, chunker=chunker)
    assert chunker.files == 1 and content(repo, walk(repo, hashed.tree)[b(src / "a")]) == DATA


def test_directories_counted_unchanged_changed_and_new(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"d/x": b"x", "e/y": b"y"})
    first = backup(repo, src)
    dirs = first.summary.dirs_new
    same = backup(repo, src, parent=first.tree).summary
    assert (same.dirs_new, same.dirs_changed, same.dirs_unchanged) == (0, 0, dirs)
    (src / "d/z").write_bytes(b"z")
    (src / "f").mkdir()
    moved = backup(repo, src, parent=first.tree).summary
    # d and every directory above it changed; e is as it was; f is new.
    assert (moved.dirs_new, moved.dirs_changed, moved.dirs_unchanged) == (1, dirs - 1, 1)


def test_a_cache_tag_that_is_not_a_readable_file_excludes_nothing(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_files(src, {"dir/CACHEDIR.TAG/f": CACHEDIR_SIGNATURE, "fifo/blob": b"b"})
    os.mkfifo(src / "fifo/CACHEDIR.TAG")  # opening it must not wait for a writer
    done = backup(repo, src, exclude_caches=True)
    assert below(repo, done.tree, src) >= {"dir/CACHEDIR.TAG/f", "fifo/blob", "fifo/CACHEDIR.TAG"}


class Entries(Reporter):
    """Records every decided entry: (path, action, kind, size, added)."""

    def __init__(self) -> None:
        self.entries: list[tuple[bytes, str, str, int, int]] = []

    def entry(self, path: bytes, action: str, kind: str, size: int, added: int) -> None:
        self.entries.append((path, action, kind, size, added))


def test_a_new_file_counts_as_moved_only_when_its_content_was_stored(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": DATA})
    report = Entries()
    first = Archiver(repo, repo.chunker(), BackupOptions(), report)
    tree = first.backup([b(src)], None)
    repo.flush()
    assert first.changes.moved == 0
    assert (b(src / "a"), "new", "file", 5000, 5000) in report.entries
    make_files(src, {"copy": DATA, "empty": b"", "fresh": b"f" * 100})
    report = Entries()
    second = Archiver(repo, repo.chunker(), BackupOptions(), report)
    second.backup([b(src)], tree)
    assert second.changes.moved == 1  # the copy; not the empty file, not the fresh one
    assert (b(src / "copy"), "new", "file", 5000, 0) in report.entries
    assert (b(src / "fresh"), "new", "file", 100, 100) in report.entries


def test_one_file_system_keeps_a_directory_right_below_the_root(repo: Repository) -> None:
    """A path one level below / is on the root's side of the walk: --one-file-system
    must not take it for a mount point."""
    top = Path(f"/cas-test-{os.getpid()}-{random.randrange(1 << 30)}")
    try:
        top.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a directory in /: {e.strerror}")
    try:
        make_files(top, {"f": b"f"})
        done = backup(repo, top, one_file_system=True)
        assert below(repo, done.tree, top) == {"f"}
    finally:
        (top / "f").unlink()
        top.rmdir()


def test_a_directory_above_the_path_that_cannot_be_listed_is_walked_through(
    tmp_path: Path,
) -> None:
    """``backup top/inner`` where ``top`` may be searched but not read: a warning about
    ``top``'s flags and xattr values, and ``inner`` is backed up (cas obeying
    permissions, as a user)."""
    inner = tmp_path / "top" / "inner"
    make_files(inner, {"f": b"inside"})
    try:  # listed through the directory's path, since it cannot be opened
        os.setxattr(tmp_path / "top", "user.cas-test", b"kept")
        xattrs = True
    except OSError:
        xattrs = False
    (tmp_path / "top").chmod(0o311)
    if IS_ROOT:
        os.chown(tmp_path / "top", NUMERIC_UID, NUMERIC_GID)
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    done = run_unprivileged("-r", repo, "--json", "backup", inner)
    assert done.code == 3, done.err
    assert f"could not read inode flags of {tmp_path / 'top'}" in done.err
    # Its xattrs are listed by path (their values need read permission).
    if xattrs:
        assert f"could not read extended attribute user.cas-test of {tmp_path / 'top'}" in done.err
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out).code == 0
    assert (landed(out, inner) / "f").read_bytes() == b"inside"


def test_a_source_file_is_opened_without_following_blocking_or_passing_on(
    tmp_path: Path,
) -> None:
    """``open_source`` opens with O_NOFOLLOW, O_NONBLOCK and O_CLOEXEC: a symlink put in
    the file's place is refused, a FIFO put there is refused at once (not waited on for
    a writer), and the descriptor is not inherited by child processes."""
    make_files(tmp_path, {"f": b"data"})
    os.symlink("f", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    opener = dirfd.Opener()
    d = opener.open_dir(b(tmp_path))
    try:
        fd = open_source(opener, b"f", d, os.stat(tmp_path / "f"))
        try:
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        finally:
            os.close(fd)
        with pytest.raises(OSError) as e:
            open_source(opener, b"link", d, os.stat(tmp_path / "f"))
        assert e.value.errno == errno.ELOOP
        with pytest.raises(OSError) as e:  # after the flags: without O_NONBLOCK it would hang
            open_source(opener, b"fifo", d, os.stat(tmp_path / "fifo"))
        assert e.value.errno == errno.ESTALE
    finally:
        opener.close_dir(d)


class NoWorkers:
    """Worker processes that cannot start (``SaverPool.start`` false): every file is read
    in this process; records how many files were stored before the archiver asked."""

    started = 0

    def __init__(self) -> None:
        self.archiver: Archiver | None = None
        self.asked_after: int | None = None

    def start(self) -> bool:
        assert self.archiver is not None and self.asked_after is None
        self.asked_after = self.archiver.summary.files_new
        return False


@pytest.mark.parametrize(
    ("after", "asked"),
    [((3, 1 << 20), 3), ((100, 10_000), 2), ((0, 0), 0)],
    ids=["after-3-files", "after-10-kb", "at-once"],
)
def test_workers_are_started_once_the_files_seen_pass_pool_after(
    repo: Repository, tmp_path: Path, after: tuple[int, int], asked: int
) -> None:
    """``pool_after`` (files, bytes): the workers are asked to start by the first file
    beyond either bound, not before it and not after (files of 4,000 bytes here)."""
    src = tmp_path / "src"
    make_files(src, {f"f{i}": bytes([i]) * 4000 for i in range(6)})
    pool: Any = NoWorkers()
    archiver = Archiver(
        repo,
        repo.chunker(),
        BackupOptions(),
        Reporter(),
        pool=pool,
        pool_after=after,
    )
    pool.archiver = archiver
    archiver.backup([b(src)], None)
    assert pool.asked_after == asked
    assert archiver.summary.files_new == 6 and archiver.workers_used == 0


class BusyWorkers:
    """One worker that always has its share of batches out (``full``), has used
    ``cpu`` seconds and finishes a batch only when the walk waits for one; records the
    names it was given."""

    started = 1
    count = 1
    per_worker = 1

    def __init__(self, cpu: float) -> None:
        self.cpu = cpu
        self.names: list[bytes] = []
        self._out: list[tuple[int, int, list[bytes] | None]] = []  # (job, files, by name)

    def start(self) -> bool:
        return True

    def full(self) -> bool:
        return True

    def worker_cpu(self) -> float:
        return self.cpu

    def submit(self, dir_fd: int, shown: bytes, files: list[list[Any]], size: int) -> int:
        self.names += [f[0] for f in files]
        self._out.append((len(self.names), len(files), None))
        return len(self.names)

    def submit_names(
        self, dir_fd: int, shown: bytes, names: list[bytes], larger_than: int | None
    ) -> int:
        self.names += names
        self._out.append((len(self.names), len(names), names))
        return len(self.names)

    def has_news(self) -> bool:
        return False  # only a walk that waits gets a batch back

    def next_event(self) -> BatchDone:
        job, n, names = self._out.pop(0)
        # An empty file's result (worker.FileResult.to_wire, or for files sent by name
        # worker.py name_result): what is tested is where each file went, not its content.
        if names is not None:
            return BatchDone(
                job,
                [[SAVED, encode_node(Node(name, "file")), 0, 0, 0, 0, []] for name in names],
            )
        return BatchDone(job, [["ok", [], 0, [], [], bytes(32), 0, [], False, 0, 0]] * n)

    def flush(self) -> None:
        assert not self._out


def test_a_main_process_busier_than_its_workers_reads_no_file_itself(
    repo: Repository, tmp_path: Path
) -> None:
    """Small files while every worker has its share of batches, the workers having used
    less CPU than this process (as on a million tiny files, where the main process is
    the limit): they wait for a worker, none is read here."""
    src = tmp_path / "src"
    make_files(src, {f"d{i}/f{j:03d}": bytes([j]) * 100 for i in range(3) for j in range(150)})
    pool: Any = BusyWorkers(cpu=0.0)
    archiver = Archiver(repo, repo.chunker(), BackupOptions(), Reporter(), pool=pool)
    archiver.backup([b(src)], None)
    assert sorted(pool.names) == sorted(f"f{j:03d}".encode() for j in range(150) for _ in range(3))
    assert archiver.summary.bytes_read == 0 and archiver.summary.files_new == 450


def test_a_main_process_less_busy_than_its_workers_reads_small_files_while_they_are_full(
    repo: Repository, tmp_path: Path
) -> None:
    """The same with workers that used more CPU than this process: it reads small files
    itself while they are full, and every file is saved once, here or there."""
    src = tmp_path / "src"
    make_files(src, {f"d{i}/f{j:03d}": bytes([j]) * 100 for i in range(3) for j in range(150)})
    pool: Any = BusyWorkers(cpu=1e9)
    archiver = Archiver(repo, repo.chunker(), BackupOptions(), Reporter(), pool=pool)
    archiver.backup([b(src)], None)
    read_here = archiver.summary.bytes_read // 100
    assert 0 < read_here < 450
    assert len(pool.names) + read_here == 450 and archiver.summary.files_new == 450
