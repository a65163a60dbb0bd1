"""A single flipped byte in any stored object is detected, with a clear one-line error."""

from __future__ import annotations

import pytest

from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.errors import CasError, IntegrityError, WrongPassword
from cas.format.tree import decode_tree
from cas.repo import layout, open_repository
from tests.support.repos import PASSWORD, flip_byte, new_repo, populate, sample_positions


def _fresh() -> tuple[MemoryBackend, bytes, dict[bytes, bytes]]:
    backend = MemoryBackend()
    repo = new_repo(backend)
    sid, files = populate(repo)
    return backend, sid, files


def _read_everything(backend: MemoryBackend, sid: bytes) -> None:
    """Open the repository and read every object a restore and a check would."""
    repo = open_repository(backend, PASSWORD)
    repo.load_index()
    snap = repo.load_snapshot(sid)
    for node in decode_tree(repo.load_blob(BlobType.TREE, snap.tree)):
        for bid, size in zip(node.content, node.sizes, strict=True):
            repo.load_blob(BlobType.DATA, bid, size)
    for pack_id in repo.index.pack_ids():
        repo.verify_pack(pack_id)


def _assert_detected(backend: MemoryBackend, sid: bytes) -> None:
    with pytest.raises(CasError) as info:
        _read_everything(backend, sid)
    assert not isinstance(info.value, WrongPassword) or "key" in str(info.value)
    message = str(info.value)
    assert message and "\n" not in message


def test_undamaged_repository_reads_back() -> None:
    backend, sid, _ = _fresh()
    _read_everything(backend, sid)


def test_every_byte_of_config() -> None:
    backend, sid, _ = _fresh()
    size = len(backend.read(layout.CONFIG))
    original = backend.read(layout.CONFIG)
    for pos in range(size):
        flip_byte(backend, layout.CONFIG, pos)
        _assert_detected(backend, sid)
        backend.delete(layout.CONFIG)
        backend.write(layout.CONFIG, original)
    _read_everything(backend, sid)


@pytest.mark.parametrize("directory", [layout.KEYS, layout.INDEX, layout.SNAPSHOTS, layout.DATA])
def test_flipped_bytes_in_named_objects(directory: str) -> None:
    backend, sid, _ = _fresh()
    name = sorted(o.name for o in backend.list(directory))[0]
    original = backend.read(name)
    positions = range(len(original)) if len(original) < 2048 else sample_positions(len(original))
    for pos in positions:
        flip_byte(backend, name, pos)
        _assert_detected(backend, sid)
        backend.delete(name)
        backend.write(name, original)
    _read_everything(backend, sid)


def test_flipped_blob_is_caught_by_a_ranged_read() -> None:
    """Without a whole-pack read, the AEAD tag of the blob itself catches the change."""
    backend, sid, _ = _fresh()
    repo = open_repository(backend, PASSWORD)
    repo.load_index()
    snap = repo.load_snapshot(sid)
    node = decode_tree(repo.load_blob(BlobType.TREE, snap.tree))[0]
    loc = repo.locate(node.content[0])
    flip_byte(backend, layout.pack_name(loc.pack_id), loc.offset + loc.length // 2)
    with pytest.raises(IntegrityError, match="authentication failed"):
        repo.load_blob(BlobType.DATA, node.content[0], node.sizes[0])


def test_blob_moved_to_another_id_is_rejected() -> None:
    """A sealed blob presented under a different ID fails authentication (AD binds the ID)."""
    backend, sid, _ = _fresh()
    repo = open_repository(backend, PASSWORD)
    repo.load_index()
    snap = repo.load_snapshot(sid)
    nodes = decode_tree(repo.load_blob(BlobType.TREE, snap.tree))
    a, b = nodes[0].content[0], nodes[1].content[0]
    la = repo.locate(a)
    sealed = backend.read(layout.pack_name(la.pack_id), la.offset, la.length)
    from cas.format.pack import open_blob

    with pytest.raises(IntegrityError):
        open_blob(repo.keys, BlobType.DATA, b, sealed)
    with pytest.raises(IntegrityError):
        open_blob(repo.keys, BlobType.TREE, a, sealed)
