"""Keyed content-defined chunking over fastcdc's compiled chunker (spec/format.md §7).

fastcdc's gear table is public and fixed, so unkeyed cut points would let the
storage provider recognise known files from their chunk sizes.  cas applies
a secret byte permutation (derived from the chunker key) to the input before
the cut-point search and cuts the original bytes at the positions found:
equivalent to a secret gear table, and ``bytes.translate`` costs well under
a nanosecond per byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import CasError

try:
    from fastcdc.fastcdc_cy import fastcdc_cy as _fastcdc
except ImportError as e:  # pragma: no cover - depends on the installation
    raise CasError(
        "fastcdc's compiled chunker (fastcdc.fastcdc_cy) is not importable; "
        "the pure-Python fallback is far too slow: reinstall fastcdc with a C compiler"
    ) from e


@dataclass(frozen=True)
class ChunkerParams:
    """Minimum, average and maximum chunk sizes in bytes (recorded in the config)."""

    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024

    def validate(self) -> None:
        """Raise CasError unless fastcdc accepts the sizes and min <= avg <= max."""
        if not (
            64 <= self.min_size <= self.avg_size <= self.max_size <= (1 << 30)
            and self.min_size <= (64 << 20)
            and 256 <= self.avg_size <= (256 << 20)
            and self.max_size >= 1024
        ):
            raise CasError(f"invalid chunker parameters {self}")


class Chunker:
    """Splits byte streams at keyed content-defined boundaries."""

    def __init__(self, permutation: bytes, params: ChunkerParams, buffer_size: int = 0) -> None:
        params.validate()
        if sorted(permutation) != list(range(256)):
            raise CasError("chunker permutation is not a permutation of 0..255")
        self.params = params
        self._perm = permutation
        # Large enough that re-scanning the carried tail (< max_size) is cheap.
        self.buffer_size = max(buffer_size, 2 * params.max_size)

    def cut_points(self, data: bytes) -> list[int]:
        """End offsets of the chunks of ``data`` taken as a whole stream."""
        ends, pos = [], 0
        for chunk in self.iter_chunks(_reader(data)):
            pos += len(chunk)
            ends.append(pos)
        return ends

    def iter_chunks(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        """Yield the chunks of the stream that ``read(n)`` returns (b"" at the end).

        A cut is final once ``max_size`` bytes after the chunk's start are in
        the buffer (fastcdc never looks further), so only a tail shorter than
        that is carried into the next round, together with its permuted copy.
        """
        p = self.params
        buf = b""
        pbuf = b""
        eof = False
        while True:
            if not eof:
                have = len(buf)
                new = []
                while have < self.buffer_size:
                    data = read(self.buffer_size - have)
                    if not data:
                        eof = True
                        break
                    new.append(data)
                    have += len(data)
                fresh = new[0] if len(new) == 1 else b"".join(new)
                buf = buf + fresh if buf else fresh
                if eof and len(buf) <= p.min_size:
                    # fastcdc never cuts before min_size: what is left is one chunk.
                    # Most files of a source tree end here, without a search.
                    if buf:
                        yield buf
                    return
                pbuf = pbuf + fresh.translate(self._perm) if pbuf else fresh.translate(self._perm)
            if not buf:
                return
            pos = 0
            for c in _fastcdc(pbuf, p.min_size, p.avg_size, p.max_size):
                if not eof and len(buf) - c.offset < p.max_size:
                    break
                end = c.offset + c.length
                yield buf[c.offset : end]
                pos = end
            if eof and pos == len(buf):
                return
            buf = buf[pos:]
            pbuf = pbuf[pos:]


def _reader(data: bytes) -> Callable[[int], bytes]:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + n]
        pos += len(out)
        return out

    return read
