"""The shared document helpers of cas/format/codec.py (spec/format.md §3.3): edges that
mutation testing (tools/mutation.py, docs/reliability.md §8.3) found unpinned."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import zstandard

from cas import crypto
from cas.errors import FormatError
from cas.format import codec, compress


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (12, "12"),
        (-(1 << 200), str(-(1 << 200))[:37] + "..."),  # a number of 62 characters: cut
        (True, "True"),
        ("a\nb\x1b[2J", repr("a\nb\x1b[2J")),  # text escaped: no raw newline or escape
        (b"\xff", "b'\\xff'"),
        ("x" * 38, repr("x" * 38)),  # 40 characters shown: kept whole
        ("x" * 39, repr("x" * 38)[:1] + "x" * 36 + "..."),  # 41: cut to 37 and "..."
    ],
    ids=["int", "long-int", "bool", "escapes", "bytes", "40", "41"],
)
def test_values_from_documents_are_shown_escaped_and_bounded(value: Any, text: str) -> None:
    """``shown``: integers as numbers, everything else as its ``repr``; at most 40
    characters, a longer text cut to its first 37 and "..."."""
    assert codec.shown(value) == text


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b"\x81\xa1v", b"\x01\x02"], ids=repr)
def test_bytes_that_are_not_one_msgpack_value_are_a_format_error(raw: bytes) -> None:
    """Empty, a reserved byte, a truncated array or map, data after the value: each a
    FormatError naming msgpack, never the decoder's own exception."""
    with pytest.raises(FormatError, match="msgpack"):
        codec.unpack(raw, "document")


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_an_id_field_is_exactly_32_bytes(size: int) -> None:
    assert codec.id_field({"id": b"\x01" * 32}, "id", "document") == b"\x01" * 32
    with pytest.raises(FormatError, match="'id' is not a 32-byte ID"):
        codec.id_field({"id": b"\x01" * size}, "id", "document")


@pytest.mark.parametrize(
    ("declared", "error"),
    [(1 << 30, "frame truncated"), ((1 << 30) + 1, "payload larger than allowed")],
    ids=["1-gib", "1-gib-and-1"],
)
def test_documents_are_bounded_at_1_gib_from_their_zstd_frame_header(
    declared: int, error: str
) -> None:
    """MAX_DOCUMENT: a sealed document whose zstd frame declares more than 2^30 bytes is
    refused as too large before anything is decompressed; one that declares 2^30 passes
    that bound (and is refused next because its frame holds no bytes)."""
    key = crypto.MasterKeys.generate().index_key
    # Frame header: 8-byte content size, a 1 KiB window (no single segment), then one
    # empty last block.
    frame = struct.pack("<IBBQ", 0xFD2FB528, 0xC0, 0x00, declared) + b"\x01\x00\x00"
    assert zstandard.get_frame_parameters(frame).content_size == declared
    sealed = crypto.as_sealer(key).seal(bytes([compress.ZSTD]) + frame, b"ad")
    with pytest.raises(FormatError, match=error):
        codec.open_document(key, b"ad", sealed, "document")
