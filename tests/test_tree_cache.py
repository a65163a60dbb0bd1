"""Tree packs read through the local cache: hashed whole once, then read a tree at a time
from the open cache file, never held whole in memory (cas/repo/blobreader.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.errors import IntegrityError
from cas.format.tree import Node, decode_tree, encode_tree
from cas.repo import Repository, layout
from cas.repo import blobreader as blobreader_mod
from cas.repo.cache import LocalCache
from tests.support.repos import new_repo


class _Counting(MemoryBackend):
    """Counts whole-object reads of packs."""

    def __init__(self) -> None:
        super().__init__()
        self.whole_pack_reads = 0

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/") and offset == 0 and length is None:
            self.whole_pack_reads += 1
        return super().read(name, offset, length)


def _trees(n: int) -> tuple[Repository, _Counting, list[tuple[bytes, list[Node]]]]:
    backend = _Counting()
    repo = new_repo(backend)
    trees = []
    for i in range(n):
        nodes = [Node(name=b"f%d-%d" % (i, j), type="file", mode=0o644) for j in range(3)]
        tid, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
        trees.append((tid, nodes))
    repo.flush()
    return repo, backend, trees


def _reopened_reader(repo: Repository, cache: LocalCache | None) -> blobreader_mod.BlobReader:
    """A fresh reader of the same repository (nothing of the writer's run kept)."""
    reader = blobreader_mod.BlobReader(repo.backend, repo.keys, repo.indexes)
    reader.read_unit, reader.version = repo.reader.read_unit, repo.reader.version
    reader.cache = cache
    return reader


def _names(raw: bytes) -> list[bytes]:
    return [n.name for n in decode_tree(raw)]


def _tree_pack(repo: Repository, tid: bytes) -> bytes:
    return repo.locate(tid).pack_id


def test_trees_are_read_from_the_open_cache_file_not_a_copy_in_memory(tmp_path: Path) -> None:
    repo, backend, trees = _trees(20)
    cache = LocalCache(tmp_path / "cache")
    reader = _reopened_reader(repo, cache)
    backend.whole_pack_reads = 0
    for tid, nodes in trees:
        assert _names(reader.load_blob(BlobType.TREE, tid)) == [n.name for n in nodes]
    packs = {_tree_pack(repo, tid) for tid, _ in trees}
    assert backend.whole_pack_reads == len(packs)  # each fetched whole once, then cached
    assert set(reader._tree_files) == packs and not reader._tree_packs
    # A second reader (the next run) hashes the cached file and fetches nothing.
    again = _reopened_reader(repo, cache)
    backend.whole_pack_reads = 0
    for tid, nodes in trees:
        assert _names(again.load_blob(BlobType.TREE, tid)) == [n.name for n in nodes]
    assert backend.whole_pack_reads == 0 and cache.hits >= len(packs)


def test_a_damaged_cache_file_is_fetched_again(tmp_path: Path) -> None:
    repo, backend, trees = _trees(3)
    cache = LocalCache(tmp_path / "cache")
    _reopened_reader(repo, cache).load_blob(BlobType.TREE, trees[0][0])  # fills the cache
    pid = _tree_pack(repo, trees[0][0])
    path = tmp_path / "cache" / "packs" / pid.hex()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    reader = _reopened_reader(repo, cache)
    backend.whole_pack_reads = 0
    for tid, nodes in trees:
        assert _names(reader.load_blob(BlobType.TREE, tid)) == [n.name for n in nodes]
    assert backend.whole_pack_reads == 1
    assert path.read_bytes() == repo.backend.read(layout.pack_name(pid))  # mended


def test_a_cache_file_changed_after_it_was_hashed_is_fetched_again(tmp_path: Path) -> None:
    repo, backend, trees = _trees(3)
    cache = LocalCache(tmp_path / "cache")
    reader = _reopened_reader(repo, cache)
    reader.load_blob(BlobType.TREE, trees[0][0])
    pid = _tree_pack(repo, trees[0][0])
    path = tmp_path / "cache" / "packs" / pid.hex()
    os.truncate(path, 10)  # behind the open descriptor
    backend.whole_pack_reads = 0
    for tid, nodes in trees:  # the first fails authentication, is read from storage
        assert _names(reader.load_blob(BlobType.TREE, tid)) == [n.name for n in nodes]
    assert pid not in reader.damaged_tree_packs  # the stored pack is intact
    assert backend.whole_pack_reads == 1  # the cache file, hashed again, was fetched again
    assert path.read_bytes() == backend.read(layout.pack_name(pid))


def test_without_room_in_the_cache_the_pack_is_kept_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, backend, trees = _trees(5)
    cache = LocalCache(tmp_path / "cache")
    monkeypatch.setattr(LocalCache, "put_pieces", lambda *a, **k: None)  # a full disk
    reader = _reopened_reader(repo, cache)
    backend.whole_pack_reads = 0
    for tid, nodes in trees:
        assert _names(reader.load_blob(BlobType.TREE, tid)) == [n.name for n in nodes]
    packs = {_tree_pack(repo, tid) for tid, _ in trees}
    assert backend.whole_pack_reads == len(packs) and set(reader._tree_packs) == packs
    assert not reader._tree_files


def test_a_pack_that_does_not_hash_to_its_name_is_refused(tmp_path: Path) -> None:
    repo, backend, trees = _trees(1)
    pid = _tree_pack(repo, trees[0][0])
    name = layout.pack_name(pid)
    data = bytearray(backend.read(name))
    data[-1] ^= 1
    backend.delete(name)
    backend.write(name, bytes(data))
    reader = _reopened_reader(repo, LocalCache(tmp_path / "cache"))
    with pytest.raises(IntegrityError):
        reader._tree_range(pid, 0, 16)


def test_at_most_so_many_cache_files_stay_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blobreader_mod, "TREE_PACKS_OPEN", 2)
    backend = _Counting()
    repo = new_repo(backend)
    trees = []
    for i in range(4):  # a pack each: flushed after every tree
        nodes = [Node(name=b"d%d" % i, type="file", mode=0o644)]
        tid, _ = repo.save_blob(BlobType.TREE, encode_tree(nodes))
        repo.flush()
        trees.append(tid)
    reader = _reopened_reader(repo, LocalCache(tmp_path / "cache"))
    for tid in trees + trees:
        reader.load_blob(BlobType.TREE, tid)
    assert len(reader._tree_files) == 2
    opened = set(os.listdir("/proc/self/fd"))
    for fd in reader._tree_files.values():
        assert str(fd) in opened
