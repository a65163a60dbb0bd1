"""The window-aes128 chunker (spec/format.md §7.6) against its plain definition.

The code encrypts 16 shifted copies of a region at once and scans the
output (in C when the accelerator was built, else in Python: both are run);
these properties pin it to the definition (one AES block per candidate
length, in order), whatever the read sizes and the buffer size, and
check that the chunk lengths follow the configured average.
"""

from __future__ import annotations

import json
import os
import random
import statistics
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import crypto
from cas.chunking import chunker as chunker_mod
from cas.chunking.chunker import PERMUTED, ChunkerParams, WindowChunker, make_chunker
from tests.support.cli import Result, run_cas
from tests.test_chunker import streamed_ends

PARAMS = [
    ChunkerParams(64, 256, 1024),
    ChunkerParams(64, 256, 8192),
    ChunkerParams(1024, 1024, 1024),
    ChunkerParams(200, 256, 4096),  # avg - min < 256: several first bytes may cut
    ChunkerParams(255, 256, 4096),  # avg - min = 1: every length cuts
    ChunkerParams(4096, 16384, 65536),
    ChunkerParams(2048, 4096, 4096),
    ChunkerParams(1024, 140000, 1 << 20),  # the first two bytes zero, the rest checked
    ChunkerParams(64, 20000, 1 << 18),
]


def definition(data: bytes, key: bytes, p: ChunkerParams) -> list[int]:
    """§7.6 read literally: every length from min, one AES block each (decrypted, then
    XORed with the 16 bytes before the window)."""
    aes = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    threshold = 2**32 // max(p.avg_size - p.min_size, 1)
    ends, start = [], 0
    while start < len(data):
        n = min(len(data) - start, p.max_size)
        cut = n
        for length in range(p.min_size, n + 1):
            block = aes.update(data[start + length - 16 : start + length])
            before = data[start + length - 32 : start + length - 28]
            if int.from_bytes(block[:4], "big") ^ int.from_bytes(before, "big") < threshold:
                cut = length
                break
        start += cut
        ends.append(start)
    return ends


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    params=st.sampled_from(PARAMS),
    size=st.integers(0, 40_000),
    repeat=st.sampled_from([0, 1, 7, 16, 33]),
)
def test_cuts_follow_the_definition_whatever_the_reads(
    seed: int, params: ChunkerParams, size: int, repeat: int
) -> None:
    rng = random.Random(seed)
    if repeat:  # periodic content: windows repeat, decisions with them
        unit = rng.randbytes(repeat)
        data = (unit * (size // repeat + 1))[:size]
    else:
        data = rng.randbytes(size)
    key = rng.randbytes(16)
    want = definition(data, key, params)
    small_window = rng.choice([False, True])
    if small_window:  # rounds of 16 passes over a few lengths only
        old, chunker_mod.AES_WINDOW = chunker_mod.AES_WINDOW, rng.choice([16, 17, 100, 1000])
    try:
        buffer_size = rng.choice([0, params.max_size * 3 + 7])
        for accelerate in (True, False):  # the C scan (when built), and the Python one
            chunker = WindowChunker(key, params, buffer_size, accelerate=accelerate)
            assert chunker.cut_points(data) == want
            assert streamed_ends(chunker, data, rng, rng.choice([1, 100, 5000, 1 << 20])) == want
    finally:
        if small_window:
            chunker_mod.AES_WINDOW = old


def test_the_chunk_size_distribution_is_near_the_average() -> None:
    """Default sizes over 128 MiB of random data: min + a geometric gap of mean avg - min."""
    data = os.urandom(128 << 20)
    p = ChunkerParams()
    ends = WindowChunker(crypto.chunker_window_key(os.urandom(32)), p).cut_points(data)
    lengths = [b - a for a, b in zip([0, *ends], ends, strict=False)][:-1]
    assert min(lengths) >= p.min_size and max(lengths) <= p.max_size
    mean = statistics.mean(lengths)
    # ~128 chunks: the mean of a geometric gap of 512 KiB has a 45 KiB standard error
    assert 0.8 * p.avg_size < mean < 1.2 * p.avg_size, mean


def test_the_config_algorithm_picks_the_chunker() -> None:
    keys = crypto.MasterKeys.generate()
    data = os.urandom(3 << 20)
    small = dict(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)
    new = make_chunker(keys, ChunkerParams(**small))
    old = make_chunker(keys, ChunkerParams(**small, algorithm=PERMUTED))
    assert isinstance(new, WindowChunker) and not isinstance(old, WindowChunker)
    assert new.cut_points(data) != old.cut_points(data)
    assert ChunkerParams().algorithm == "window-aes128"  # what init writes


def _last(result: Result) -> Any:
    assert result.code == 0, result.err
    return json.loads(result.out.strip().splitlines()[-1])


@pytest.mark.parametrize("algorithm", [None, PERMUTED])
def test_each_algorithm_backs_up_restores_and_keeps_its_chunks(
    tmp_path: Path, algorithm: str | None
) -> None:
    """init writes window-aes128; a repository made with the older algorithm keeps it:
    its config says so, a second backup of the same file stores no new data, and a
    third client (workers, chunk helper) cuts where the first did."""
    repo = tmp_path / "repo"
    sizes = ["--chunk-min", "16384", "--chunk-avg", "65536", "--chunk-max", "262144"]
    chosen = [] if algorithm is None else ["--chunker", algorithm]
    assert run_cas("init", "-r", repo, *sizes, *chosen).code == 0
    config = _last(run_cas("cat", "config", "-r", repo, "--json"))["object"]
    assert config["chunker"]["algorithm"] == (algorithm or "window-aes128")
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(7).randbytes(24 << 20)  # the copy is above the helper's 16 MiB
    (src / "big.bin").write_bytes(data)
    (src / "small.bin").write_bytes(data[: 3 << 20])
    first = _last(run_cas("backup", "-r", repo, "--workers", "2", src, "--json"))
    assert first["summary"]["data_blobs_new"] > 50
    (src / "copy.bin").write_bytes(data[5 << 20 :])  # a suffix: its chunks resynchronise
    again = _last(run_cas("backup", "-r", repo, "--workers", "0", src, "--json"))
    assert again["summary"]["data_blobs_new"] <= 3, again["summary"]
    out = tmp_path / "out"
    assert run_cas("restore", "latest", "-r", repo, "--target", out).code == 0
    assert (out / src.relative_to("/") / "copy.bin").read_bytes() == data[5 << 20 :]
