#!/usr/bin/env python3
"""Micro-benchmarks of the repository core: index memory, sealing, hashing, chunking.

    python tools/bench_core.py [--blobs N] [--mib M]

Prints a Markdown table.  Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import random
import time
import tracemalloc
from collections.abc import Callable

import blake3
from fastcdc.fastcdc_cy import fastcdc_cy

from cas import crypto
from cas.chunking.chunker import Chunker, ChunkerParams
from cas.crypto import BlobType
from cas.format import compress
from cas.format import pack as packfmt
from cas.repo.index import MasterIndex


def rate(nbytes: int, fn: Callable[[], object], repeat: int = 3) -> float:
    """Best-of-``repeat`` throughput in MB/s."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e6


def _build_index(n: int, blobs_per_pack: int, blob_size: int) -> MasterIndex:
    rnd = random.Random(1)
    idx = MasterIndex()
    for p in range(0, n, blobs_per_pack):
        pack_id = rnd.randbytes(32)
        entries = [
            (rnd.randbytes(32), j * blob_size, blob_size + crypto.SEAL_OVERHEAD + 1)
            for j in range(min(blobs_per_pack, n - p))
        ]
        idx.add_pack(pack_id, entries)
    idx.compact()
    return idx


def index_bytes_per_blob(n: int, blobs_per_pack: int, blob_size: int) -> tuple[float, float, float]:
    """(structure bytes/blob, traced heap bytes/blob, build seconds) for ``n`` random blob IDs.

    Built twice: once timed, once under tracemalloc (which slows allocation a lot).
    """
    gc.collect()
    t = time.perf_counter()
    idx = _build_index(n, blobs_per_pack, blob_size)
    elapsed = time.perf_counter() - t
    structure = idx.memory_bytes() / n
    del idx
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idx = _build_index(n, blobs_per_pack, blob_size)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del idx
    return structure, traced / n, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blobs", type=int, default=1_000_000)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    size = args.mib << 20
    data = os.urandom(size)
    keys = crypto.MasterKeys.generate()
    rows: list[tuple[str, str]] = []

    for label, per_pack, bsize in (
        ("small files (~10 KiB blobs, 1,600 per pack)", 1600, 10 << 10),
        ("large files (1 MiB chunks, 16 per pack)", 16, 1 << 20),
    ):
        per_blob, traced, secs = index_bytes_per_blob(args.blobs, per_pack, bsize)
        rows.append(
            (
                f"index, {args.blobs:,} blobs, {label}",
                f"{per_blob:.1f} B/blob (heap traced: {traced:.1f}), built in {secs:.1f} s",
            )
        )

    mib = 1 << 20
    blocks = [data[i : i + mib] for i in range(0, size, mib)]
    ad = crypto.blob_ad(BlobType.DATA, bytes(32))
    k = keys
    sealed = [crypto.seal(k.data_key, b, ad) for b in blocks]
    ids = [crypto.blob_id(k.id_key, BlobType.DATA, b) for b in blocks]
    blobs = [packfmt.seal_blob(k, BlobType.DATA, i, b) for i, b in zip(ids, blocks, strict=True)]
    pairs = list(zip(ids, blobs, strict=True))
    text = "\n".join(sorted(os.listdir("/usr/lib"))).encode() or b"text "
    text = (text * (size // len(text) + 1))[:size]
    text_blocks = [text[i : i + mib] for i in range(0, size, mib)]
    p = ChunkerParams()
    perm = crypto.chunker_permutation(k.chunker_key)
    chunker = Chunker(perm, p)
    big = 16 << 20
    timed: list[tuple[str, Callable[[], object]]] = [
        (
            "seal (XChaCha20-Poly1305), 1 MiB blobs",
            lambda: [crypto.seal(k.data_key, b, ad) for b in blocks],
        ),
        ("open, 1 MiB blobs", lambda: [crypto.open_sealed(k.data_key, s, ad, "b") for s in sealed]),
        (
            "open_blob (AEAD + payload flag + re-hash)",
            lambda: [packfmt.open_blob(k, BlobType.DATA, i, s, mib) for i, s in pairs],
        ),
        (
            "keyed BLAKE3 blob IDs",
            lambda: [crypto.blob_id(k.id_key, BlobType.DATA, b) for b in blocks],
        ),
        (
            "keyed BLAKE2b (for comparison)",
            lambda: [hashlib.blake2b(b, key=k.id_key, digest_size=32).digest() for b in blocks],
        ),
        ("SHA-256 (pack names)", lambda: hashlib.sha256(data).digest()),
        (
            "zstd level 3, random data (stored raw)",
            lambda: [compress.encode_payload(b) for b in blocks],
        ),
        (
            "zstd level 3, repetitive text",
            lambda: [compress.encode_payload(b) for b in text_blocks],
        ),
        (
            "fastcdc 512K/1M/8M unkeyed, whole buffer",
            lambda: list(fastcdc_cy(data, p.min_size, p.avg_size, p.max_size)),
        ),
        (
            "byte permutation (bytes.translate), 16 MiB blocks",
            lambda: [data[i : i + big].translate(perm) for i in range(0, size, big)],
        ),
        ("cas keyed chunker, streaming", lambda: chunker.cut_points(data)),
        (
            "BLAKE3 one buffer, multithreaded",
            lambda: blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest(),
        ),
    ]
    for label, fn in timed:
        rows.append((label, f"{rate(size, fn):.0f} MB/s"))

    cpu = platform.processor() or platform.machine()
    print(
        f"cas core benchmarks, {time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
    )
    print("| measure | result |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
