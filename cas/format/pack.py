"""Pack files under ``data/`` and the blobs inside them (spec/format.md §9).

    offset 0          sealed blob 0
                      sealed blob 1 ...
    H                 sealed header (index key, AD "cas.pack.v1")
    end - 8           u32 LE length of the sealed header
    end - 4           magic "CPK1" (repository version 1) or "CPK2" (version 2)

A sealed blob is ``seal(data_key, flag | payload, AD = "cas.blob.v1" | type | id)``.
The header plaintext is a sequence of 41-byte entries, one per blob in
order: type (u8), stored length (u32 LE), raw length (u32 LE), blob ID (32).
Offsets are implicit: each blob starts where the previous one ended.

A ``CPK2`` header starts with the entry count (u32 LE) and ends with zero
bytes: room for at least ``HEADER_BUCKET_MIN`` entries, else the next power of
two above the count, so its length says little about the count (spec §9.6).
Sealed blobs of a repository made with ``init --padding`` are padded (Padmé)
so their length says less about their content (§8.1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cas import crypto
from cas.crypto import BlobType
from cas.errors import FormatError, IntegrityError
from cas.format import compress

PACK_AD = b"cas.pack.v1"
TRAILER_MAGIC = b"CPK1"
TRAILER_MAGIC_V2 = b"CPK2"
TRAILER_SIZE = 8
ENTRY = struct.Struct("<BII32s")  # 41 bytes
BLOB_TYPES = {int(t): t for t in BlobType}  # a table: BlobType(t) is an enum call
COUNT = struct.Struct("<I")
MAX_BLOB = (1 << 32) - 1
MAX_HEADER = 1 << 28
# Version 2 repositories: readers fetch blob ranges in whole aligned units of this
# many bytes, cut at the pack's end (spec §9.6: 64 KiB, measured in docs/leaks.md).
READ_UNIT = 64 * 1024
# A version 2 header holds room for at least this many entries, then powers of two.
HEADER_BUCKET_MIN = 256
# Padded payloads (§8.1): the flag's high bit, then the body's length.
PADDED = 0x80
PAD_LENGTH = struct.Struct("<I")
PADDINGS = ("padme",)


@dataclass(frozen=True, slots=True)
class PackFormat:
    """How a repository's packs and blobs are laid out (from its config, spec §3, §9).

    Version 1: ``CPK1`` packs, exact ranged reads.  Version 2: ``CPK2`` packs
    (count hidden), reads in ``READ_UNIT`` units, and sealed
    blobs padded when ``padding`` names a scheme.
    """

    version: int = 1
    padding: str | None = None

    @property
    def read_unit(self) -> int:
        """The unit blob ranges are read in (0: exact ranges)."""
        return READ_UNIT if self.version >= 2 else 0


V1 = PackFormat()
V2 = PackFormat(2)


def padme(length: int) -> int:
    """Padmé (Nikitin et al., PETS 2019): ``length`` rounded up so that only its top
    bits vary; at most 12% larger, and a padded length leaks O(log log) bits."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    low = e - e.bit_length()
    mask = (1 << low) - 1
    return (length + mask) & ~mask


def padded_head(flag: int, body: int, scheme: str | None) -> tuple[bytes, int]:
    """What goes before a payload body of ``body`` bytes and how many zero bytes after
    it (§8.1): the flag alone without a scheme; with one, the flag's padded form and the
    body's length, then zeros up to a sealed length that is a Padmé length."""
    if scheme is None:
        return bytes((flag,)), 0
    if scheme not in PADDINGS:
        raise FormatError(what="padding", detail=f"unknown padding {scheme!r}")
    minimal = crypto.SEAL_OVERHEAD + 1 + PAD_LENGTH.size + body
    return bytes((PADDED | flag,)) + PAD_LENGTH.pack(body), padme(minimal) - minimal


def pad_payload(payload: bytes, scheme: str | None) -> bytes:
    """``payload`` padded (§8.1) so that its sealed length is a Padmé length; as is
    without a scheme."""
    if scheme is None:
        return payload
    head, zeros = padded_head(payload[0], len(payload) - 1, scheme)
    return b"".join((head, memoryview(payload)[1:], bytes(zeros)))


def unpad_payload(plain: bytes | bytearray, what: str) -> bytes | bytearray:
    """The payload inside a padded one (§8.1); any other payload as is."""
    if not plain or not plain[0] & PADDED:
        return plain
    head = 1 + PAD_LENGTH.size
    if len(plain) < head:
        raise FormatError(what=what, detail="padded payload too short")
    (body,) = PAD_LENGTH.unpack_from(plain, 1)
    if head + body > len(plain) or any(memoryview(plain)[head + body :]):
        raise FormatError(what=what, detail="padded payload malformed")
    return bytes((plain[0] & ~PADDED,)) + plain[head : head + body]


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one blob sits in a pack and how large it is."""

    blob_id: bytes
    type: BlobType
    offset: int
    length: int  # stored (sealed) bytes
    raw_length: int  # plaintext bytes after decompression


class PackColumns(NamedTuple):
    """A pack's blobs as columns, without a ``PackEntry`` per blob (how a backup worker
    reports a stored pack): blob ``i`` is ``ids[32 * i : 32 * (i + 1)]``, of type
    ``types[i]``, at ``offsets[i]``, ``lengths[i]`` stored and ``raw_lengths[i]`` plain
    bytes."""

    ids: bytes
    types: bytes
    offsets: Sequence[int]
    lengths: Sequence[int]
    raw_lengths: Sequence[int]

    @classmethod
    def of(cls, entries: Sequence[PackEntry]) -> PackColumns:
        return cls(
            b"".join(e.blob_id for e in entries),
            bytes(int(e.type) for e in entries),
            [e.offset for e in entries],
            [e.length for e in entries],
            [e.raw_length for e in entries],
        )


def seal_blob(
    keys: crypto.KeyBase,
    blob_type: BlobType,
    blob_id: bytes,
    plaintext: bytes | memoryview,
    level: int | None = compress.DEFAULT_LEVEL,
    nonce: bytes | None = None,
    padding: str | None = None,
) -> bytearray:
    """Compress (when it pays), pad (with a ``padding`` scheme) and seal one blob bound
    to its type and ID."""
    flag, body = compress.encode_parts(plaintext, level)
    head, zeros = padded_head(flag, len(body), padding)
    ad = crypto.blob_ad(blob_type, blob_id)
    sealer = keys.data
    if isinstance(sealer, crypto.SecretKey):
        # laid out and encrypted in place in one buffer: no joined payload beside it
        return sealer.seal_parts(head, body, zeros, ad, nonce)
    return sealer.seal(b"".join((head, body, bytes(zeros))), ad, nonce)


def open_blob(
    keys: crypto.KeyBase,
    blob_type: BlobType,
    blob_id: bytes,
    sealed: bytes,
    raw_length: int | None = None,
) -> bytes:
    """Authenticate, decrypt, decompress and re-hash one blob; IntegrityError on any mismatch.

    ``raw_length``, when known (from a pack header, index or tree), must
    match the plaintext and bounds decompression.
    """
    data = open_blob_buffer(keys, blob_type, blob_id, sealed, raw_length)
    return data if isinstance(data, bytes) else bytes(data)


def open_blob_buffer(
    keys: crypto.KeyBase,
    blob_type: BlobType,
    blob_id: bytes,
    sealed: bytes | bytearray | memoryview,
    raw_length: int | None = None,
) -> bytes | bytearray:
    """``open_blob`` without its last copy: a blob stored uncompressed comes back in the
    bytearray it was decrypted into (a compressed one as the bytes zstd made).  For a
    reader that only writes the plaintext out (restore): at its peak it holds the
    sealed blob and one plaintext, not the sealed blob and two plaintexts."""
    what = f"blob {blob_id.hex()}"
    plain = unpad_payload(keys.data.open(sealed, crypto.blob_ad(blob_type, blob_id), what), what)
    data = compress.take_payload(plain, MAX_BLOB if raw_length is None else raw_length, what)
    if raw_length is not None and len(data) != raw_length:
        raise IntegrityError(what=what, detail="plaintext length differs from the recorded one")
    if keys.blob_id(blob_type, data) != blob_id:
        raise IntegrityError(what=what, detail="content does not hash to its ID")
    return data


def encode_header(entries: Iterable[PackEntry]) -> bytes:
    """The header plaintext: one 41-byte record per blob, in pack order."""
    return b"".join(ENTRY.pack(e.type, e.length, e.raw_length, e.blob_id) for e in entries)


def header_room(count: int) -> int:
    """The plaintext length of a version 2 header of ``count`` entries: the count and
    room for the bucket of ``count`` (HEADER_BUCKET_MIN, else the next power of two)."""
    bucket = max(HEADER_BUCKET_MIN, 1 << max(0, count - 1).bit_length())
    return COUNT.size + ENTRY.size * bucket


def pack_size(version: int, blobs_end: int, count: int) -> int:
    """The size of a pack whose ``count`` blobs end at ``blobs_end``, as this cas
    writes it in a repository of ``version`` (from its index entries: §9.6)."""
    plain = header_room(count) if version >= 2 else ENTRY.size * count
    return blobs_end + crypto.SEAL_OVERHEAD + plain + TRAILER_SIZE


def encode_pack_tail(
    keys: crypto.KeyBase,
    entries: list[PackEntry],
    nonce: bytes | None = None,
    version: int = 1,
) -> bytes:
    """Sealed header followed by the trailer: append this after the blobs.  ``version``
    2: the count and padding of §9.6 (``CPK2``)."""
    plain = encode_header(entries)
    magic = TRAILER_MAGIC
    if version >= 2:
        room = header_room(len(entries))
        plain = COUNT.pack(len(entries)) + plain
        plain += bytes(room - len(plain))
        magic = TRAILER_MAGIC_V2
    sealed = bytes(keys.index.seal(plain, PACK_AD, nonce))
    return sealed + struct.pack("<I", len(sealed)) + magic


def header_length(trailer: bytes, pack_size: int) -> int:
    """Length of the sealed header from the 8-byte trailer, checked against the pack size."""
    if len(trailer) != TRAILER_SIZE or trailer[4:] not in (TRAILER_MAGIC, TRAILER_MAGIC_V2):
        raise FormatError(what="pack", detail="bad trailer (not a cas pack or truncated)")
    n: int = struct.unpack("<I", trailer[:4])[0]
    if n < crypto.SEAL_OVERHEAD or n > MAX_HEADER or n + TRAILER_SIZE > pack_size:
        raise FormatError(
            what="pack", detail=f"header length {n} impossible for a {pack_size}-byte pack"
        )
    return n


def decode_header(
    keys: crypto.KeyBase, sealed_header: bytes, pack_size: int, version: int = 1
) -> list[PackEntry]:
    """Open the sealed header and compute each blob's offset; checks the blobs tile the
    pack.  ``version``: 2 for a ``CPK2`` trailer (count first, zero padding after)."""
    if sealed_header[:1] != bytes((crypto.SCHEME_XCHACHA,)):
        # The trailer's length is authenticated only through the header itself: a
        # wrong length lands inside blob data, which is damage, not a newer format.
        raise FormatError(what="pack header", detail="header length in the trailer is wrong")
    plain = keys.index.open(sealed_header, PACK_AD, "pack header")
    if version >= 2:
        plain = _strip_padding(plain)
    if len(plain) % ENTRY.size:
        raise FormatError(what="pack header", detail="length is not a whole number of entries")
    entries, offset = [], 0
    types = BLOB_TYPES
    for t, length, raw, bid in ENTRY.iter_unpack(plain):
        btype = types.get(t)  # not BlobType(t): an enum call per blob cost more than the rest
        if btype is None:
            raise FormatError(what="pack header", detail=f"unknown blob type {t}")
        if length < crypto.SEAL_OVERHEAD + 1:
            raise FormatError(what="pack header", detail="blob shorter than its seal")
        entries.append(PackEntry(bid, btype, offset, length, raw))
        offset += length
    if offset + len(sealed_header) + TRAILER_SIZE != pack_size:
        raise FormatError(
            what="pack header", detail="blobs and header do not fill the pack exactly"
        )
    return entries


def _strip_padding(plain: bytes | bytearray) -> bytes | bytearray:
    """The entries of a version 2 header plaintext: count, entries, zeros (§9.6)."""
    if len(plain) < COUNT.size:
        raise FormatError(what="pack header", detail="shorter than its entry count")
    (count,) = COUNT.unpack_from(plain)
    end = COUNT.size + count * ENTRY.size
    if end > len(plain):
        raise FormatError(what="pack header", detail="entry count larger than the header")
    if any(memoryview(plain)[end:]):
        raise FormatError(what="pack header", detail="padding is not zero")
    return plain[COUNT.size : end]


def trailer_version(trailer: bytes) -> int:
    """2 for a ``CPK2`` trailer, else 1 (``header_length`` has checked the magic)."""
    return 2 if trailer[4:] == TRAILER_MAGIC_V2 else 1


def parse_pack(keys: crypto.KeyBase, pack: bytes | bytearray) -> list[PackEntry]:
    """Header entries of a whole pack held in memory (either version)."""
    trailer = bytes(pack[-TRAILER_SIZE:])
    n = header_length(trailer, len(pack))
    return decode_header(
        keys,
        bytes(pack[-TRAILER_SIZE - n : -TRAILER_SIZE]),
        len(pack),
        trailer_version(trailer),
    )
