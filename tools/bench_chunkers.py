#!/usr/bin/env python3
"""Throughput of the two chunker algorithms, and the new one's chunk sizes (spec §7.6).

    taskset -c 1 python tools/bench_chunkers.py [--mib 32] [--runs 9]

Alternates the two over the same random data (one process, one core), prints
the median of the runs of each, then the chunk-length statistics of
``window-aes128`` at the default sizes over the data.  Not a test: figures
depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from cas import crypto
from cas.chunking.chunker import PERMUTED, Chunker, ChunkerParams, WindowChunker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=32)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    data = os.urandom(args.mib << 20)
    key = os.urandom(32)
    chunkers = {
        PERMUTED: Chunker(crypto.chunker_permutation(key), ChunkerParams(algorithm=PERMUTED)),
        "window-aes128": WindowChunker(crypto.chunker_window_key(key), ChunkerParams()),
    }
    times: dict[str, list[float]] = {name: [] for name in chunkers}
    for _ in range(args.runs):
        for name, chunker in chunkers.items():
            t = time.perf_counter()
            chunker.cut_points(data)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name}: median {len(data) / statistics.median(ts) / 1e9:.3f} GB/s")
    ends = chunkers["window-aes128"].cut_points(data)
    lengths = [e - s for s, e in zip([0, *ends], ends, strict=False)][:-1]
    kib = [n / 1024 for n in lengths]
    print(
        f"window-aes128 chunks: {len(kib)}, mean {statistics.mean(kib):.0f} KiB, "
        f"median {statistics.median(kib):.0f} KiB, min {min(kib):.0f}, max {max(kib):.0f}"
    )


if __name__ == "__main__":
    main()
