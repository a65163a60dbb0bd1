#!/usr/bin/env python3
"""What a second core gives a job with no per-file Python and nothing shared: the machine's
own ceiling for issue 17's "speed-up from the second core".

    python tools/bench_scaling.py [--data /tmp/cas-bench/linux] [--mib 256] [--repeat 5]

Reads up to ``--mib`` MiB of the files under ``--data`` into memory once, then times the
compiled work a backup does per byte (zstd level 3, keyed BLAKE3, nothing else) over those
bytes: one process pinned to core 0 doing it twice, against two processes pinned to cores 0
and 1 doing it once each.  The same total work; a perfect second core gives x2.00.  Anything
below that on an idle machine is the hardware's or the hypervisor's (shared caches, memory
bandwidth, clock), and no design of cas's processes can beat it.  Prints the median of
``--repeat`` runs of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path


def _sample(root: Path, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            data = p.read_bytes()
            parts.append(data)
            size += len(data)
            if size >= limit:
                return b"".join(parts)[:limit]
    return b"".join(parts)


def _work(data: bytes, times: int) -> None:
    import blake3
    import zstandard

    key = bytes(32)
    cctx = zstandard.ZstdCompressor(level=3)
    piece = 1 << 20
    for _ in range(times):
        for i in range(0, len(data), piece):
            chunk = data[i : i + piece]
            blake3.blake3(chunk, key=key).digest()
            cctx.compress(chunk)


def _run(data: bytes, procs: int, times: int) -> float:
    start = time.perf_counter()
    children = []
    for core in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                os.sched_setaffinity(0, {core})
                _work(data, times)
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/cas-bench/linux"))
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = _sample(args.data, args.mib << 20)
    one, two = [], []
    for _ in range(args.repeat):  # interleaved, so a change in the machine's load hits both
        one.append(_run(data, 1, 2))
        two.append(_run(data, 2, 1))
    a, b = statistics.median(one), statistics.median(two)
    print(f"{len(data) / 2**20:.0f} MiB x 2, zstd 3 + keyed BLAKE3, median of {args.repeat}")
    print(f"one process on one core:   {a:.2f} s  ({' '.join(f'{x:.2f}' for x in one)})")
    print(f"two processes on two cores: {b:.2f} s  ({' '.join(f'{x:.2f}' for x in two)})")
    print(f"speed-up from the second core: x{a / b:.2f}")


if __name__ == "__main__":
    main()
