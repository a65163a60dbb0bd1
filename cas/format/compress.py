"""Compression of sealed payloads (spec/format.md §8).

Every sealed payload starts with one byte saying how the rest is stored:
0 for stored as is, 1 for a zstd frame.  Data that zstd cannot shrink is
stored as is, so incompressible content costs one byte and no CPU on read.
"""

from __future__ import annotations

import threading

import zstandard

from cas.errors import FormatError

STORED = 0
ZSTD = 1
DEFAULT_LEVEL = 3
_STORED_FLAG = bytes((STORED,))
_ZSTD_FLAG = bytes((ZSTD,))

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # zstandard's (de)compressor objects are not thread-safe; keep one per thread.
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


# Large blobs are tried on a sample first (the idea of borg's "auto" mode):
# zstd at level 3 spends as long on a MiB of random or already compressed
# data as on text, only to give up; level 1 on four 16 KiB slices tells the
# two apart for a few percent of that.  A blob none of whose slices shrinks
# is stored as is.
PROBE_MIN = 256 * 1024
PROBE_SLICES = 4
PROBE_SLICE = 16 * 1024
PROBE_LEVEL = 1
PROBE_RATIO = 0.97


def _incompressible(data: bytes | bytearray | memoryview) -> bool:
    step = len(data) // PROBE_SLICES
    c = _compressor(PROBE_LEVEL)
    view = memoryview(data)
    for i in range(PROBE_SLICES):
        part = view[i * step : i * step + PROBE_SLICE]
        if len(c.compress(part)) < PROBE_RATIO * len(part):
            return False
    return True


def encode_parts(
    data: bytes | bytearray | memoryview, level: int | None = DEFAULT_LEVEL
) -> tuple[int, bytes | bytearray | memoryview]:
    """``encode_payload`` as its flag and the body after it, not joined: the zstd frame,
    or ``data`` itself (no copy) when compression does not pay (or level None).  A
    sealer lays them out in its own buffer (``seal_blob``), so a blob is not copied
    into a joined payload first."""
    if (
        level is not None
        and len(data) > 64
        and (len(data) < PROBE_MIN or not _incompressible(data))
    ):
        packed = _compressor(level).compress(data)
        if len(packed) < len(data):
            return ZSTD, packed
    return STORED, data


def encode_payload(data: bytes | memoryview, level: int | None = DEFAULT_LEVEL) -> bytes:
    """Flag byte + zstd frame, or flag byte + data when compression does not pay (or level None)."""
    flag, body = encode_parts(data, level)
    return b"".join((_ZSTD_FLAG if flag == ZSTD else _STORED_FLAG, body))


def take_payload(payload: bytes | bytearray, max_size: int, what: str) -> bytes | bytearray:
    """``decode_payload`` of a buffer the caller gives up (what ``open_sealed`` returned):
    a stored payload in a bytearray loses its flag byte in place and comes back as the
    same buffer, where a slice would copy the whole blob beside it and the sealed bytes."""
    if isinstance(payload, bytearray) and payload[:1] == _STORED_FLAG:
        if len(payload) - 1 > max_size:
            raise FormatError(what=what, detail="payload larger than allowed")
        del payload[:1]  # a bytearray moves its start: no copy
        return payload
    return decode_payload(payload, max_size, what)


def decode_payload(payload: bytes | bytearray, max_size: int, what: str) -> bytes | bytearray:
    """Inverse of ``encode_payload``; refuses output over ``max_size`` (decompression bombs)."""
    if not payload:
        raise FormatError(what=what, detail="empty payload")
    flag = payload[0]
    if flag == STORED:
        if len(payload) - 1 > max_size:
            raise FormatError(what=what, detail="payload larger than allowed")
        return payload[1:]
    if flag == ZSTD:
        # the frame without a copy of it (up to a whole chunk) beside the payload
        frame = memoryview(payload)[1:]
        try:
            params = zstandard.get_frame_parameters(frame)
            if params.content_size > max_size:  # also refuses an unknown content size
                raise FormatError(what=what, detail="payload larger than allowed")
            d = _decompressor()
            if params.content_size > 0:  # (zstandard answers b"" for 0 without looking)
                try:
                    # In one call, into one buffer of the content size: zstd decodes the
                    # frame straight into it, where a stream object decodes through its
                    # window buffer (2.5 MiB kept in the context) into 128 KiB pieces
                    # joined at the end (ten times the CPU on a 5 MiB blob).  A
                    # truncated frame or bytes after it are refused.
                    whole = d.decompress(frame, allow_extra_data=False)
                    if len(whole) == params.content_size:
                        return bytes(whole)
                except zstandard.ZstdError:
                    pass  # the stream below says why
            stream = d.decompressobj()
            out: bytes = stream.decompress(frame)
            if not stream.eof or stream.unused_data or len(out) != params.content_size:
                raise FormatError(what=what, detail="zstd frame truncated or followed by junk")
            return out
        except zstandard.ZstdError as e:
            raise FormatError(what=what, detail=f"zstd: {e}") from None
    raise FormatError(what=what, detail=f"unknown compression flag {flag}")
