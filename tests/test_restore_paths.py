"""Restore paths the other restore tests did not pin, in-process.

Each test was written against a mutant of cas/restore/restorer.py that the rest
of the suite let pass (docs/reliability.md §8.3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.format.tree import Node, encode_tree
from cas.repo import Repository
from cas.restore.restorer import SPARSE_BLOCK, Restorer, SparseWriter
from tests.support.repos import new_repo


@pytest.mark.parametrize(
    "pieces",
    [[b"\0"], [b"\0" * 100], [b"\0", b"\0"], [b"x", b"\0" * (SPARSE_BLOCK + 1)], [b""]],
    ids=["one-zero", "short-zeros", "two-writes", "ends-in-a-hole", "empty"],
)
def test_sparse_writer_keeps_the_size_of_a_file_ending_in_zeros(
    tmp_path: Path, pieces: list[bytes]
) -> None:
    """A file whose last bytes are zeros not written (a hole, or a tail of zeros)
    still gets its full size, even a file of one zero byte."""
    data = b"".join(pieces)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        writer = SparseWriter(fd)
        if len(pieces) == 1:
            assert writer.write_all(data) == len(data)
        else:
            for piece in pieces:
                writer.write(piece)
            assert writer.finish() == len(data)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_write_all_leaves_a_short_zero_tail_a_hole(tmp_path: Path) -> None:
    """Whole blocks of data then fewer than 4096 zeros: the zeros are not written, as
    when the file is written piece by piece (same allocated blocks as a reference)."""
    data = b"x" * SPARSE_BLOCK + bytes(100)
    ref = tmp_path / "ref"
    with open(ref, "wb") as f:
        f.write(data[:SPARSE_BLOCK])
        f.truncate(len(data))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        assert SparseWriter(fd).write_all(data) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert os.stat(tmp_path / "f").st_blocks == ref.stat().st_blocks


class _Offered:
    """Stands in for the writer processes (cas/restore/pool.py) at the restorer's side:
    records what it is offered and takes nothing, so the restorer writes every file
    itself; the test sees which files the writers would have been given."""

    def __init__(self) -> None:
        self.offered: list[bytes] = []
        self.started = 0

    def start(self) -> None:
        self.started = 1

    def size(self) -> int:
        return 0  # no writer process: every pack is "nobody's"

    def load(self, writer: int) -> int:
        return 0

    def submit(self, groups: list[Any], *a: Any, **k: Any) -> bool:
        for group in groups:
            self.offered += [n["name"] if type(n) is dict else n.name for n in group.nodes]
        return False

    def full(self, writer: int | None = None) -> bool:
        return False

    def busy(self) -> bool:
        return False

    def has_news(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _snapshot_of(repo: Repository, files: dict[bytes, bytes], broken: bytes = b"") -> bytes:
    """The tree of one directory holding ``files`` (and a file node ``broken`` whose size
    its content list does not add up to); its ID."""
    nodes = [Node(name=broken, type="file", mode=0o644, size=5)] if broken else []
    for name, data in files.items():
        node = Node(name=name, type="file", mode=0o644, size=len(data))
        if data:
            node.content, node.sizes = [repo.save_blob(BlobType.DATA, data)[0]], [len(data)]
        nodes.append(node)
    tree, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
    repo.flush()
    return tree


def _restored(tmp_path: Path, repo: Repository, tree: bytes, after: int) -> tuple[Any, _Offered]:
    pool = _Offered()
    r = Restorer(repo, repo.file_digest, writers=pool, writers_after=after)  # type: ignore[arg-type]
    out = tmp_path / f"out{after}-{len(os.listdir(tmp_path))}"
    out.mkdir()
    return r.restore(tree, os.fsencode(out)), pool


def test_writers_take_files_once_those_seen_hold_writers_after_times_256_kib(
    tmp_path: Path,
) -> None:
    """With ``writers_after`` N the writers take the files after N files, or once the
    files seen hold N × 256 KiB: not before (pinned at N = 4, 1 MiB)."""
    repo = new_repo(MemoryBackend())
    small = {b"a": b"x" * 3000, b"b": b"y" * 3000, b"c": b"z" * 3000}
    summary, pool = _restored(tmp_path, repo, _snapshot_of(repo, small), after=4)
    assert pool.offered == [] and summary.files_restored == 3  # 9 KB in 3 files: all here
    large = {b"a": os.urandom(600 << 10), b"b": os.urandom(500 << 10), b"c": b"z", b"d": b"w"}
    summary, pool = _restored(tmp_path, repo, _snapshot_of(repo, large), after=4)
    assert pool.offered == [b"b", b"c", b"d"]  # 1,100 KiB seen at b: from b on
    assert summary.files_restored == 4 and summary.failed == []


def test_a_malformed_file_node_in_a_batch_taken_back_is_named(tmp_path: Path) -> None:
    """Writers get a file's node map unchecked; when the batch comes back to this
    process (no writer could take it), a map that is not a valid node fails that file,
    named with its path, and the others are restored."""
    repo = new_repo(MemoryBackend())
    tree = _snapshot_of(repo, {b"good": b"data"}, broken=b"bad")
    summary, pool = _restored(tmp_path, repo, tree, after=0)
    assert pool.offered == [b"bad", b"good"]
    assert len(summary.failed) == 1 and summary.failed[0].endswith("/bad")
    assert summary.files_restored == 1
