"""The readinto path searches the bytes in view, not max_size of them (cas/chunking/chunker.py).

A search that reaches the end of the view without a cut, before ``max_size`` and
with the stream not ended, goes on after more is read; the buffer grows (1 MiB,
``MID_BUFFER``, ``into_size``) only when the chunk in hand fills half of it.  The
cut points must be exactly those of the bytes path (which always has ``max_size``
bytes in view, as spec §7.4 describes), for chunks that straddle the view's end,
chunks of exactly ``max_size`` (runs of zeros never cut), streams that end mid-search,
and the parent's chunks taken by the resync guess from partial views.
"""

from __future__ import annotations

import functools
import mmap
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.chunking import chunker as chunker_mod
from cas.chunking.chunker import (
    PERMUTED,
    WINDOW_AES,
    Chunker,
    ChunkerParams,
    StreamChunker,
    WindowChunker,
)
from cas.chunking.resync import ParentChunks, Resync
from cas.crypto import BlobType
from cas.crypto.primitives import blob_id
from tests.test_chunker import ShortReads

PARAMS = ChunkerParams(4096, 16384, 65536)
KEY = bytes(range(16))


def _make(algorithm: str, params: ChunkerParams = PARAMS) -> StreamChunker:
    if algorithm == WINDOW_AES:
        return WindowChunker(KEY, params)
    return Chunker(bytes(random.Random(5).sample(range(256), 256)), params)


def _bytes_path(chunker: StreamChunker, data: bytes) -> list[int]:
    """Chunk lengths from the bytes path (``read`` only: max_size bytes in view)."""
    return [len(c) for c in chunker.iter_chunks(ShortReads(data, random.Random(1), 1 << 20, False))]


def _into_path(chunker: StreamChunker, data: bytes, most: int, seed: int) -> list[bytes]:
    return list(chunker.iter_chunks(ShortReads(data, random.Random(seed), most, True)))


class _Searches:
    """Records the ``tested`` argument of each call of the chunker's search."""

    def __init__(self, chunker: StreamChunker) -> None:
        self.tested: list[int] = []
        search = chunker._cut

        def recorded(*args: Any) -> int:
            self.tested.append(args[4] if len(args) > 4 else 0)
            return search(*args)

        chunker._cut = recorded  # type: ignore[method-assign]


def _data(rng: random.Random, size: int) -> bytes:
    """Random bytes with runs of zeros (a run of max_size zeros is a chunk of max_size)."""
    out = bytearray()
    while len(out) < size:
        n = rng.randrange(1, 3 * PARAMS.max_size)
        out += bytes(n) if rng.random() < 0.3 else rng.randbytes(n)
    return bytes(out[:size])


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers of 20,000 and 50,000 bytes before ``into_size`` (73,728 at PARAMS), so
    the test's chunk sizes move, grow and refill them all."""
    monkeypatch.setattr(chunker_mod, "SMALL_BUFFER", 20_000)
    monkeypatch.setattr(chunker_mod, "MID_BUFFER", 50_000)


@pytest.mark.usefixtures("small_buffers")
@pytest.mark.parametrize("algorithm", [WINDOW_AES, PERMUTED])
def test_searches_that_straddle_the_view_cut_where_the_bytes_path_cuts(algorithm: str) -> None:
    chunker = _make(algorithm)
    assert chunker.into_size == PARAMS.max_size + 8192
    searches = _Searches(chunker)
    rng = random.Random(11)
    for size in (0, 1, 4095, 4096, 4097, 20_000, 20_001, 65_536, 65_537, 300_000, 1_000_003):
        data = _data(rng, size)
        want = _bytes_path(chunker, data)
        for most in (97, 5000, 1 << 20):
            got = _into_path(chunker, data, most, size + most)
            assert [len(c) for c in got] == want, (size, most)
            assert b"".join(got) == data
    lengths = _bytes_path(chunker, _data(random.Random(11), 1_000_003))
    assert PARAMS.max_size in lengths  # chunks of exactly max_size were among them
    assert any(t > 0 for t in searches.tested)  # and searches resumed after a refill


@pytest.mark.usefixtures("small_buffers")
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 400_000),
    most=st.sampled_from([100, 3000, 70_000]),
    algorithm=st.sampled_from([WINDOW_AES, PERMUTED]),
)
def test_any_stream_and_reads_give_the_bytes_path_cuts(
    seed: int, size: int, most: int, algorithm: str
) -> None:
    chunker = _make(algorithm)
    data = _data(random.Random(seed), size)
    got = _into_path(chunker, data, most, seed)
    assert [len(c) for c in got] == _bytes_path(chunker, data)
    assert b"".join(got) == data


@pytest.mark.usefixtures("small_buffers")
@pytest.mark.parametrize("algorithm", [WINDOW_AES, PERMUTED])
def test_the_guess_asks_for_the_bytes_it_needs_and_takes_the_same_chunks(algorithm: str) -> None:
    """Resync on the readinto path: the parent's chunks are taken (the guess asked for
    their bytes when the view was shorter) and the chunks are those of the search."""
    chunker = _make(algorithm)
    rng = random.Random(3)
    old = _data(rng, 600_000)
    ids = functools.partial(blob_id, bytes(32), BlobType.DATA)
    before = _into_path(chunker, old, 5000, 1)
    parent = ParentChunks([ids(c) for c in before], [len(c) for c in before])
    new = old[:300_000] + rng.randbytes(100) + old[300_000:] + rng.randbytes(70_000)
    for most in (97, 5000, 70_000):
        resync = Resync(chunker, ids, parent)
        asked: list[int] = []
        guess = resync._guess

        def recorded(
            buf: Any, start: int, left: int, eof: bool, guess: Any = guess, asked: Any = asked
        ) -> int:
            n = int(guess(buf, start, left, eof))
            asked.append(n)
            return n

        resync._guess = recorded  # type: ignore[method-assign]
        got = list(resync.chunks(ShortReads(new, random.Random(most), most, True)))
        assert [len(c) for c, _ in got] == _bytes_path(chunker, new)
        assert [i for _, i in got] == [ids(c) for c, _ in got]
        assert resync.taken > len(before) // 2
        assert any(n < 0 for n in asked)  # bytes asked for, then the chunk taken
    # a parent whose last chunk is the stream's last: taken only where the stream ends
    resync = Resync(chunker, ids, parent)
    got = list(resync.chunks(ShortReads(old, random.Random(2), 3000, True)))
    assert [len(c) for c, _ in got] == [len(c) for c in before]
    assert resync.taken == len(before)


def test_a_large_file_at_the_default_sizes_maps_the_middle_buffer_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20 MiB of random bytes at the default sizes: no chunk over 2 MiB, so the stream
    continues in one 4 MiB mapping, not one of max_size (it used 16 MiB before)."""
    made: list[int] = []
    real = mmap.mmap

    def recording(fileno: int, length: int, *args: Any, **kwargs: Any) -> mmap.mmap:
        made.append(length)
        return real(fileno, length, *args, **kwargs)

    chunker = WindowChunker(KEY, ChunkerParams())
    data = random.Random(9).randbytes(20 << 20)
    want = _bytes_path(chunker, data)
    assert max(want) < chunker_mod.MID_BUFFER // 2
    monkeypatch.setattr(mmap, "mmap", recording)
    got = _into_path(chunker, data, 1 << 20, 0)
    assert [len(c) for c in got] == want
    assert made == [chunker_mod.MID_BUFFER]
    # a chunk of max_size (zeros never cut) needs the largest buffer, once
    made.clear()
    zeros = bytes(20 << 20)
    got = _into_path(chunker, zeros, 1 << 20, 0)
    assert [len(c) for c in got] == _bytes_path(chunker, zeros)
    assert made == [chunker_mod.MID_BUFFER, chunker.into_size]


def test_a_long_chunk_maps_the_largest_buffer_for_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of zeros in random bytes (one chunk of max_size) moves the stream into the
    largest buffer and, after SHORT_RUN shorter chunks, back into the 4 MiB one (no new
    mapping): the cuts stay those of the bytes path."""
    made: list[int] = []
    closed: list[int] = []
    real = mmap.mmap

    class Recorded(real):  # type: ignore[misc, valid-type]
        def close(self) -> None:
            if not self.closed:
                closed.append(len(self))
            super().close()

    def recording(fileno: int, length: int, *args: Any, **kwargs: Any) -> mmap.mmap:
        made.append(length)
        return Recorded(fileno, length, *args, **kwargs)

    chunker = WindowChunker(KEY, ChunkerParams())
    rng = random.Random(4)
    data = rng.randbytes(6 << 20) + bytes(9 << 20) + rng.randbytes(30 << 20)
    want = _bytes_path(chunker, data)
    monkeypatch.setattr(mmap, "mmap", recording)
    for most in (1 << 20, 300_000):
        made.clear()
        closed.clear()
        got = _into_path(chunker, data, most, most)
        assert [len(c) for c in got] == want
        assert b"".join(got) == data
        assert made == [chunker_mod.MID_BUFFER, chunker.into_size]
        # the largest closed once back in the 4 MiB one, well before the stream's end
        assert closed == [chunker.into_size, chunker_mod.MID_BUFFER]
