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
from cas.chunking.chunker import Chunker, ChunkerParams

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


def streamed_ends(chunker: Chunker, data: bytes, rng: random.Random, most: int) -> list[int]:
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        out = data[pos : pos + min(n, rng.randrange(1, most + 1))]
        pos += len(out)
        return out

    ends, total, chunks = [], 0, []
    for chunk in chunker.iter_chunks(read):
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
