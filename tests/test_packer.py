"""The packer: one buffer per pack, finished packs that read back, and the hand-over of
an open pack's blobs in bounded pieces (a backup worker's last pack); a stored pack
proven piece by piece (a check helper on a local repository)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from cas.backend.local import LocalBackend
from cas.crypto import BlobType, MasterKeys
from cas.errors import CasError, IntegrityError
from cas.format import pack as packfmt
from cas.ids import storage_id
from cas.repo import layout
from cas.repo.packer import SPOOL_BUFFER, Packer
from cas.repo.readerspec import LocatedReader


def _blobs() -> list[tuple[bytes, bytes]]:
    sizes = [100, 70_000, 50, 1_000_000, 60, 2_500_000, 45, 40_000]
    return [(os.urandom(32), os.urandom(n)) for n in sizes]


@pytest.mark.parametrize("spool", [False, True])
def test_a_finished_pack_holds_every_blob_where_its_header_says(spool: bool) -> None:
    keys = MasterKeys.generate()
    packer = Packer(keys, BlobType.DATA, spool=spool)
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


@pytest.mark.parametrize("spool", [False, True])
def test_taking_an_open_pack_gives_every_blob_once_in_bounded_pieces(spool: bool) -> None:
    keys = MasterKeys.generate()
    packer = Packer(keys, BlobType.DATA, spool=spool)
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


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_spooling_packer_holds_a_small_buffer_and_its_file_goes_with_the_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blobs beyond SPOOL_BUFFER wait in an unnamed file in $TMPDIR (nothing to see
    there, nothing left behind); the pack read back from it is the pack named."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    keys = MasterKeys.generate()
    before = _open_fds()
    packer = Packer(keys, BlobType.DATA, spool=True)
    blobs = _blobs()
    for blob_id, sealed in blobs:
        packer.add(blob_id, sealed, len(sealed))
        assert len(packer._data) < SPOOL_BUFFER  # the rest is in the file
    assert len(_open_fds() - before) == 1 and os.listdir(tmp_path) == []
    fp = packer.finish()
    data = fp.read()
    assert fp.pack_id == storage_id(data) and fp.size == len(data)
    assert packfmt.parse_pack(keys, data) == fp.entries
    fp.discard()
    assert _open_fds() == before and os.listdir(tmp_path) == []


def test_a_spooled_pack_whose_file_changed_is_not_stored() -> None:
    keys = MasterKeys.generate()
    packer = Packer(keys, BlobType.DATA, spool=True)
    for blob_id, sealed in _blobs():
        packer.add(blob_id, sealed, len(sealed))
    fp = packer.finish()
    assert fp._spool is not None
    os.pwrite(fp._spool.fileno(), b"\xff", 1000)
    with pytest.raises(IntegrityError, match="temporary file changed"):
        fp.read()
    fp.discard()


def _stored_pack(tmp_path: Path, sizes: list[int]) -> tuple[LocatedReader, bytes, Path]:
    keys = MasterKeys.generate()
    backend = LocalBackend(tmp_path)
    packer = Packer(keys, BlobType.DATA)
    for n in sizes:
        data = os.urandom(n)
        blob_id = keys.blob_id(BlobType.DATA, data)
        packer.add(blob_id, packfmt.seal_blob(keys, BlobType.DATA, blob_id, data), n)
    fp = packer.finish()
    backend.write(layout.pack_name(fp.pack_id), fp.data)
    return LocatedReader(backend, keys), fp.pack_id, tmp_path / layout.pack_name(fp.pack_id)


@pytest.mark.parametrize("piece", [997, 65536, 1 << 20, 64 << 20])
def test_a_pack_verified_in_pieces_is_proven_as_a_whole(tmp_path: Path, piece: int) -> None:
    reader, pack_id, _ = _stored_pack(tmp_path, [100, 300_000, 5, 2_000_000, 70_000, 1])
    assert reader.verify_pack_streamed(pack_id, piece) == reader.verify_pack(pack_id)


@pytest.mark.parametrize("where", [0, 200, 150_000, -60, -3])
def test_a_damaged_pack_fails_in_pieces_and_reads_as_always(tmp_path: Path, where: int) -> None:
    """Any flipped byte (a blob, the header, the trailer) fails the streamed proof; the
    whole-pack path then names the damage exactly as before (its message)."""
    reader, pack_id, path = _stored_pack(tmp_path, [100, 300_000, 5, 70_000])
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0x08
    path.chmod(0o644)
    path.write_bytes(bytes(raw))
    with pytest.raises(CasError):
        reader.verify_pack_streamed(pack_id, 4096)
    reader.stream_packs = True
    with pytest.raises(IntegrityError, match="does not match its name"):
        reader.verify_pack(pack_id)
