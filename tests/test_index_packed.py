"""A backup holds the packs it has not yet indexed as their packed maps in the index
file (``indexfmt.encode_pack_doc``), not a ``PackEntry`` per blob, and writes the
index file from them (``encode_packed_index``): the same bytes as ``encode_index``."""

from __future__ import annotations

import os
import random

import pytest

from cas import crypto
from cas.backend.memory import MemoryBackend
from cas.crypto import BlobType
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.repo import packwriter
from cas.repo.indexstore import IndexStore
from cas.repo.packwriter import BlobSaver

KEYS = crypto.MasterKeys.generate()


def _entries(rnd: random.Random, n: int) -> list[packfmt.PackEntry]:
    out, offset = [], 0
    for i in range(n):
        length = rnd.choice([100, 200, 70_000, 1 << 23, 5 << 30])  # every int width
        raw = rnd.choice([0, 100, 65_536, 1 << 33])
        blob_type = BlobType.TREE if i % 7 == 3 else BlobType.DATA
        out.append(packfmt.PackEntry(rnd.randbytes(32), blob_type, offset, length, raw))
        offset += length
    return out


def _names(store: MemoryBackend) -> list[str]:
    return [o.name for o in store.list("index")]


@pytest.mark.parametrize("count", [0, 1, 3, 40])
def test_an_index_file_from_packed_maps_is_the_one_encode_index_gives(count: int) -> None:
    rnd = random.Random(count)
    packs = {rnd.randbytes(32): _entries(rnd, rnd.choice([1, 2, 17, 300])) for _ in range(count)}
    nonce = os.urandom(24)
    packed = [
        indexfmt.encode_pack_doc(pack_id, [indexfmt.blob_row(x) for x in e])
        for pack_id, e in packs.items()
    ]
    raw = indexfmt.encode_packed_index(packed, KEYS.index_key, nonce)
    assert raw == indexfmt.encode_index(indexfmt.IndexFile(packs), KEYS.index_key, nonce)
    assert indexfmt.decode_index(raw, KEYS.index_key) == indexfmt.IndexFile(packs)


def test_a_saver_keeps_unindexed_packs_packed_and_writes_them_as_one_index_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(packwriter, "INDEX_EVERY_BLOBS", 5)
    store = MemoryBackend()
    store.create()
    indexes = IndexStore(store, KEYS)
    saver = BlobSaver(store, KEYS, 1 << 20, indexes, None, threads=0)
    rnd = random.Random(1)
    packs = {rnd.randbytes(32): _entries(rnd, 2) for _ in range(3)}
    for pack_id, entries in list(packs.items())[:2]:
        saver.adopt(pack_id, 100, entries)
    held = list(saver._unindexed.values())
    assert [type(packed) for _, packed in held] == [bytes, bytes]  # no PackEntry kept
    assert [n for n, _ in held] == [2, 2]
    assert _names(store) == []
    pack_id, entries = list(packs.items())[2]
    saver.adopt(pack_id, 100, entries)  # the 5th and 6th blobs: an index file
    (name,) = _names(store)
    written = indexfmt.decode_index(store.read(name), KEYS.index_key)
    assert written == indexfmt.IndexFile(packs)
    assert saver._unindexed == {}
