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

from cas.errors import CasError

try:
    from fastcdc.fastcdc_cy import fastcdc_cy as _fastcdc
except ImportError as e:  # pragma: no cover - depends on the installation
    raise CasError(
        "fastcdc's compiled chunker (fastcdc.fastcdc_cy) is not importable; "
        "the pure-Python fallback is far too slow: reinstall fastcdc with a C compiler"
    ) from e


# First window of bytes permuted after min_size; it doubles while no cut is found.
WINDOW = 256 * 1024


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
        # Scratch buffers for permuted windows, kept between streams (a fresh
        # 8.5 MiB buffer per file would cost more than chunking a small file).
        self._scratch: list[bytearray] = []

    @property
    def permutation(self) -> bytes:
        """The secret byte permutation this chunker applies (spec §7.1)."""
        return self._perm

    def _new_scratch(self) -> bytearray:
        return bytearray(self.params.min_size + self.params.max_size)

    def cut_points(self, data: bytes) -> list[int]:
        """End offsets of the chunks of ``data`` taken as a whole stream."""
        ends, pos = [], 0
        for chunk in self.iter_chunks(_reader(data)):
            pos += len(chunk)
            ends.append(pos)
        return ends

    def iter_chunks(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        """Yield the chunks of the stream that ``read(n)`` returns (b"" at the end).

        fastcdc never looks at the first ``min_size`` bytes of a chunk nor past
        its cut, so only the bytes in between are permuted, window by window,
        into a scratch buffer behind ``min_size`` bytes fastcdc skips: about
        half of the input at the default sizes.

        A stream that fits in one buffer (almost every file) is read into one
        bytes object and cut from it.  A longer one continues in a bytearray:
        consumed bytes are dropped from its front and reads appended at its end,
        in place, so at most one buffer and one read are held (carrying the tail
        into a fresh buffer held the old buffer, the tail and the new one).
        """
        p = self.params
        first, eof = self._refill(read, b"")
        buf: bytes | bytearray = first
        start = 0
        scratch: bytearray | None = None
        try:
            while True:
                if not eof and len(buf) - start < p.max_size:
                    if isinstance(buf, bytes):
                        with memoryview(buf) as view:
                            buf = bytearray(view[start:])  # the tail; the buffer goes
                    else:
                        del buf[:start]  # bytearray: drops the front in place
                    start = 0
                    eof = self._fill(read, buf)
                left = len(buf) - start
                if eof and left <= p.min_size:
                    # fastcdc never cuts before min_size: what is left is one chunk.
                    # Most files of a source tree end here, without a search.
                    if left:
                        yield _piece(buf, start, left)
                    return
                if scratch is None:
                    scratch = self._scratch.pop() if self._scratch else self._new_scratch()
                cut = self._cut(buf, start, min(left, p.max_size), scratch)
                yield _piece(buf, start, cut)
                start += cut
        finally:
            # One kept, at most: a stream abandoned mid-way (a read error) is closed
            # only when collected, after the next stream made a scratch of its own.
            if scratch is not None and not self._scratch:
                self._scratch.append(scratch)

    def _refill(self, read: Callable[[int], bytes], tail: bytes) -> tuple[bytes, bool]:
        """``tail`` plus reads up to ``buffer_size`` bytes; and whether the stream ended."""
        parts = [tail] if tail else []
        have = len(tail)
        while have < self.buffer_size:
            data = read(self.buffer_size - have)
            if not data:
                return b"".join(parts), True
            parts.append(data)
            have += len(data)
        return (parts[0] if len(parts) == 1 else b"".join(parts)), False

    def _fill(self, read: Callable[[int], bytes], buf: bytearray) -> bool:
        """Append reads to ``buf`` up to ``buffer_size`` bytes; whether the stream ended."""
        while len(buf) < self.buffer_size:
            data = read(self.buffer_size - len(buf))
            if not data:
                return True
            buf += data
        return False

    def _cut(self, buf: bytes | bytearray, start: int, limit: int, scratch: bytearray) -> int:
        """Length of the chunk at ``start``: ``limit`` bytes are there (or the stream ends)."""
        p = self.params
        done = p.min_size  # scratch[min_size:done] holds the permuted bytes
        step = WINDOW
        view = memoryview(scratch)
        while True:
            end = min(done + step, limit)
            scratch[done:end] = buf[start + done : start + end].translate(self._perm)
            c = next(_fastcdc(view[:end], p.min_size, p.avg_size, p.max_size))
            if c.length < end or end == limit:
                return int(c.length)
            done, step = end, step * 2


def _piece(buf: bytes | bytearray, start: int, n: int) -> bytes:
    """``buf[start:start + n]`` as bytes: the whole of a bytes ``buf`` is not copied."""
    if isinstance(buf, bytes):
        return buf if start == 0 and n == len(buf) else buf[start : start + n]
    with memoryview(buf) as view, view[start : start + n] as part:
        return bytes(part)


def _reader(data: bytes) -> Callable[[int], bytes]:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + n]
        pos += len(out)
        return out

    return read
