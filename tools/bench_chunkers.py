#!/usr/bin/env python3
"""Throughput of the two chunker algorithms, and the new one's chunk sizes (spec §7.6).

    taskset -c 1 python tools/bench_chunkers.py [--mib 32] [--runs 9] [--ciphers] [--resync]

Alternates the chunkers over the same random data (one process, one core):
``fastcdc-2016-permuted``, ``window-aes128`` with its scan in C (the optional
accelerator, ``cas/chunking/_scan.c``, when it was built) and with its
pure-Python scan (what runs without the accelerator), and the streaming alone
(the window chunker's cuts replayed: reads, buffers and chunk copies, which
every chunker pays). It says first whether the accelerator is there, prints the
median of the runs of each in CPU time of the process (``process_time``, so
other work on a shared core does not make them look slower), then the
chunk-length statistics of ``window-aes128`` at the default sizes over the
data; with ``--ciphers``, first the rates of AES-128 ECB encryption and CBC
decryption over 64 KiB buffers (why the chunker decrypts); with ``--resync``,
last, chunking and hashing (blob IDs) the data with 1 MiB inserted in its
middle, plainly and resynchronised with the original's chunks
(``cas/chunking/resync.py``, spec §7.7), as a changed file's backup does.  Not a test: figures
depend on the machine.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import statistics
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cas import crypto
from cas.chunking.chunker import (
    FIRST_BELOW,
    PERMUTED,
    Chunker,
    ChunkerParams,
    StreamChunker,
    WindowChunker,
)
from cas.chunking.resync import ParentChunks, Resync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--ciphers", action="store_true", help="AES ECB and CBC rates first")
    ap.add_argument(
        "--resync", action="store_true", help="an edited copy, plain and resynchronised, last"
    )
    args = ap.parse_args()
    if args.ciphers:
        ciphers()
    data = os.urandom(args.mib << 20)
    key = os.urandom(32)
    window_key = crypto.chunker_window_key(key)
    chunkers: dict[str, StreamChunker] = {
        PERMUTED: Chunker(crypto.chunker_permutation(key), ChunkerParams(algorithm=PERMUTED)),
        "window-aes128": WindowChunker(window_key, ChunkerParams()),
    }
    if FIRST_BELOW is None:
        print(
            "accelerator: not used (not built, or CAS_NO_ACCEL set): window-aes128 scans in Python"
        )
    else:
        print("accelerator: used (cas/chunking/_scan.c); the Python scan measured beside it")
        chunkers["window-aes128 (Python scan)"] = WindowChunker(
            window_key, ChunkerParams(), accelerate=False
        )
    # the reads, buffers and chunk copies every chunker pays, without any search
    chunkers[STREAMING] = Replay(chunkers["window-aes128"].cut_points(data))
    times: dict[str, list[float]] = {name: [] for name in chunkers}
    for _ in range(args.runs):
        for name, chunker in chunkers.items():
            t = time.process_time()
            chunker.cut_points(data)
            times[name].append(time.process_time() - t)
    rate = {name: len(data) / statistics.median(ts) / 1e9 for name, ts in times.items()}
    for name, r in rate.items():
        print(f"{name}: median {r:.3f} GB/s ({r / rate[PERMUTED]:.2f}x {PERMUTED})")
    ends = chunkers["window-aes128"].cut_points(data)
    lengths = [e - s for s, e in zip([0, *ends], ends, strict=False)][:-1]
    kib = [n / 1024 for n in lengths]
    print(
        f"window-aes128 chunks: {len(kib)}, mean {statistics.mean(kib):.0f} KiB, "
        f"median {statistics.median(kib):.0f} KiB, min {min(kib):.0f}, max {max(kib):.0f}"
    )
    if args.resync:
        resync(data, key, args.runs)


def resync(data: bytes, key: bytes, runs: int) -> None:
    """CPU time to chunk ``data`` with 1 MiB inserted in its middle and compute each
    chunk's ID: plainly, and resynchronised with the chunks of ``data``."""
    chunker = WindowChunker(crypto.chunker_window_key(key), ChunkerParams())
    ids = functools.partial(crypto.blob_id, key, crypto.BlobType.DATA)
    mid = len(data) // 2
    edited = data[:mid] + os.urandom(1 << 20) + data[mid:]
    before = [(c, ids(c)) for c in chunker.iter_chunks(io.BytesIO(data).read)]
    parent = ParentChunks([i for _, i in before], [len(c) for c, _ in before])
    times: dict[str, list[float]] = {"plain": [], "resync": []}
    for _ in range(runs):
        t = time.process_time()
        plain = [(c, ids(c)) for c in chunker.iter_chunks(io.BytesIO(edited).read)]
        times["plain"].append(time.process_time() - t)
        t = time.process_time()
        taking = Resync(chunker, ids, parent)
        got = list(taking.chunks(io.BytesIO(edited).read))
        times["resync"].append(time.process_time() - t)
        if got != plain:
            raise SystemExit("resync gave other chunks than the plain chunker")
        del plain, got
    rate = {name: len(edited) / statistics.median(ts) / 1e9 for name, ts in times.items()}
    print(
        f"1 MiB inserted in the middle, chunks and IDs (window-aes128): plain median "
        f"{rate['plain']:.3f} GB/s, resynchronised {rate['resync']:.3f} GB/s "
        f"({rate['resync'] / rate['plain']:.2f}x); {taking.taken} chunks taken, "
        f"{taking.searched} searched, {taking.missed} tried and missed"
    )


STREAMING = "streaming alone (window-aes128's cuts replayed)"


class Replay(StreamChunker):
    """Cuts a stream where given end offsets say: what ``iter_chunks`` costs alone."""

    def __init__(self, ends: list[int]) -> None:
        super().__init__(ChunkerParams())
        self._ends = ends
        self._next = iter(())

    def cut_points(self, data: bytes) -> list[int]:
        self._next = iter(e - s for s, e in zip([0, *self._ends], self._ends, strict=False))
        return super().cut_points(data)

    def _new_scratch(self) -> bytearray:
        return bytearray()

    def _cut(self, buf: bytes | bytearray, start: int, limit: int, scratch: bytearray) -> int:
        return next(self._next)


def ciphers() -> None:
    block, out = os.urandom(64 << 10), bytearray((64 << 10) + 16)
    key = os.urandom(16)
    for name, ctx in (
        ("AES-128-ECB encrypt", Cipher(algorithms.AES(key), modes.ECB()).encryptor()),
        ("AES-128-CBC decrypt", Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()),
    ):
        t = time.process_time()
        for _ in range(4096):
            ctx.update_into(block, out)
        print(f"{name}: {4096 * len(block) / (time.process_time() - t) / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
