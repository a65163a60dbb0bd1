"""Backup and restore in-process against an in-memory repository.

Selection (excludes, markers, size, filesystems), parents, dry runs, files
changing while read, sparse reading and writing, and the restore options.
Root-only metadata is covered end to end in test_backup_restore.py.
"""

from __future__ import annotations

import contextlib
import io
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
    BackupSummary,
    Reporter,
    SourceReader,
    read_small,
    stdin_node,
)
from cas.backup.dryrun import DryRunWriter
from cas.chunking.chunker import Guess
from cas.crypto import BlobType
from cas.errors import CasError, IntegrityError
from cas.format.snapshot import Snapshot
from cas.format.tree import Node, decode_tree
from cas.fs.patterns import PatternSet
from cas.fs.posixmeta import FLAG_APPEND, FLAG_IMMUTABLE, get_flags, set_flags
from cas.protocols import BlobReader, Chunks, FileChunker
from cas.repo import Repository
from cas.restore.restorer import (
    SPARSE_BLOCK,
    RestoreOptions,
    Restorer,
    RestoreReporter,
    RestoreSummary,
    SparseWriter,
    find_subtree,
)
from tests.support.mounts import tmpfs
from tests.support.repos import new_repo
from tests.support.trees import unlock_tree

IS_ROOT = os.geteuid() == 0


def b(p: Path) -> bytes:
    return os.fsencode(p)


@pytest.fixture
def backend() -> MemoryBackend:
    store = MemoryBackend()
    store.create()
    return store


@pytest.fixture
def repo(backend: MemoryBackend) -> Repository:
    return new_repo(backend)


class Warnings(Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, message: str) -> None:
        self.messages.append(message)


class Backup:
    """The result of one in-process backup."""

    def __init__(self, tree: bytes, summary: BackupSummary, warnings: list[str]) -> None:
        self.tree, self.summary, self.warnings = tree, summary, warnings


def backup(
    repo: Repository,
    *paths: Path,
    parent: bytes | None = None,
    chunker: Chunks | None = None,
    offload: FileChunker | None = None,
    **options: Any,
) -> Backup:
    report = Warnings()
    archiver = Archiver(
        repo, chunker or repo.chunker(), BackupOptions(**options), report, offload=offload
    )
    tree = archiver.backup([b(p) for p in paths], parent)
    repo.flush()
    return Backup(tree, archiver.summary, report.messages)


def walk(repo: Repository, tree: bytes, prefix: bytes = b"") -> dict[bytes, Node]:
    """Every node of the snapshot tree by its absolute path."""
    out: dict[bytes, Node] = {}
    for node in decode_tree(repo.load_blob(BlobType.TREE, tree)):
        path = prefix + b"/" + node.name
        out[path] = node
        if node.type == "dir" and node.subtree:
            out.update(walk(repo, node.subtree, path))
    return out


def walk_source(repo: Repository, tree: bytes, root: Path) -> dict[bytes, Node]:
    """The nodes of ``root`` and below: not its ancestors (/tmp ...), which are only
    stat'ed and whose times other processes may move between two backups."""
    top = b(root)
    return {p: n for p, n in walk(repo, tree).items() if p == top or p.startswith(top + b"/")}


def below(repo: Repository, tree: bytes, root: Path) -> set[str]:
    """Paths under ``root`` in the snapshot, relative to it."""
    top = b(root) + b"/"
    return {os.fsdecode(p[len(top) :]) for p in walk(repo, tree) if p.startswith(top)}


def content(repo: Repository, node: Node) -> bytes:
    return b"".join(repo.load_blob(BlobType.DATA, c) for c in node.content)


class Actions(RestoreReporter):
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.actions: list[tuple[str, bytes]] = []

    def action(self, what: str, path: bytes) -> None:
        self.actions.append((what, path))

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def restore(
    repo: Repository,
    tree: bytes,
    target: Path,
    snap_path: bytes = b"",
    reader: BlobReader | None = None,
    **options: Any,
) -> tuple[RestoreSummary, Actions]:
    actions = Actions()
    restorer = Restorer(reader or repo, repo.file_digest, RestoreOptions(**options), actions)
    return restorer.restore(tree, b(target), snap_path), actions


def landed(target: Path, src: Path) -> Path:
    """Where a whole-snapshot restore puts ``src``."""
    return target / src.relative_to("/")


def make_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# -- selection ---------------------------------------------------------------


def test_excludes_by_pattern_and_case(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(
        src,
        {
            "a.c": b"c",
            "a.o": b"o",
            "build/x": b"x",
            "keep/build.txt": b"t",
            "keep/drop.txt": b"t",
            "Cache/x": b"x",
        },
    )
    done = backup(
        repo,
        src,
        excludes=PatternSet([b"*.o", b"build", b(src / "keep/drop.txt")]),
        iexcludes=PatternSet([b"cache"], ignore_case=True),
    )
    assert below(repo, done.tree, src) == {"a.c", "keep", "keep/build.txt"}
    assert done.warnings == []
    assert done.summary.files_new == 2 and done.summary.bytes_total == 2


def test_exclude_if_present_keeps_the_directory_empty(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"skip/.nobackup": b"", "skip/big": b"x" * 1000, "keep/f": b"f"})
    done = backup(repo, src, exclude_if_present=[b".nobackup"])
    assert below(repo, done.tree, src) == {"keep", "keep/f", "skip"}


@pytest.mark.parametrize(
    ("tag", "excluded"),
    [
        (CACHEDIR_SIGNATURE + b"\n# This file is a cache directory tag.\n", True),
        (b"Signature: not the right one\n", False),
        (b"", False),
    ],
    ids=["valid", "wrong-signature", "empty"],
)
def test_exclude_caches(repo: Repository, tmp_path: Path, tag: bytes, excluded: bool) -> None:
    src = tmp_path / "src"
    make_files(src, {"cache/CACHEDIR.TAG": tag, "cache/blob": b"b", "f": b"f"})
    done = backup(repo, src, exclude_caches=True)
    names = below(repo, done.tree, src)
    if excluded:
        assert names == {"cache", "f"}
    else:
        assert names == {"cache", "cache/CACHEDIR.TAG", "cache/blob", "f"}
    # Without the option the tag means nothing.
    assert below(repo, backup(repo, src).tree, src) >= {"cache/blob"}


def test_exclude_larger_than(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"small": b"s" * 100, "exact": b"e" * 1000, "big": b"b" * 1001})
    done = backup(repo, src, exclude_larger_than=1000)
    assert below(repo, done.tree, src) == {"small", "exact"}
    assert done.summary.bytes_total == 1100 and done.summary.bytes_read == 1100


@pytest.fixture
def mounted_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted at tmp_path/src/mnt (root only), unmounted afterwards."""
    with tmpfs(tmp_path / "src" / "mnt", "1m") as mnt:
        yield mnt


def test_one_file_system(repo: Repository, tmp_path: Path, mounted_tmpfs: Path) -> None:
    src = tmp_path / "src"
    (src / "here").write_bytes(b"on the same filesystem")
    (mounted_tmpfs / "there").write_bytes(b"on another filesystem")
    everything = backup(repo, src)
    assert below(repo, everything.tree, src) == {"here", "mnt", "mnt/there"}
    same_fs = backup(repo, src, one_file_system=True)
    assert below(repo, same_fs.tree, src) == {"here", "mnt"}  # the mount point, empty
    mnt = walk(repo, same_fs.tree)[b(mounted_tmpfs)]
    assert mnt.type == "dir" and mnt.subtree is not None
    assert decode_tree(repo.load_blob(BlobType.TREE, mnt.subtree)) == []
    # A path given explicitly is backed up even when it is a mount point.
    direct = backup(repo, mounted_tmpfs, one_file_system=True)
    assert below(repo, direct.tree, mounted_tmpfs) == {"there"}


def test_missing_and_odd_paths_warn(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"f": b"f"})
    (tmp_path / "afile").write_bytes(b"")
    # src/f is inside src, which is backed up whole anyway
    done = backup(repo, src, tmp_path / "gone", tmp_path / "afile" / "below", src / "f")
    assert below(repo, done.tree, tmp_path) == {"src", "src/f"}
    assert len(done.warnings) == 2
    assert any("gone" in w and "No such file" in w for w in done.warnings)
    assert any("afile" in w and "not a directory" in w for w in done.warnings)
    assert done.summary.warnings == 2


# -- files -------------------------------------------------------------------


def test_stdin(repo: Repository) -> None:
    data = random.Random(3).randbytes(300_000)
    archiver = Archiver(repo, repo.chunker())
    node = stdin_node(b"dump.sql", io.BytesIO(data).read, archiver)
    repo.flush()
    assert (node.name, node.type, node.size) == (b"dump.sql", "file", len(data))
    assert content(repo, node) == data
    assert archiver.summary.bytes_read == len(data) == archiver.summary.bytes_total
    assert archiver.summary.files_new == 1 and archiver.summary.data_blobs_new == len(node.content)


def test_dry_run_writes_nothing(repo: Repository, backend: MemoryBackend, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": random.Random(1).randbytes(200_000), "b/c": b"c"})
    before = sorted(o.name for o in backend.list(""))
    writer = DryRunWriter(repo)
    archiver = Archiver(writer, repo.chunker())
    tree = archiver.backup([b(src)], None)
    assert writer.save_snapshot(Snapshot(1, tree, [b(src)], "h", "u")) == b""
    repo.flush()
    assert sorted(o.name for o in backend.list("")) == before
    assert archiver.summary.data_added == 200_001 and archiver.summary.data_blobs_new >= 2
    assert writer.new_blobs and not any(repo.has_blob(x) for x in writer.new_blobs)


def test_parent_skips_unchanged_files_and_force_reads_all(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": b"a" * 5000, "d/b": b"b" * 7000, "d/c": b"c" * 9000})
    first = backup(repo, src)
    assert first.summary.bytes_read == 21000 and first.summary.files_new == 3
    second = backup(repo, src, parent=first.tree)
    s = second.summary
    assert (s.bytes_read, s.files_unchanged, s.files_new, s.files_changed) == (0, 3, 0, 0)
    assert s.data_blobs_new == 0 and s.bytes_total == 21000
    assert second.tree == first.tree  # nothing changed, so the very same trees

    os.utime(src / "d/b", ns=(1, 2))  # same size and content, other mtime
    third = backup(repo, src, parent=second.tree)
    assert (third.summary.bytes_read, third.summary.files_changed) == (7000, 1)
    assert third.summary.files_unchanged == 2 and third.summary.data_blobs_new == 0

    forced = backup(repo, src, parent=third.tree, force=True)
    assert forced.summary.bytes_read == 21000 and forced.summary.files_changed == 3

    (src / "new").write_bytes(b"n")
    fourth = backup(repo, src, parent=third.tree)
    assert (fourth.summary.files_new, fourth.summary.bytes_read) == (1, 1)


def test_parent_tree_unreadable_means_reading_again(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"a": b"a" * 100})
    done = backup(repo, src, parent=b"\x01" * 32)  # no such tree blob
    assert done.summary.bytes_read == 100
    assert len(done.warnings) == 1 and "parent tree" in done.warnings[0]


def test_hardlinked_file_is_read_once(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_files(src, {"one": b"x" * 10_000})
    os.link(src / "one", src / "two")
    done = backup(repo, src)
    assert done.summary.bytes_read == 10_000 and done.summary.bytes_total == 20_000
    nodes = walk(repo, done.tree)
    one, two = nodes[b(src / "one")], nodes[b(src / "two")]
    assert one.links == two.links == 2 and one.inode == two.inode
    assert one.content == two.content and one.digest == two.digest


class _Mutating:
    """A chunker reading in 8 KiB steps that changes the file after the first one."""

    def __init__(self, inner: Chunks, change: Callable[[], None]) -> None:
        self.inner, self.change = inner, change

    def iter_chunks(
        self, read: Callable[[int], bytes], guess: Guess | None = None
    ) -> Iterator[bytes]:
        calls = 0

        def reading(n: int) -> bytes:
            nonlocal calls
            data = read(min(n, 8192))
            calls += 1
            if calls == 1:
                self.change()
            return data

        yield from self.inner.iter_chunks(reading, guess)


@pytest.mark.parametrize("how", ["grows", "shrinks", "rewritten"])
def test_file_changing_while_read(repo: Repository, tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    f = src / "log"
    make_files(src, {"log": b"0123456789" * 10_000})

    def change() -> None:
        if how == "grows":
            with open(f, "ab") as out:
                out.write(b"appended")
        elif how == "shrinks":
            os.truncate(f, 50_000)
        else:
            with open(f, "r+b") as out:
                out.seek(90_000)
                out.write(b"X" * 10)

    done = backup(repo, src, chunker=_Mutating(repo.chunker(), change))
    assert len(done.warnings) == 1
    assert "log" in done.warnings[0] and "changed while it was read" in done.warnings[0]
    node = walk(repo, done.tree)[b(f)]
    assert content(repo, node) == f.read_bytes()  # saved as read: here, all of it
    assert node.size == f.stat().st_size
    # The times from before the read were kept, so the next backup reads it again.
    again = backup(repo, src, parent=done.tree)
    assert again.warnings == [] and again.summary.files_changed == 1
    assert again.summary.bytes_read == f.stat().st_size


def _sparse_file(path: Path, size: int, extents: list[tuple[int, bytes]]) -> None:
    with open(path, "wb") as out:
        for offset, data in extents:
            out.seek(offset)
            out.write(data)
        out.truncate(size)


def test_source_reader_skips_holes(tmp_path: Path) -> None:
    p = tmp_path / "sparse"
    blocks = [(1 << 20, b"a" * 4096), (3 << 20, b"b" * 10_000)]
    _sparse_file(p, 5 << 20, blocks)
    st = p.stat()
    if st.st_blocks * 512 >= st.st_size:
        pytest.skip("this filesystem does not make holes")
    fd = os.open(p, os.O_RDONLY)
    try:
        reader = SourceReader(fd, st)
        parts = []
        while part := reader.read(700_000):
            assert len(part) <= 700_000
            parts.append(part)
    finally:
        os.close(fd)
    assert b"".join(parts) == p.read_bytes()
    # Only the allocated data is read (whole filesystem blocks at most).
    assert 14_096 <= reader.bytes_read <= st.st_blocks * 512


def test_source_reader_plain_file_and_growth(tmp_path: Path) -> None:
    p = tmp_path / "plain"
    p.write_bytes(b"z" * 10_000)
    fd = os.open(p, os.O_RDONLY)
    try:
        reader = SourceReader(fd, p.stat())
        first = reader.read(6000)
        with open(p, "ab") as out:
            out.write(b"more")
        rest = b"".join(iter(lambda: reader.read(6000), b""))
    finally:
        os.close(fd)
    assert first + rest == b"z" * 10_000 + b"more"
    assert reader.bytes_read == 10_004


# -- sparse restore ------------------------------------------------------------


def _zero_block_layout(rnd: random.Random, n_blocks: int) -> bytes:
    """Blocks that are zero, data, or data with zero runs that cover no whole block."""
    out = bytearray()
    for _ in range(n_blocks):
        kind = rnd.random()
        if kind < 0.45:
            out += bytes(SPARSE_BLOCK)
        elif kind < 0.8:
            out += rnd.randbytes(SPARSE_BLOCK)
        else:  # mostly zero, but a byte at one end
            block = bytearray(SPARSE_BLOCK)
            block[0 if rnd.random() < 0.5 else -1] = 1
            out += block
    return bytes(out[: len(out) - rnd.choice([0, 0, 1, 100, 4095])])


@pytest.mark.parametrize("seed", range(6))
def test_sparse_writer_matches_a_file_written_block_by_block(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    data = _zero_block_layout(rnd, rnd.randrange(1, 200))
    # Reference: write exactly the blocks holding a non-zero byte, then set the size.
    ref = tmp_path / "ref"
    with open(ref, "wb") as out:
        for off in range(0, len(data), SPARSE_BLOCK):
            block = data[off : off + SPARSE_BLOCK]
            if block.count(0) != len(block):
                out.seek(off)
                out.write(block)
        out.truncate(len(data))
        os.fsync(out.fileno())
    # Through SparseWriter, in chunks of random sizes that ignore block boundaries.
    got = tmp_path / "got"
    fd = os.open(got, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        writer = SparseWriter(fd)
        pos = 0
        while pos < len(data):
            n = rnd.choice([1, 17, 4095, 4096, 4097, 10_000, 70_000])
            writer.write(data[pos : pos + n])
            pos += n
        assert writer.finish() == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert got.read_bytes() == data
    assert got.stat().st_blocks == ref.stat().st_blocks


def test_sparse_restore_end_to_end(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _sparse_file(src / "holes", 2 << 20, [(0, b"h" * 5000), (1 << 20, b"m" * 8192)])
    _sparse_file(src / "all-hole", 3 << 20, [])
    done = backup(repo, src)
    assert done.summary.bytes_read < 20_000  # holes are not read
    # ...yet the content list and digest are those of reading every byte.
    for name in ("holes", "all-hole"):
        node = walk(repo, done.tree)[b(src / name)]
        plain = stdin_node(
            name.encode(),
            io.BytesIO((src / name).read_bytes()).read,
            Archiver(repo, repo.chunker()),
        )
        assert (node.content, node.sizes, node.digest) == (plain.content, plain.sizes, plain.digest)
    summary, _ = restore(repo, done.tree, tmp_path / "out")
    for name in ("holes", "all-hole"):
        a, c = src / name, landed(tmp_path / "out", src) / name
        assert a.read_bytes() == c.read_bytes()
        assert a.stat().st_blocks == c.stat().st_blocks, name
    assert summary.bytes_written == (2 << 20) + (3 << 20)


# -- restore options -----------------------------------------------------------


@pytest.fixture
def snap(repo: Repository, tmp_path: Path) -> tuple[bytes, Path]:
    src = tmp_path / "src"
    make_files(
        src,
        {
            "top.txt": b"top",
            "sub/a.txt": b"a" * 3000,
            "sub/b.bin": b"b" * 3000,
            "sub/deeper/c.txt": b"c",
            "other/d.bin": b"d",
        },
    )
    return backup(repo, src).tree, src


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_restore_include_and_exclude(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    tree, src = snap
    out = tmp_path / "inc"
    summary, _ = restore(repo, tree, out, includes=PatternSet([b"*.txt"]))
    assert files_under(landed(out, src)) == {
        "top.txt",
        "sub",
        "sub/a.txt",
        "sub/deeper",
        "sub/deeper/c.txt",
    }
    assert summary.files_restored == 3
    out = tmp_path / "exc"
    restore(repo, tree, out, excludes=PatternSet([b"sub", b"*.bin"]))
    assert files_under(landed(out, src)) == {"top.txt", "other"}
    out = tmp_path / "both"
    restore(
        repo, tree, out, includes=PatternSet([b(src / "sub")]), excludes=PatternSet([b"deeper"])
    )
    assert files_under(landed(out, src)) == {"sub", "sub/a.txt", "sub/b.bin"}


def test_restore_subtree(repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]) -> None:
    tree, src = snap
    sub_tree, node = find_subtree(repo, tree, b(src / "sub"))
    assert node is not None and node.name == b"sub"
    out = tmp_path / "out"
    restore(repo, sub_tree, out, b(src / "sub"), includes=PatternSet([b(src / "sub/deeper")]))
    assert files_under(out) == {"deeper", "deeper/c.txt"}
    restore(repo, sub_tree, out, b(src / "sub"))
    assert files_under(out) == {"a.txt", "b.bin", "deeper", "deeper/c.txt"}
    with pytest.raises(CasError, match="not in the snapshot"):
        find_subtree(repo, tree, b(src / "nope"))
    with pytest.raises(CasError, match="not a directory"):
        find_subtree(repo, tree, b(src / "top.txt"))


def test_restore_over_existing_skips_identical_and_deletes_extras(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    tree, src = snap
    out = tmp_path / "out"
    first, _ = restore(repo, tree, out)
    assert first.files_restored == 5 and first.files_unchanged == 0
    here = landed(out, src)
    (here / "sub/a.txt").write_bytes(b"changed locally")
    (here / "extra").write_bytes(b"not in the snapshot")
    (here / "sub/extra-dir").mkdir()
    (here / "sub/extra-dir/f").write_bytes(b"")

    again, actions = restore(repo, tree, out, verify=True)
    assert (again.files_restored, again.files_unchanged, again.verified) == (1, 4, 5)
    assert again.bytes_written == 3000
    assert (here / "sub/a.txt").read_bytes() == b"a" * 3000
    assert ("unchanged", b(here / "top.txt")) in actions.actions
    assert (here / "extra").exists() and again.deleted == 0  # kept without --delete

    dry, _ = restore(repo, tree, out, delete=True, dry_run=True)
    assert dry.deleted == 2 and (here / "extra").exists()
    deleted, _ = restore(repo, tree, out, delete=True)
    assert deleted.deleted == 2 and deleted.files_unchanged == 5
    assert not (here / "extra").exists() and not (here / "sub/extra-dir").exists()
    assert files_under(here) == files_under(src)
    assert not [p for p in out.rglob(".cas-restore-*")]


def test_restore_replaces_what_is_in_the_way(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    tree, src = snap
    out = tmp_path / "out"
    here = landed(out, src)
    here.mkdir(parents=True)
    (here / "sub").write_bytes(b"a file where a directory goes")
    (here / "top.txt").mkdir()  # a directory where a file goes
    summary, actions = restore(repo, tree, out)
    assert (here / "sub/a.txt").read_bytes() == b"a" * 3000
    assert summary.failed == [os.fsdecode(here / "top.txt")]
    assert "a directory is in the way" in actions.warnings[0]
    summary, _ = restore(repo, tree, out, delete=True)
    assert summary.failed == [] and (here / "top.txt").read_bytes() == b"top"


def test_restore_dry_run_writes_nothing(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    tree, _ = snap
    out = tmp_path / "out"
    summary, actions = restore(repo, tree, out, dry_run=True)
    assert not out.exists()
    assert summary.files_restored == 5 and summary.bytes_written == 0
    assert sum(1 for what, _ in actions.actions if what == "file") == 5


class _FailingReader:
    """Loads blobs through ``repo`` but reports one data blob as damaged."""

    def __init__(self, repo: Repository, bad: bytes) -> None:
        self.repo, self.bad = repo, bad

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        if blob_id == self.bad:
            raise IntegrityError(what=f"blob {blob_id.hex()[:8]}", detail="damaged for the test")
        return self.repo.load_blob(blob_type, blob_id, raw_length)


def test_restore_damaged_blob_fails_that_file_only(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    tree, src = snap
    bad = walk(repo, tree)[b(src / "sub/b.bin")].content[0]
    out = tmp_path / "out"
    summary, actions = restore(repo, tree, out, reader=_FailingReader(repo, bad))
    here = landed(out, src)
    assert summary.failed == [os.fsdecode(here / "sub/b.bin")]
    assert "damaged for the test" in actions.warnings[0]
    assert not (here / "sub/b.bin").exists()
    assert (here / "sub/a.txt").read_bytes() == b"a" * 3000
    assert not [p for p in out.rglob(".cas-restore-*")]


def test_restore_target_not_writable(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    tree, _ = snap
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CasError, match="cannot write into") as info:
        restore(repo, tree, blocker / "target")
    assert info.value.exit_code == 1


def test_tree_of_empty_dirs_and_times(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b/c").mkdir(parents=True)
    for i, d in enumerate([src / "a/b/c", src / "a/b", src / "a", src]):
        os.utime(d, ns=(1_000_000_001 + i, 2_000_000_003 + i))
    done = backup(repo, src)
    restore(repo, done.tree, tmp_path / "out")
    here = landed(tmp_path / "out", src)
    for rel in ("a/b/c", "a/b", "a", "."):
        a, c = (src / rel).stat(), (here / rel).stat()
        assert (a.st_mtime_ns, a.st_atime_ns, a.st_mode) == (
            c.st_mtime_ns,
            c.st_atime_ns,
            c.st_mode,
        )


def _can_set_immutable(directory: Path) -> bool:
    probe = directory / ".probe"
    probe.write_bytes(b"")
    try:
        set_flags(b(probe), get_flags(b(probe)) | FLAG_IMMUTABLE)
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            set_flags(b(probe), get_flags(b(probe)) & ~FLAG_IMMUTABLE)
        probe.unlink()
    return True


def test_restore_over_immutable_entries(
    repo: Repository, tmp_path: Path, snap: tuple[bytes, Path]
) -> None:
    if not IS_ROOT or not _can_set_immutable(tmp_path):
        pytest.skip("needs root and a filesystem with immutable flags")
    tree, src = snap
    out = tmp_path / "out"
    restore(repo, tree, out)
    here = landed(out, src)
    (here / "extra-dir").mkdir()
    (here / "extra-dir/locked").write_bytes(b"")
    (here / "extra-file").write_bytes(b"")
    (here / "sub/a.txt").write_bytes(b"changed and then locked")
    locked = [here / "extra-dir/locked", here / "extra-dir", here / "extra-file"]
    locked += [here / "sub/a.txt", here / "sub/b.bin", here / "sub"]
    try:
        for p in locked:
            set_flags(b(p), get_flags(b(p)) | (FLAG_APPEND if p.is_dir() else FLAG_IMMUTABLE))
        summary, actions = restore(repo, tree, out, delete=True)
        assert actions.warnings == [] and summary.failed == []
        assert (summary.deleted, summary.files_restored, summary.files_unchanged) == (2, 1, 4)
        assert files_under(here) == files_under(src)
        assert (here / "sub/a.txt").read_bytes() == b"a" * 3000
        # The snapshot's flags (none) are what the entries have now.
        assert not get_flags(b(here / "sub/b.bin")) & (FLAG_IMMUTABLE | FLAG_APPEND)
        assert not get_flags(b(here / "sub")) & (FLAG_IMMUTABLE | FLAG_APPEND)
    finally:
        unlock_tree(tmp_path)


class _Through:
    """A chunker that is not a StreamChunker: the archiver reads every file through it."""

    def __init__(self, inner: Chunks) -> None:
        self.inner = inner

    def iter_chunks(
        self, read: Callable[[int], bytes], guess: Guess | None = None
    ) -> Iterator[bytes]:
        return self.inner.iter_chunks(read, guess)


def test_small_files_read_in_one_pread_match_the_chunker(repo: Repository, tmp_path: Path) -> None:
    """A file shorter than the minimum chunk is read and stored without the chunker
    (one pread): its node is the one the chunker path gives, at the size boundaries."""
    chunker = repo.chunker()
    low = chunker.params.min_size  # type: ignore[attr-defined]
    sizes = [0, 1, 100, low - 1, low, low + 1, 3 * low]
    files = {f"f{n}": random.Random(n).randbytes(n) for n in sizes}
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    make_files(fast, files)
    make_files(slow, files)
    a = backup(repo, fast, chunker=chunker)
    b_ = backup(repo, slow, chunker=_Through(chunker))
    assert a.warnings == b_.warnings == []
    assert a.summary.bytes_read == b_.summary.bytes_read == sum(sizes)
    nodes_a, nodes_b = walk_source(repo, a.tree, fast), walk_source(repo, b_.tree, slow)
    for name, data in files.items():
        na, nb = nodes_a[b(fast / name)], nodes_b[b(slow / name)]
        assert (na.content, na.sizes, na.digest, na.size) == (
            nb.content,
            nb.sizes,
            nb.digest,
            nb.size,
        )
        assert content(repo, na) == data
        if 0 < len(data) < low:
            assert len(na.content) == 1


def test_read_small_only_whole_small_files_without_holes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    st = os.stat(f)
    with open(f, "rb") as src:
        assert read_small(src.fileno(), st, 101) == (b"x" * 100, 100)
        assert read_small(src.fileno(), st, 100) == (None, 0)  # not below the limit
        with open(f, "ab") as out:
            out.write(b"more")  # grew since its stat: read the normal way
        assert read_small(src.fileno(), st, 1 << 20) == (None, 101)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as out:
        out.truncate(64 << 10)  # all hole (where the filesystem makes one)
    st = os.stat(sparse)
    if st.st_blocks * 512 < st.st_size:
        with open(sparse, "rb") as src:
            assert read_small(src.fileno(), st, 1 << 20) == (None, 0)
