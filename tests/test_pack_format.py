"""The pack decoder's bounds, one edge at a time (spec §9): each test pins a limit that
mutation testing (tools/mutation.py, docs/reliability.md) found unpinned by the vectors."""

from __future__ import annotations

import struct

import pytest

from cas.crypto import SEAL_OVERHEAD, BlobType, MasterKeys
from cas.errors import FormatError, IntegrityError
from cas.format import pack as packfmt
from cas.format.pack import PackEntry

KEYS = MasterKeys(bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96)), bytes(32))
TEXT = b"All work and no play makes Jack a dull boy. " * 8


def _trailer(n: int, magic: bytes = b"CPK1") -> bytes:
    return struct.pack("<I", n) + magic


def _pack(blobs: list[tuple[BlobType, bytes]]) -> tuple[bytes, list[PackEntry]]:
    body, entries = b"", []
    for t, plain in blobs:
        bid = KEYS.blob_id(t, plain)
        sealed = bytes(packfmt.seal_blob(KEYS, t, bid, plain))
        entries.append(PackEntry(bid, t, len(body), len(sealed), len(plain)))
        body += sealed
    return body + packfmt.encode_pack_tail(KEYS, entries), entries


def test_the_bounds_are_the_spec_s() -> None:
    # §8: a blob's plaintext is at most 2^32 - 1 bytes; §9.4: a header at most 256 MiB
    assert packfmt.MAX_BLOB == 2**32 - 1
    assert packfmt.MAX_HEADER == 256 << 20


def test_header_length_edges() -> None:
    big = 1 << 40
    assert packfmt.header_length(_trailer(41), 49) == 41  # a pack of no blobs (§9.4)
    assert packfmt.header_length(_trailer(1 << 28), big) == 1 << 28
    assert packfmt.header_length(_trailer(104), 112) == 104
    for n, size in [
        (40, big),  # shorter than a seal
        ((1 << 28) + 1, big),  # over 256 MiB
        (104, 111),  # header and trailer longer than the pack by one byte
        (96, 103),
    ]:
        with pytest.raises(FormatError):
            packfmt.header_length(_trailer(n), size)
    for trailer in (_trailer(41)[:7], _trailer(41, b"CPK0"), _trailer(41, b"AAAA")):
        with pytest.raises(FormatError):
            packfmt.header_length(trailer, big)


def test_a_stored_length_of_41_is_refused() -> None:
    entry = PackEntry(bytes(32), BlobType.DATA, 0, SEAL_OVERHEAD, 0)
    with pytest.raises(FormatError, match="shorter than its seal"):
        packfmt.parse_pack(KEYS, bytes(SEAL_OVERHEAD) + packfmt.encode_pack_tail(KEYS, [entry]))
    ok = PackEntry(bytes(32), BlobType.DATA, 0, SEAL_OVERHEAD + 1, 0)
    tail = packfmt.encode_pack_tail(KEYS, [ok])
    assert packfmt.parse_pack(KEYS, bytes(SEAL_OVERHEAD + 1) + tail) == [ok]


def test_a_pack_shorter_than_its_blobs_is_refused() -> None:
    pack, entries = _pack([(BlobType.DATA, TEXT), (BlobType.DATA, b"x" * 100)])
    assert packfmt.parse_pack(KEYS, pack) == entries
    with pytest.raises(FormatError, match="fill the pack"):
        packfmt.parse_pack(KEYS, pack[1:])  # a byte of the first blob lost


def test_open_blob_without_a_recorded_length() -> None:
    pack, (e,) = _pack([(BlobType.DATA, TEXT)])
    sealed = pack[: e.length]
    assert packfmt.open_blob(KEYS, BlobType.DATA, e.blob_id, sealed) == TEXT
    assert packfmt.open_blob(KEYS, BlobType.DATA, e.blob_id, sealed, len(TEXT)) == TEXT
    with pytest.raises(IntegrityError, match="length"):
        packfmt.open_blob(KEYS, BlobType.DATA, e.blob_id, sealed, len(TEXT) + 1)


@pytest.mark.parametrize("lower", [True, False])
def test_a_blob_sealed_under_another_id_is_refused(lower: bool) -> None:
    """The AD binds the ID it was sealed with; the content must hash to it too (§9.4
    step 4), whether the claimed ID sorts below or above the true one."""
    true_id = KEYS.blob_id(BlobType.DATA, TEXT)
    claimed = bytes(32) if lower else b"\xff" * 32
    assert (claimed < true_id) == lower
    sealed = bytes(packfmt.seal_blob(KEYS, BlobType.DATA, claimed, TEXT))
    with pytest.raises(IntegrityError, match="hash to its ID"):
        packfmt.open_blob(KEYS, BlobType.DATA, claimed, sealed)


def test_a_header_of_an_unknown_blob_type_is_refused() -> None:
    """The header's type byte is looked up in a table (not ``BlobType(t)``): a type the
    format does not define is still a FormatError, and known ones decode to the enum."""
    known = PackEntry(bytes(32), BlobType.TREE, 0, SEAL_OVERHEAD + 1, 0)
    tail = packfmt.encode_pack_tail(KEYS, [known])
    (got,) = packfmt.parse_pack(KEYS, bytes(SEAL_OVERHEAD + 1) + tail)
    assert got == known and got.type is BlobType.TREE
    known_types = {int(t) for t in BlobType}
    unknown = next(t for t in range(256) if t not in known_types)
    bad = PackEntry(bytes(32), unknown, 0, SEAL_OVERHEAD + 1, 0)  # type: ignore[arg-type]
    tail = packfmt.encode_pack_tail(KEYS, [bad])
    with pytest.raises(FormatError, match=f"unknown blob type {unknown}"):
        packfmt.parse_pack(KEYS, bytes(SEAL_OVERHEAD + 1) + tail)
