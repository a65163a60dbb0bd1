"""Keyed content-defined chunking (spec/format.md §7): the streaming, and two cut searches.

``window-aes128`` (what ``init`` uses, §7.6): the cut after a position is decided
by AES-128 under a secret key over the 16 bytes before it (the inverse cipher,
XORed with the 16 bytes before those), a pseudo-random function of the content,
so chunk lengths seen by the storage provider say nothing about the key (§7.5).
``fastcdc-2016-permuted`` (older repositories, §7.3): fastcdc's compiled chunker
over a secretly permuted copy of the input, which a chosen file recovers byte
value by byte value (§7.5); still read and written for repositories that have it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cas import crypto
from cas.errors import CasError


def _load_fastcdc() -> Callable[..., Iterator[Any]]:
    """fastcdc's compiled chunker, imported by the first ``Chunker`` (only repositories
    of ``fastcdc-2016-permuted`` have one): the package imports click and hashlib with
    it, about 7.6 MiB of resident memory in each process that chunks, and a backup
    worker of a ``window-aes128`` repository needs none of it."""
    try:
        from fastcdc.fastcdc_cy import fastcdc_cy
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise CasError(
            "fastcdc's compiled chunker (fastcdc.fastcdc_cy) is not importable; "
            "the pure-Python fallback is far too slow: reinstall fastcdc with a C compiler"
        ) from e
    return fastcdc_cy  # type: ignore[no-any-return]


# First window of bytes permuted after min_size; it doubles while no cut is found.
WINDOW = 256 * 1024
# Chunk lengths the window chunker tests per round of 16 AES passes.
AES_WINDOW = 64 * 1024


def _load_accelerator() -> Callable[[bytearray, int, int, int, int], int] | None:
    """The window chunker's scan in C (``cas/chunking/_scan.c``, built when a compiler
    was there at install time), or None: the pure-Python scan, same cut points.

    ``CAS_NO_ACCEL=1`` (read once, here) disables it: a test and diagnostic switch.
    """
    if os.environ.get("CAS_NO_ACCEL", "") not in ("", "0"):
        return None
    try:
        from cas.chunking._scan import first_below
    except ImportError:
        return None
    return first_below


# first_below(buf, start, n, stride, threshold): the index of the first whole block of
# ``stride`` bytes in buf[start:n] whose first four bytes, big-endian, are below
# ``threshold``, or -1; None without the accelerator
FIRST_BELOW = _load_accelerator()

PERMUTED = "fastcdc-2016-permuted"
WINDOW_AES = "window-aes128"
ALGORITHMS = (PERMUTED, WINDOW_AES)


# What the search reads: a stream's bytes in a bytes object, a bytearray, or an anonymous
# mapping (the buffer of a long stream read with readinto: pages only where read).
Buffer = bytes | bytearray | mmap.mmap

# (buffer, chunk start, bytes there from it, stream ended) -> a chunk length, 0 (search),
# or -n: ask again once n bytes from the start are there (or the stream ended)
Guess = Callable[[Buffer, int, int, bool], int]

# The kept buffer of streams read with ``readinto``: a stream that does not end in it (a
# file over 1 MiB) continues in a mapping made for it and unmapped at its end, of
# ``MID_BUFFER`` bytes, and of ``into_size`` (``max_size`` and a refill) only around a
# chunk over 7/8 of that; so a small file touches 1 MiB, a large one mostly 4 MiB.
SMALL_BUFFER = 1 << 20
MID_BUFFER = 4 << 20
# A stream that moved to the largest buffer for a long chunk goes back to the
# ``MID_BUFFER`` one after this many chunks in a row no longer than half of it (a run of
# zeros, all chunks of max_size, stays: no mapping per chunk).
SHORT_RUN = 8


@dataclass(frozen=True)
class ChunkerParams:
    """Algorithm and minimum, average and maximum chunk sizes (recorded in the config)."""

    min_size: int = 512 * 1024
    avg_size: int = 1024 * 1024
    max_size: int = 8 * 1024 * 1024
    algorithm: str = WINDOW_AES

    def validate(self) -> None:
        """Raise CasError unless the algorithm is known, fastcdc accepts the sizes
        and min <= avg <= max."""
        if not (
            self.algorithm in ALGORITHMS
            and 64 <= self.min_size <= self.avg_size <= self.max_size <= (1 << 30)
            and self.min_size <= (64 << 20)
            and 256 <= self.avg_size <= (256 << 20)
            and self.max_size >= 1024
        ):
            raise CasError(f"invalid chunker parameters {self}")


def make_chunker(key: crypto.KeyBase, params: ChunkerParams) -> StreamChunker:
    """The chunker of ``params.algorithm`` keyed with ``key``'s chunker key."""
    if params.algorithm == PERMUTED:
        return Chunker(key.chunker_permutation(), params)
    return WindowChunker(key.chunker_window_key(), params)


class StreamChunker(ABC):
    """Splits byte streams at keyed content-defined boundaries; ``_cut`` finds one."""

    def __init__(self, params: ChunkerParams, buffer_size: int = 0) -> None:
        params.validate()
        self.params = params
        # Large enough that re-scanning the carried tail (< max_size) is cheap.
        self.buffer_size = max(buffer_size, 2 * params.max_size)
        # The largest buffer of streams read with ``readinto``: a chunk in hand (under
        # max_size when more must be read) and room to read into after it (an eighth
        # of max_size, at least 4 KiB); that path searches what is there, and never
        # carries max_size bytes for their own sake.
        self.into_size = min(self.buffer_size, params.max_size + max(params.max_size // 8, 4096))
        # Scratch buffers for the search, kept between streams (a fresh
        # 8.5 MiB buffer per file would cost more than chunking a small file).
        self._scratch: list[bytearray] = []
        # The stream buffer of readers with ``readinto`` (iter_chunks), likewise.
        self._buffers: list[bytearray] = []

    @abstractmethod
    def _new_scratch(self) -> bytearray: ...

    @abstractmethod
    def _cut(
        self,
        buf: Buffer,
        start: int,
        limit: int,
        scratch: bytearray,
        tested: int = 0,
        final: bool = True,
    ) -> int:
        """Length of the chunk at ``start``: the first cut at a length up to ``limit``
        (``limit`` bytes are in ``buf``); lengths up to ``tested`` were searched
        before and do not cut.  Without a cut, ``limit`` if ``final`` (``max_size``
        bytes in view, or the stream ends after them), else 0: more bytes decide."""

    def cut_points(self, data: bytes) -> list[int]:
        """End offsets of the chunks of ``data`` taken as a whole stream."""
        ends, pos = [], 0
        for chunk in self.iter_chunks(_BytesSource(data)):
            pos += len(chunk)
            ends.append(pos)
        return ends

    def iter_chunks(
        self, read: Callable[[int], bytes], guess: Guess | None = None
    ) -> Iterator[bytes]:
        """Yield the chunks of the stream that ``read(n)`` returns (b"" at the end).

        ``guess(buf, start, left, eof)``, if given, is asked first at each chunk
        start (``left`` bytes from ``start`` are in ``buf``, at least one unless
        ``eof``; ``buf`` may hold more bytes after them, not of this stream): a
        length it returns is taken as the chunk without a search, 0 searches as
        usual, ``-n`` asks again once ``n`` bytes are there or the stream ended
        (searches when no more can be read; cas/chunking/resync.py guesses only
        lengths the search would give, spec §7.7).

        Neither search looks at the first ``min_size`` bytes of a chunk (but
        for the window before the first possible cut) nor past its cut: about
        half of the input at the default sizes.

        A ``read`` that also has ``readinto(view) -> int`` (bytes put at the
        front of ``view``, 0 at the end: cas/backup/archiver.py SourceReader,
        the chunk helper's file reader) is read into a 1 MiB buffer kept by the
        chunker between streams, a long stream into mappings of 4 MiB (9 MiB
        around a chunk over 3.5 MiB at the default sizes, ``_chunks_into``): no
        bytes object per read, no copy into the buffer; the chunk in hand is
        moved to its front when the search needs more.  Each chunk is then
        copied out once, as bytes the caller may keep.
        """
        readinto = getattr(read, "readinto", None)
        if readinto is not None:
            return self._chunks_into(readinto, guess)
        return self._chunks_read(read, guess)

    def _chunks_into(
        self, readinto: Callable[[memoryview], int], guess: Guess | None
    ) -> Iterator[bytes]:
        """``iter_chunks`` over ``readinto``, in the chunker's reusable buffer.

        The search runs over the bytes there are, not ``max_size`` of them: a cut
        it finds depends only on the bytes before it (§7.4), so it is final; a
        search that reaches the end of the bytes in view without a cut (and before
        ``max_size``, the stream not ended) goes on from there once more bytes are
        read.  Bytes are read when the search or the guess needs them, into the
        free end of the buffer after the chunk in hand is moved to its front; a
        stream whose chunk in hand fills more than half of the kept 1 MiB buffer
        continues in a mapping of ``MID_BUFFER``, and one whose chunk in hand
        fills 7/8 of that in one of ``into_size`` (``max_size`` and a refill),
        left again (unmapped) after ``SHORT_RUN`` shorter chunks.  So a large
        file touches 4 MiB, and 9 MiB (default sizes) only around a chunk over
        3.5 MiB (about one in 400 at the default sizes).
        """
        p = self.params
        small = (
            self._buffers.pop() if self._buffers else bytearray(min(self.buffer_size, SMALL_BUFFER))
        )
        sizes = [n for n in (MID_BUFFER, self.into_size) if n > len(small)]
        if self.into_size <= MID_BUFFER:
            sizes = sizes[-1:]
        buf: bytearray | mmap.mmap = small
        large: mmap.mmap | None = None  # the current mapping, when the stream outgrew ``small``
        view = memoryview(buf)
        scratch: bytearray | None = None
        start = end = 0
        eof = False

        kept: mmap.mmap | None = None  # the mapping left for a larger one, until back
        short = 0  # chunks in a row that fit in half of ``kept`` (back after SHORT_RUN)

        def into(target: bytearray | mmap.mmap) -> None:
            """The chunk in hand (``start:end``) to the front of ``target``, now the buffer."""
            nonlocal buf, view, start, end
            left = end - start
            target[:left] = view[start:end]
            view.release()
            buf, view = target, memoryview(target)
            end, start = left, 0

        def more(need: int) -> bool:
            """Read more of the stream (``need`` bytes from ``start`` wanted in view): the
            chunk in hand to the front, into a larger buffer, or back into the smaller
            one it left; whether any came."""
            nonlocal large, kept, eof, end, start
            left = end - start
            # out of the 1 MiB buffer at half of it full; out of the next at 7/8, so that
            # the largest is for the rare chunk over 3.5 MiB (memmoves of up to 3.5 MiB
            # per 0.5 MiB read until then)
            full = len(buf) // 2 if buf is small else len(buf) - len(buf) // 8
            if sizes and (need > len(buf) or left > full):
                size = next((n for n in sizes if n >= need), sizes[-1])
                del sizes[: sizes.index(size) + 1]
                old = large
                large = mmap.mmap(-1, size)
                into(large)
                if old is not None:
                    kept = old  # back into it after the long chunk
            elif (
                kept is not None
                and large is not None
                and short >= SHORT_RUN
                and max(left, need) <= len(kept) // 2
            ):
                top, large, kept = large, kept, None
                into(large)
                sizes.insert(0, len(top))
                with contextlib.suppress(BufferError):  # else unmapped when collected
                    top.close()  # its pages go: the long chunk was a moment
            elif start:  # the chunk in hand, to the front (memoryview: memmove)
                view[:left] = view[start:end]
                end, start = left, 0
            before = end
            end, eof = _fill_into(readinto, view, end)
            return end > before

        try:
            end, eof = _fill_into(readinto, view, 0)
            tested = 0  # lengths from ``start`` up to this one searched without a cut
            while True:
                left = end - start
                if guess is not None and not tested and left:
                    n = guess(buf, start, left, eof)
                    if n < 0:  # the guess needs -n bytes in view
                        if not eof and -n > left and more(-n):
                            continue
                        n = 0
                    if n:
                        yield bytes(view[start : start + n])
                        start += n
                        short = short + 1 if n <= MID_BUFFER // 2 else 0
                        continue
                if eof and left <= p.min_size:
                    if left:
                        yield bytes(view[start:end])
                    return
                if scratch is None:
                    scratch = self._scratch.pop() if self._scratch else self._new_scratch()
                limit = min(left, p.max_size)
                final = eof or limit == p.max_size
                # no cut below min_size: a view that short decides nothing
                cut = (
                    self._cut(buf, start, limit, scratch, tested, final)
                    if final or limit > p.min_size
                    else 0
                )
                if cut:
                    yield bytes(view[start : start + cut])
                    start += cut
                    tested = 0
                    short = short + 1 if cut <= MID_BUFFER // 2 else 0
                    continue
                tested = limit  # no cut up to the end of the view: read on
                more(left + 1)  # or the stream ended there: the next search is final
        finally:
            view.release()
            for mapping in (large, kept):
                if mapping is not None:
                    with contextlib.suppress(BufferError):  # else unmapped when collected
                        mapping.close()
            # One of each kept, at most (as below): an abandoned stream gives its
            # buffer back only when collected, the next one took a fresh buffer.
            if not self._buffers:
                self._buffers.append(small)
            if scratch is not None and not self._scratch:
                self._scratch.append(scratch)

    def _chunks_read(self, read: Callable[[int], bytes], guess: Guess | None) -> Iterator[bytes]:
        """``iter_chunks`` over ``read(n) -> bytes`` (stdin, tests, wrapped readers).

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
                # max_size bytes are there unless eof: a guess that asks for more
                # (-n) is not the chunk
                if guess is not None and left and (n := guess(buf, start, left, eof)) > 0:
                    yield _piece(buf, start, n)
                    start += n
                    continue
                if eof and left <= p.min_size:
                    # No cut comes before min_size: what is left is one chunk.
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


class Chunker(StreamChunker):
    """``fastcdc-2016-permuted`` (§7.3): fastcdc over the input under a secret byte permutation.

    fastcdc never looks at the first ``min_size`` bytes of a chunk nor past its
    cut, so only the bytes in between are permuted, window by window, into a
    scratch buffer behind the ``min_size`` bytes fastcdc skips.
    """

    def __init__(self, permutation: bytes, params: ChunkerParams, buffer_size: int = 0) -> None:
        super().__init__(params, buffer_size)
        if sorted(permutation) != list(range(256)):
            raise CasError("chunker permutation is not a permutation of 0..255")
        self._perm = permutation
        self._fastcdc = _load_fastcdc()

    @property
    def permutation(self) -> bytes:
        """The secret byte permutation this chunker applies (spec §7.1)."""
        return self._perm

    def _new_scratch(self) -> bytearray:
        return bytearray(self.params.min_size + self.params.max_size)

    def _cut(
        self,
        buf: Buffer,
        start: int,
        limit: int,
        scratch: bytearray,
        tested: int = 0,
        final: bool = True,
    ) -> int:
        # ``tested`` is not used: fastcdc searches from ``min_size`` each time.
        p = self.params
        done = p.min_size  # scratch[min_size:done] holds the permuted bytes
        step = WINDOW
        view = memoryview(scratch)
        while True:
            end = min(done + step, limit)
            scratch[done:end] = buf[start + done : start + end].translate(self._perm)
            c = next(self._fastcdc(view[:end], p.min_size, p.avg_size, p.max_size))
            if c.length < end:
                return int(c.length)
            if end == limit:  # fastcdc ends a chunk at the end of what it is given
                return int(c.length) if final else 0
            done, step = end, step * 2


def window_threshold(params: ChunkerParams) -> int:
    """A cut where the AES output's first four bytes, big-endian, are below this
    (§7.6): probability 1 / (avg - min) at each length from ``min``, so the mean
    chunk is about ``avg``."""
    return (1 << 32) // max(params.avg_size - params.min_size, 1)


class WindowChunker(StreamChunker):
    """``window-aes128`` (§7.6): a cut after the first length ``l >= min`` whose 16
    bytes before it decrypt (AES-128, secret key), XOR the 16 bytes before them,
    to a block whose first four bytes, big-endian, are below ``2^32 // (avg - min)``.

    Every position gets its own AES block: 16 passes of CBC decryption over the
    region, each shifted by one byte, decrypt every 16-byte window once (and
    XOR the block before it, as CBC does); a scan of the output blocks finds the
    first below the threshold: in C (``FIRST_BELOW``, when it was built and
    ``accelerate``), or in Python (``_first_cut``), with the same results.
    """

    def __init__(
        self,
        aes_key: bytes,
        params: ChunkerParams,
        buffer_size: int = 0,
        accelerate: bool = True,
        prefer_libcrypto: bool = True,
    ) -> None:
        super().__init__(params, buffer_size)
        # Imported here: a command that reads and never chunks does without it.
        from cas.chunking.cbc import cbc_decryptor

        # CBC decryption: block i of the output is AES-decrypt(block i) XOR block i - 1
        # of the input, one PRF value per window (OpenSSL decrypts CBC in parallel);
        # the first output block of each call depends on the previous call: unused.
        # The system libcrypto's (the OpenSSL hashlib maps), else cryptography's.
        self._aes = cbc_decryptor(aes_key, prefer_libcrypto)
        self._threshold = window_threshold(params)
        # the largest first (and, after a zero first, second) byte a cut can have
        self._top = (self._threshold - 1) >> 24
        self._second = min((self._threshold - 1) >> 16, 255)
        self._first_byte = bytes(int(v > self._top) for v in range(256))  # 0: may cut
        self._first_below = FIRST_BELOW if accelerate else None  # None: _first_cut

    @property
    def accelerated(self) -> bool:
        """Whether the scan runs in C (``cas/chunking/_scan.c``) rather than in Python."""
        return self._first_below is not None

    def _new_scratch(self) -> bytearray:
        return bytearray(AES_WINDOW + 48)

    def _first_cut(self, out: bytearray, n: int) -> int:
        """Index of the first 16-byte block of ``out[16:n]`` that makes a cut, or -1
        (the pure-Python scan, when the C one is not there).

        The first byte of each block is gathered (a strided slice, in C) and
        searched for the values the threshold allows there; only those rare
        blocks are checked whole.
        """
        threshold = self._threshold
        if threshold >> 32:
            return 0 if n > 16 else -1  # avg - min <= 1: every length cuts
        lane = out[16:n:16]
        top, second = self._top, self._second
        if top:
            lane = lane.translate(self._first_byte)
        find = lane.find
        i = find(0)
        while i >= 0:
            at = (i + 1) << 4
            if (top or out[at + 1] <= second) and _u32be(out, at) < threshold:
                return i
            i = find(0, i + 1)
        return -1

    def _cut(
        self,
        buf: Buffer,
        start: int,
        limit: int,
        scratch: bytearray,
        tested: int = 0,
        final: bool = True,
    ) -> int:
        lo = max(self.params.min_size, tested + 1)  # the shortest chunk length still to test
        first_below, threshold = self._first_below, self._threshold
        with self._aes.bound(buf, scratch) as decrypt:
            while lo <= limit:
                best = hi = min(lo + AES_WINDOW, limit + 1)  # lengths lo .. hi - 1
                for shift in range(16):
                    first = lo + shift  # lengths first, first + 16, ... below best
                    if first >= best:
                        break
                    blocks = (best - first + 15) >> 4
                    a = start + first - 32  # the window before the first, then the first
                    n = decrypt(a, 16 * blocks + 16)
                    if first_below is None:
                        i = self._first_cut(scratch, n)
                    else:  # the same search in C: blocks of out[16:n] below the threshold
                        i = first_below(scratch, 16, n, 16, threshold)
                    if i >= 0:
                        best = min(best, first + 16 * i)
                if best < hi:
                    return best
                lo = hi
        return limit if final else 0


def _u32be(buf: bytearray, at: int) -> int:
    return int.from_bytes(buf[at : at + 4], "big")


def _piece(buf: bytes | bytearray, start: int, n: int) -> bytes:
    """``buf[start:start + n]`` as bytes: the whole of a bytes ``buf`` is not copied."""
    if isinstance(buf, bytes):
        return buf if start == 0 and n == len(buf) else buf[start : start + n]
    with memoryview(buf) as view, view[start : start + n] as part:
        return bytes(part)


def _fill_into(
    readinto: Callable[[memoryview], int], view: memoryview, end: int
) -> tuple[int, bool]:
    """Read into ``view`` from ``end`` until it is full; the new end, and whether
    the stream ended."""
    size = len(view)
    while end < size:
        with view[end:] as free:
            got = readinto(free)
        if not got:
            return end, True
        end += got
    return end, False


class _BytesSource:
    """``read(n)`` and ``readinto(view)`` over ``data`` (``cut_points``: the
    chunker's own buffer, as a file's backup reads it)."""

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        out = bytes(self._view[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def readinto(self, view: memoryview) -> int:
        n = min(len(view), len(self._view) - self._pos)
        view[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n
