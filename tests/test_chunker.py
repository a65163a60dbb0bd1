"""The streaming chunker cuts exactly where fastcdc cuts the whole permuted stream.

The chunker permutes only the bytes fastcdc inspects, window by window
(cas/chunking/chunker.py); these properties pin it to the plain definition: permute
everything, run fastcdc once over the whole stream.
"""

from __future__ import annotations

import io
import random

from fastcdc.fastcdc_cy import fastcdc_cy
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.chunking import chunker as chunker_mod
from cas.chunking.chunker import Chunker, ChunkerParams, StreamChunker, WindowChunker

PARAMS = [
    ChunkerParams(64, 256, 1024),
    ChunkerParams(64, 256, 8192),
    ChunkerParams(1024, 1024, 1024),
    ChunkerParams(4096, 16384, 65536),
    ChunkerParams(2048, 4096, 4096),
]


def whole_stream_ends(data: bytes, perm: bytes, p: ChunkerParams) -> list[int]:
    return [
        c.offset + c.length
        for c in fastcdc_cy(data.translate(perm), p.min_size, p.avg_size, p.max_size)
    ]


class ShortReads:
    """``read(n)``, and ``readinto(view)`` when ``into``, returning at most a random
    ``most`` bytes a call (the chunker reads into its own buffer then)."""

    def __init__(self, data: bytes, rng: random.Random, most: int, into: bool) -> None:
        self.data, self.rng, self.most, self.pos = data, rng, most, 0
        if into:
            self.readinto = self._readinto

    def __call__(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + min(n, self.rng.randrange(1, self.most + 1))]
        self.pos += len(out)
        return out

    def _readinto(self, view: memoryview) -> int:
        out = self(len(view))
        view[: len(out)] = out
        return len(out)


def streamed_ends(
    chunker: StreamChunker, data: bytes, rng: random.Random, most: int, into: bool = False
) -> list[int]:
    ends, total, chunks = [], 0, []
    for chunk in chunker.iter_chunks(ShortReads(data, rng, most, into)):
        assert chunk and isinstance(chunk, bytes)
        total += len(chunk)
        ends.append(total)
        chunks.append(chunk)
    assert b"".join(chunks) == data  # the bytes themselves, not only where they were cut
    return ends


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    params=st.sampled_from(PARAMS),
    size=st.integers(0, 300_000),
    zeros=st.floats(0, 1),
    most=st.sampled_from([1, 100, 5000, 1 << 20]),
    window=st.sampled_from([64, 1000, 256 * 1024]),
)
def test_streamed_cuts_equal_whole_stream_cuts(
    seed: int, params: ChunkerParams, size: int, zeros: float, most: int, window: int
) -> None:
    rng = random.Random(seed)
    perm = bytes(rng.sample(range(256), 256))
    split = int(size * zeros)
    # Zeros never cut (a run of max_size bytes without a cut), random data does.
    data = rng.randbytes(size - split) + bytes(split)
    old = chunker_mod.WINDOW
    chunker_mod.WINDOW = window
    try:
        chunker = Chunker(perm, params, buffer_size=rng.choice([0, params.max_size * 3 + 7]))
        expected = whole_stream_ends(data, perm, params)
        assert streamed_ends(chunker, data, rng, most) == expected
        # The chunker keeps scratch space between streams: a second stream is cut the same.
        assert streamed_ends(chunker, data, rng, most) == expected
        # Read into the chunker's buffer (kept between streams, holding the last
        # stream's bytes after this one's): the same cuts (reads of at least 100
        # bytes: one byte a call costs seconds here, the short reads are the same).
        into = max(most, 100)
        assert streamed_ends(chunker, data, rng, into, into=True) == expected
        assert streamed_ends(chunker, data[: size // 3], rng, into, into=True) == (
            whole_stream_ends(data[: size // 3], perm, params)
        )
    finally:
        chunker_mod.WINDOW = old


def test_interleaved_streams_on_one_chunker_do_not_share_scratch_space() -> None:
    rng = random.Random(7)
    perm = bytes(rng.sample(range(256), 256))
    params = ChunkerParams(64, 256, 1024)
    a, b = rng.randbytes(50_000), rng.randbytes(50_000)
    chunker = Chunker(perm, params)
    ia = chunker.iter_chunks(io.BytesIO(a).read)
    ib = chunker.iter_chunks(io.BytesIO(b).read)
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    for _ in range(5):  # both streams hold a scratch buffer at once
        got_a.append(next(ia))
        got_b.append(next(ib))
    got_a.extend(ia)
    got_b.extend(ib)
    assert b"".join(got_a) == a and b"".join(got_b) == b
    assert _ends(got_a) == whole_stream_ends(a, perm, params)
    assert _ends(got_b) == whole_stream_ends(b, perm, params)


def _ends(chunks: list[bytes]) -> list[int]:
    ends, total = [], 0
    for c in chunks:
        total += len(c)
        ends.append(total)
    return ends


def test_reading_into_the_buffer_cuts_as_reading_bytes_for_both_chunkers() -> None:
    """Both algorithms, streams longer than the buffer (its tail carried to the
    front), each after a longer different one left its bytes in the buffer, and
    two streams interleaved (the second takes a buffer of its own)."""
    rng = random.Random(11)
    params = ChunkerParams(256, 1024, 4096)
    streams = [rng.randbytes(n) for n in (60_000, 33_333, 9_000, 100, 0)]
    for make in (
        lambda: Chunker(bytes(rng.sample(range(256), 256)), params),
        lambda: WindowChunker(rng.randbytes(16), params),
    ):
        chunker = make()
        want = [streamed_ends(chunker, d, rng, 1 << 20) for d in streams]
        for most in (1 << 20, 777):
            assert [streamed_ends(chunker, d, rng, most, into=True) for d in streams] == want
        ia = chunker.iter_chunks(ShortReads(streams[0], rng, 5000, True))
        ib = chunker.iter_chunks(ShortReads(streams[1], rng, 5000, True))
        got_a, got_b = [next(ia)], [next(ib)]
        got_a.extend(ia)
        got_b.extend(ib)
        assert (_ends(got_a), _ends(got_b)) == (want[0], want[1])
