"""The packer: one buffer per pack, finished packs that read back, and the hand-over of
an open pack's blobs in bounded pieces (a backup worker's last pack)."""

from __future__ import annotations

import os

from cas.crypto import BlobType, MasterKeys
from cas.format import pack as packfmt
from cas.ids import storage_id
from cas.repo.packer import Packer


def _blobs() -> list[tuple[bytes, bytes]]:
    sizes = [100, 70_000, 50, 1_000_000, 60, 2_500_000, 45, 40_000]
    return [(os.urandom(32), os.urandom(n)) for n in sizes]


def test_a_finished_pack_holds_every_blob_where_its_header_says() -> None:
    keys = MasterKeys.generate()
    packer = Packer(keys, BlobType.DATA)
    blobs = _blobs()
    for blob_id, sealed in blobs:
        packer.add(blob_id, sealed, len(sealed) + 1)
    assert packer.size == sum(len(s) for _, s in blobs)
    fp = packer.finish()
    assert fp.pack_id == storage_id(fp.data)
    assert packfmt.parse_pack(keys, fp.data) == fp.entries
    for (blob_id, sealed), e in zip(blobs, fp.entries, strict=True):
        assert (e.blob_id, bytes(fp.data[e.offset : e.offset + e.length])) == (blob_id, sealed)
    assert len(packer) == 0 and packer.size == 0


def test_taking_an_open_pack_gives_every_blob_once_in_bounded_pieces() -> None:
    keys = MasterKeys.generate()
    packer = Packer(keys, BlobType.DATA)
    blobs = _blobs()
    for blob_id, sealed in blobs:
        packer.add(blob_id, sealed, len(sealed))
    got = []
    pieces = list(packer.take(1 << 20))
    assert len(packer) == 0 and packer.size == 0
    for body, entries in pieces:
        # A piece passes the limit by one blob at most.
        assert len(body) - entries[-1].length < 1 << 20
        assert sum(e.length for e in entries) == len(body)
        for e in entries:
            got.append((e.blob_id, body[e.offset : e.offset + e.length]))
    assert got == blobs
    assert len(pieces) == 3  # ..1_000_000 | 60, 2_500_000 | 45, 40_000
