"""Pack files under ``data/`` and the blobs inside them (spec/format.md §9).

    offset 0          sealed blob 0
                      sealed blob 1 ...
    H                 sealed header (index key, AD "cas.pack.v1")
    end - 8           u32 LE length of the sealed header
    end - 4           magic "CPK1"

A sealed blob is ``seal(data_key, flag | payload, AD = "cas.blob.v1" | type | id)``.
The header plaintext is a sequence of 41-byte entries, one per blob in
order: type (u8), stored length (u32 LE), raw length (u32 LE), blob ID (32).
Offsets are implicit: each blob starts where the previous one ended.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cas import crypto
from cas.crypto import BlobType
from cas.errors import FormatError, IntegrityError
from cas.format import compress

PACK_AD = b"cas.pack.v1"
TRAILER_MAGIC = b"CPK1"
TRAILER_SIZE = 8
ENTRY = struct.Struct("<BII32s")  # 41 bytes
MAX_BLOB = (1 << 32) - 1
MAX_HEADER = 1 << 28


@dataclass(frozen=True, slots=True)
class PackEntry:
    """Where one blob sits in a pack and how large it is."""

    blob_id: bytes
    type: BlobType
    offset: int
    length: int  # stored (sealed) bytes
    raw_length: int  # plaintext bytes after decompression


def seal_blob(
    keys: crypto.KeyBase,
    blob_type: BlobType,
    blob_id: bytes,
    plaintext: bytes | memoryview,
    level: int | None = compress.DEFAULT_LEVEL,
    nonce: bytes | None = None,
) -> bytearray:
    """Compress (when it pays) and seal one blob bound to its type and ID."""
    payload = compress.encode_payload(plaintext, level)
    return keys.data.seal(payload, crypto.blob_ad(blob_type, blob_id), nonce)


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
    what = f"blob {blob_id.hex()}"
    plain = keys.data.open(sealed, crypto.blob_ad(blob_type, blob_id), what)
    data = compress.decode_payload(plain, MAX_BLOB if raw_length is None else raw_length, what)
    if raw_length is not None and len(data) != raw_length:
        raise IntegrityError(what=what, detail="plaintext length differs from the recorded one")
    if keys.blob_id(blob_type, data) != blob_id:
        raise IntegrityError(what=what, detail="content does not hash to its ID")
    return data


def encode_header(entries: Iterable[PackEntry]) -> bytes:
    """The header plaintext: one 41-byte record per blob, in pack order."""
    return b"".join(ENTRY.pack(e.type, e.length, e.raw_length, e.blob_id) for e in entries)


def encode_pack_tail(
    keys: crypto.KeyBase, entries: list[PackEntry], nonce: bytes | None = None
) -> bytes:
    """Sealed header followed by the trailer: append this after the blobs."""
    sealed = bytes(keys.index.seal(encode_header(entries), PACK_AD, nonce))
    return sealed + struct.pack("<I", len(sealed)) + TRAILER_MAGIC


def header_length(trailer: bytes, pack_size: int) -> int:
    """Length of the sealed header from the 8-byte trailer, checked against the pack size."""
    if len(trailer) != TRAILER_SIZE or trailer[4:] != TRAILER_MAGIC:
        raise FormatError(what="pack", detail="bad trailer (not a cas pack or truncated)")
    n: int = struct.unpack("<I", trailer[:4])[0]
    if n < crypto.SEAL_OVERHEAD or n > MAX_HEADER or n + TRAILER_SIZE > pack_size:
        raise FormatError(
            what="pack", detail=f"header length {n} impossible for a {pack_size}-byte pack"
        )
    return n


def decode_header(keys: crypto.KeyBase, sealed_header: bytes, pack_size: int) -> list[PackEntry]:
    """Open the sealed header and compute each blob's offset; checks the blobs tile the pack."""
    if sealed_header[:1] != bytes((crypto.SCHEME_XCHACHA,)):
        # The trailer's length is authenticated only through the header itself: a
        # wrong length lands inside blob data, which is damage, not a newer format.
        raise FormatError(what="pack header", detail="header length in the trailer is wrong")
    plain = keys.index.open(sealed_header, PACK_AD, "pack header")
    if len(plain) % ENTRY.size:
        raise FormatError(what="pack header", detail="length is not a whole number of entries")
    entries, offset = [], 0
    for t, length, raw, bid in ENTRY.iter_unpack(plain):
        try:
            btype = BlobType(t)
        except ValueError:
            raise FormatError(what="pack header", detail=f"unknown blob type {t}") from None
        if length < crypto.SEAL_OVERHEAD + 1:
            raise FormatError(what="pack header", detail="blob shorter than its seal")
        entries.append(PackEntry(bid, btype, offset, length, raw))
        offset += length
    if offset + len(sealed_header) + TRAILER_SIZE != pack_size:
        raise FormatError(
            what="pack header", detail="blobs and header do not fill the pack exactly"
        )
    return entries


def parse_pack(keys: crypto.KeyBase, pack: bytes | bytearray) -> list[PackEntry]:
    """Header entries of a whole pack held in memory."""
    n = header_length(bytes(pack[-TRAILER_SIZE:]), len(pack))
    return decode_header(keys, bytes(pack[-TRAILER_SIZE - n : -TRAILER_SIZE]), len(pack))
