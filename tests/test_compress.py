"""Compression choices: what is stored compressed, what as is (spec/format.md §8)."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest

from cas.errors import FormatError
from cas.format import compress
from tests.support.cli import run_cas


def flag(payload: bytes) -> int:
    return payload[0]


def test_small_and_compressible_blobs_are_compressed() -> None:
    text = b"the quick brown fox jumps over the lazy dog\n" * 30_000
    for size in (100, 10_000, compress.PROBE_MIN - 1, compress.PROBE_MIN, len(text)):
        payload = compress.encode_payload(text[:size])
        assert flag(payload) == compress.ZSTD
        assert compress.decode_payload(payload, size, "t") == text[:size]


def test_random_data_is_stored_as_is_at_every_size() -> None:
    for size in (65, 1000, compress.PROBE_MIN - 1, compress.PROBE_MIN, 1 << 20, 3 << 20):
        data = os.urandom(size)
        payload = compress.encode_payload(data)
        assert flag(payload) == compress.STORED
        assert compress.decode_payload(payload, size, "t") == data


def test_a_blob_compressible_in_one_region_only_is_compressed() -> None:
    """The probe looks at slices spread over the blob: one compressible slice is enough."""
    rng = random.Random(3)
    size = 1 << 20
    step = size // compress.PROBE_SLICES
    for region in range(compress.PROBE_SLICES):
        data = bytearray(rng.randbytes(size))
        data[region * step : region * step + step] = bytes(step)
        payload = compress.encode_payload(bytes(data))
        assert flag(payload) == compress.ZSTD, region
        assert len(payload) < size - step // 2
        assert compress.decode_payload(payload, size, "t") == data


def _probe_fooler(size: int) -> bytes:
    """Random bytes where the probe looks, zeros everywhere else: zstd would shrink it."""
    rng = random.Random(size)
    data = bytearray(size)
    step = size // compress.PROBE_SLICES
    for i in range(compress.PROBE_SLICES):
        data[i * step : i * step + compress.PROBE_SLICE] = rng.randbytes(compress.PROBE_SLICE)
    return bytes(data)


def test_the_probe_decides_for_large_blobs_only() -> None:
    """From PROBE_MIN up, four slices at i * size / 4 decide alone (their verdict is
    trusted even when the rest would compress); below it zstd is always tried."""
    for size in (compress.PROBE_MIN, 1 << 20):
        data = _probe_fooler(size)
        payload = compress.encode_payload(data)
        assert flag(payload) == compress.STORED, size
        assert len(compress._compressor(3).compress(data)) < size // 2  # zstd would shrink it
    for size in (compress.PROBE_MIN - 1, 100_000):
        payload = compress.encode_payload(_probe_fooler(size))
        assert flag(payload) == compress.ZSTD, size


def test_the_probe_reads_whole_slices_where_the_step_is_odd() -> None:
    """At 5 x 64 KiB the second slice starts at 80 KiB (not a multiple of 32 KiB): a
    zeroed slice there, and only there, is seen and makes the blob compressed."""
    size = 5 * (64 << 10)
    step = size // compress.PROBE_SLICES
    data = bytearray(random.Random(5).randbytes(size))
    data[step : step + compress.PROBE_SLICE] = bytes(compress.PROBE_SLICE)
    assert flag(compress.encode_payload(bytes(data))) == compress.ZSTD


def test_slices_that_shrink_by_less_than_3_percent_count_as_incompressible() -> None:
    """PROBE_RATIO: a slice must shrink below 97% of its size.  Each 16 KiB of this blob
    is random but for 2% zeros: zstd would save about 2%, the probe says no."""
    rng = random.Random(6)
    chunk = compress.PROBE_SLICE
    data = b"".join(bytes(chunk // 50) + rng.randbytes(chunk - chunk // 50) for _ in range(64))
    whole = len(compress._compressor(compress.PROBE_LEVEL).compress(data[:chunk]))
    assert compress.PROBE_RATIO * chunk <= whole < chunk  # the slice shrinks, but too little
    assert flag(compress.encode_payload(data)) == compress.STORED


def test_a_frame_followed_by_anything_is_refused() -> None:
    """Spec §8: exactly one zstd frame; bytes after it are refused, whatever its size says."""
    text = b"the quick brown fox jumps over the lazy dog\n" * 100
    payload = compress.encode_payload(text)
    assert flag(payload) == compress.ZSTD
    for extra in (b"\0", b"junk", compress.encode_payload(text)[1:]):
        with pytest.raises(FormatError, match="junk"):
            compress.decode_payload(payload + extra, 10 * len(text), "t")


def test_a_frame_cut_short_or_followed_by_a_frame_is_refused_at_every_size() -> None:
    """A frame is decoded in one call into a buffer of its content size (the fast path);
    whatever that refuses or cannot take (an empty frame) goes through the stream, which
    refuses exactly what it refused before: a frame cut short, bytes or a skippable
    frame after it, a second frame."""
    skippable = bytes.fromhex("502a4d1800000000")
    for text in (b"", b"x", b"abc" * 1000, (b"\0" * 700 + os.urandom(100)) * 8000):
        payload = compress._ZSTD_FLAG + compress._compressor(3).compress(text)
        assert compress.decode_payload(payload, len(text), "t") == text
        cut = [payload[:-1], payload[:-4]] if len(text) > 1 else [payload[:-1]]
        for bad in (*cut, payload + b"\0", payload + skippable):
            with pytest.raises(FormatError, match="truncated or followed by junk"):
                compress.decode_payload(bad, len(text) + 10, "t")
        if text:
            with pytest.raises(FormatError, match="truncated or followed by junk"):
                compress.decode_payload(payload + payload[1:], 2 * len(text), "t")


def test_decoding_a_large_frame_leaves_no_window_buffer_behind() -> None:
    """Memory: decoded in one call, a 6 MiB blob leaves the thread's decompression context
    small (decoded as a stream it kept a window buffer of megabytes)."""
    text = (b"\0" * 700 + os.urandom(100)) * 8000
    payload = compress.encode_payload(text)
    assert flag(payload) == compress.ZSTD
    seen: list[object] = []

    def decode() -> None:  # on a thread of its own: a context of its own
        seen.append(compress.decode_payload(payload, len(text), "t") == text)
        seen.append(compress._decompressor().memory_size())

    thread = threading.Thread(target=decode)
    thread.start()
    thread.join()
    assert seen[0] is True
    assert isinstance(seen[1], int) and seen[1] < 512 << 10


def test_level_none_stores_everything() -> None:
    data = bytes(1 << 20)
    assert flag(compress.encode_payload(data, None)) == compress.STORED
    assert flag(compress.encode_payload(memoryview(data), None)) == compress.STORED


def test_backup_compression_option(tmp_path: Path) -> None:
    """--compression changes how much is stored, never what comes back."""
    src = tmp_path / "src"
    src.mkdir()
    text = b"".join(b"line %d of a very repetitive log file\n" % i for i in range(60_000))
    (src / "log.txt").write_bytes(text)
    (src / "noise.bin").write_bytes(os.urandom(300_000))
    stored = {}
    for mode in ("off", "fastest", "auto", "max", "7"):
        repo = ["-r", str(tmp_path / f"repo-{mode}")]
        assert run_cas(*repo, "init").code == 0
        r = run_cas(*repo, "--json", "backup", "--compression", mode, src)
        assert r.code == 0, r.err
        stored[mode] = json.loads(r.out)["summary"]["data_added_stored"]
        out = tmp_path / f"out-{mode}"
        assert run_cas(*repo, "restore", "latest", "--target", out).code == 0
        for f in src.iterdir():
            assert (out / str(f).lstrip("/")).read_bytes() == f.read_bytes()
    raw = len(text) + 300_000
    assert stored["off"] > raw  # stored as is, plus sealing overhead
    for mode in ("fastest", "auto", "max", "7"):
        assert stored[mode] < raw - len(text) // 2, mode  # the text shrank, the noise did not
    bad = run_cas("-r", str(tmp_path / "repo-off"), "backup", "--compression", "23", src)
    assert bad.code == 2 and "--compression" in bad.err and "Traceback" not in bad.err
