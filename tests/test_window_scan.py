"""The window chunker's optional C scan (cas/chunking/_scan.c) against its pure-Python one.

The accelerator only finds the first AES output block below the threshold
(spec/format.md §7.6); cut points must not depend on whether it was built
(``pip install`` without a compiler skips it) or disabled (``CAS_NO_ACCEL=1``).
These tests compare the two scans block for block and the two chunkers cut for
cut, check the chunker vectors on both paths (also in a process started with
``CAS_NO_ACCEL=1``), the C function's bounds checks, and, where CI says the
accelerator must be there (``CAS_EXPECT_ACCEL=1``, set by .ci/run), that it is.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cas import crypto
from cas.chunking import chunker as chunker_mod
from cas.chunking.chunker import ChunkerParams, WindowChunker, window_threshold

ROOT = Path(__file__).resolve().parent.parent

try:
    from cas.chunking import _scan
except ImportError:  # not built: the tests of the C function itself are skipped
    _scan = None  # type: ignore[assignment]

needs_accel = pytest.mark.skipif(_scan is None, reason="the C accelerator was not built")

# avg - min: every length cuts (0, 1), first bytes above 0 allowed (< 2^24), a zero
# first byte and a second byte limit (2^16 .. 2^24), the first two bytes zero and more
GAPS = [0, 1, 2, 255, 256, 257, 65535, 65536, 65537, (1 << 19), (1 << 24) - 1, 1 << 24]
GAPS += [(1 << 24) + 1, (1 << 28) - 64]


def params_for(gap: int) -> ChunkerParams:
    avg = max(64 + gap, 256)
    return ChunkerParams(avg - gap, avg, max(avg, 1024))


def reference(out: bytes | bytearray, start: int, n: int, stride: int, threshold: int) -> int:
    """first_below's definition, read literally."""
    for i in range((n - start) // stride):
        at = start + i * stride
        if int.from_bytes(out[at : at + 4], "big") < threshold:
            return i
    return -1


def planted(rng: random.Random, blocks: int, threshold: int, hits: int) -> bytearray:
    """Random AES-like output of 16-byte blocks, with a few blocks whose first four
    bytes are at or near the threshold (the rare values the scans must tell apart)."""
    out = bytearray(rng.randbytes(16 * blocks + 48))
    near = [0, 1, threshold - 1, threshold, threshold + 1, rng.randrange(max(threshold, 1))]
    for _ in range(hits):
        at = 16 * rng.randrange(blocks + 1)
        value = min(max(rng.choice(near), 0), (1 << 32) - 1)
        out[at : at + 4] = value.to_bytes(4, "big")
    return out


@needs_accel
@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    gap=st.one_of(st.sampled_from(GAPS), st.integers(0, (1 << 28) - 64)),
    blocks=st.integers(0, 300),
    hits=st.integers(0, 6),
)
@example(seed=1, gap=0, blocks=0, hits=0)
def test_the_c_scan_finds_the_block_the_python_scan_finds(
    seed: int, gap: int, blocks: int, hits: int
) -> None:
    rng = random.Random(seed)
    p = params_for(gap)
    chunker = WindowChunker(bytes(16), p, accelerate=False)
    threshold = window_threshold(p)
    out = planted(rng, blocks, threshold, hits)
    n = 16 * rng.randrange(1, blocks + 2)  # what update_into returns: whole blocks, >= 16
    want = chunker._first_cut(out, n)
    assert _scan.first_below(out, 16, n, 16, threshold) == want
    assert _scan.first_below(bytes(out), 16, n, 16, threshold) == want  # any buffer
    assert reference(out, 16, n, 16, threshold) == want


@needs_accel
@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=200),
    start=st.integers(0, 200),
    n=st.integers(0, 200),
    stride=st.integers(4, 40),
    threshold=st.one_of(st.sampled_from([0, 1, 1 << 24, 1 << 32]), st.integers(0, 1 << 32)),
)
def test_first_below_follows_its_definition(
    data: bytes, start: int, n: int, stride: int, threshold: int
) -> None:
    """Any start, end (a partial last block is not searched), stride and threshold."""
    if not start <= n <= len(data):
        with pytest.raises(ValueError, match="start <= n <= len"):
            _scan.first_below(data, start, n, stride, threshold)
        return
    assert _scan.first_below(data, start, n, stride, threshold) == reference(
        data, start, n, stride, threshold
    )


@needs_accel
@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((bytes(64), -1, 64, 16, 1), ValueError, "start <= n"),
        ((bytes(64), 0, 65, 16, 1), ValueError, "n <= len"),
        ((bytes(64), 20, 19, 16, 1), ValueError, "start <= n"),
        ((bytes(64), 0, 64, 3, 1), ValueError, "stride"),
        ((bytes(64), 0, 64, 0, 1), ValueError, "stride"),
        ((bytes(64), 0, 64, 16, -1), ValueError, "threshold"),
        ((bytes(64), 0, 64, 16, (1 << 32) + 1), ValueError, "threshold"),
        ((bytes(64), 0, 64, 16, 1 << 70), OverflowError, None),
        (("text", 0, 4, 16, 1), TypeError, None),
        ((memoryview(bytes(64))[::2], 0, 32, 16, 1), (TypeError, BufferError), None),
        ((bytes(64), 0, 64, 16), TypeError, None),
    ],
)
def test_first_below_refuses_what_is_out_of_bounds(
    args: tuple[Any, ...], error: type[Exception] | tuple[type[Exception], ...], match: str | None
) -> None:
    with pytest.raises(error, match=match):
        _scan.first_below(*args)


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    gap=st.sampled_from([0, 1, 2, 200, 255, 256, 1000, 4000]),
    min_size=st.sampled_from([64, 100, 1024]),
    size=st.one_of(st.integers(0, 70), st.integers(0, 30_000)),
)
def test_both_scans_cut_alike(seed: int, gap: int, min_size: int, size: int) -> None:
    """Whole streams: tiny ones, ones ending mid-block, every length a cut (avg - min <= 1)."""
    rng = random.Random(seed)
    avg = max(min_size + gap, 256)
    p = ChunkerParams(avg - gap, avg, max(avg, rng.choice([1024, 5000])))
    data = rng.randbytes(size)
    key = rng.randbytes(16)
    c_path = WindowChunker(key, p)
    py_path = WindowChunker(key, p, accelerate=False)
    assert not py_path.accelerated and c_path.accelerated == (chunker_mod.FIRST_BELOW is not None)
    assert c_path.cut_points(data) == py_path.cut_points(data)


def vector_runs() -> tuple[dict[str, Any], bytes]:
    v = json.loads((ROOT / "spec" / "vectors" / "chunker.json").read_text())
    s = v["stream"]
    stream = blake3.blake3(s["stream_context"].encode(), key=bytes.fromhex(s["stream_key"]))
    return v, stream.digest(length=s["length"])


@pytest.mark.parametrize("accelerate", [True, False], ids=["c-scan", "python-scan"])
def test_the_chunker_vectors_on_both_paths(accelerate: bool) -> None:
    v, stream = vector_runs()
    aes_key = crypto.chunker_window_key(bytes.fromhex(v["chunker_key"]))
    for run in v["window_aes128"]["runs"]:
        p = ChunkerParams(run["min"], run["avg"], run["max"])
        chunker = WindowChunker(aes_key, p, accelerate=accelerate)
        assert chunker.cut_points(stream[: run["length"]]) == run["chunk_ends"], run["description"]


def test_cas_no_accel_turns_the_accelerator_off_and_the_vectors_still_match() -> None:
    """The switch is read at import: a process started with it scans in Python, and
    tools/gen_vectors.py --check (every vector file, the chunker's included) passes."""
    env = {**os.environ, "CAS_NO_ACCEL": "1"}
    probe = (
        "from cas.chunking import chunker as c; "
        "print(c.FIRST_BELOW is None, c.WindowChunker(bytes(16), c.ChunkerParams()).accelerated)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "False"] and not out.stderr
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_vectors.py"), "--check"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(
    os.environ.get("CAS_EXPECT_ACCEL") != "1",
    reason="CAS_EXPECT_ACCEL=1 (set by .ci/run) asks for the accelerator",
)
def test_the_accelerator_is_built_where_ci_expects_it() -> None:
    assert _scan is not None, "cas.chunking._scan is not importable: was gcc or Python.h missing?"
    assert chunker_mod.FIRST_BELOW is _scan.first_below
    assert WindowChunker(bytes(16), ChunkerParams()).accelerated
