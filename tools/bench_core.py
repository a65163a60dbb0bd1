#!/usr/bin/env python3
"""Micro-benchmarks of the repository core: index memory, sealing, hashing, chunking.

    python tools/bench_core.py [--blobs N] [--mib M] [--repeat R] [--index-only] [--only TEXT]

Prints a Markdown table.  Not a test: figures depend on the machine.  Every
figure is the median of ``--repeat`` runs; the table's first line says which
CPUs the process may use, so pin it (``taskset -c 1``) on a shared machine.
Rates and build times are CPU time of this process (``time.process_time``), so
other work on a shared core does not make them look slower; only the rows that
compare threads (``--only threads``) and the multithreaded BLAKE3 row are wall
time, since they ask what a second core gives.
The figures quoted in README.md and docs/performance.md come from

    taskset -c 1 python tools/bench_core.py --repeat 5 --blobs 200000 --lookups 50000
    taskset -c 1 python tools/bench_core.py --repeat 5 --only AES
    python tools/bench_core.py --mib 1 --repeat 9 --only "per item"
    taskset -c 0,1 python tools/bench_core.py --repeat 5 --only threads

(the last: the rows that compare two threads with one, which need two cores).

The master index is built two ways, for both shapes of repository: by
``MasterIndex.add_pack`` directly, and through the real loading path (index
files of at most ``INDEX_EVERY_BLOBS`` blobs, encoded and sealed into a
memory backend, read by ``IndexStore.load``).  For each: bytes per blob at
rest, the traced heap's peak over the build (tracemalloc: Python's
allocations, which is where the index lives), the median build time and
lookups per second (``get`` of present and of absent IDs, ``in`` of both).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import random
import statistics
import sysconfig
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice

import blake3
from fastcdc.fastcdc_cy import fastcdc_cy

from cas import crypto
from cas.backend.memory import MemoryBackend
from cas.chunking.chunker import Chunker, ChunkerParams
from cas.crypto import BlobType
from cas.format import compress
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.format.tree import Node, encode_node
from cas.repo import layout
from cas.repo.index import MasterIndex
from cas.repo.indexstore import IndexStore
from cas.repo.packwriter import INDEX_EVERY_BLOBS

Entry = tuple[bytes, int, int]


def seconds(
    fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.process_time
) -> float:
    """Median time of ``repeat`` runs of ``fn`` on ``clock`` (CPU time by default)."""
    runs = []
    for _ in range(repeat):
        t = clock()
        fn()
        runs.append(clock() - t)
    return statistics.median(runs)


def rate(
    nbytes: int,
    fn: Callable[[], object],
    repeat: int = 3,
    clock: Callable[[], float] = time.process_time,
) -> float:
    """Median throughput of ``repeat`` runs in MB/s (of CPU time by default)."""
    return nbytes / seconds(fn, repeat, clock) / 1e6


def _in_two_threads(fn: Callable[[bytes], object], halves: list[bytes]) -> None:
    """``fn`` over each half at once, one thread per half."""
    threads = [threading.Thread(target=fn, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def thread_rows(data: bytes, chunk_params: ChunkerParams, repeat: int) -> list[tuple[str, str]]:
    """Does the work release the GIL?  Each of two halves of ``data`` handled by its own
    thread, against one after the other in one thread, with SHA-256 (hashlib releases the
    GIL) as the control.  Only meaningful with two free cores."""
    p = chunk_params
    halves = [data[: len(data) // 2], data[len(data) // 2 :]]
    rows = []
    one_cpu = len(os.sched_getaffinity(0)) < 2
    for label, fn in (
        ("fastcdc", lambda b: list(fastcdc_cy(b, p.min_size, p.avg_size, p.max_size))),
        ("SHA-256 (control)", lambda b: hashlib.sha256(b).digest()),
    ):
        name = (
            f"{label}, {len(data) >> 20} MiB in two halves: two threads vs one after the "
            "other (wall)"
        )
        if one_cpu:
            rows.append((name, "not measured: this run may use one CPU only"))
            continue
        wall = time.perf_counter
        apart = seconds(lambda fn=fn: _in_two_threads(fn, halves), repeat, wall)
        serial = seconds(lambda fn=fn: [fn(h) for h in halves], repeat, wall)
        rows.append(
            (name, f"{apart:.3f} s vs {serial:.3f} s (x{serial / apart:.2f} from the 2nd thread)")
        )
    return rows


def _aes_gcm(blocks: list[bytes]) -> tuple[str, Callable[[], object]] | None:
    """AES-256-GCM over the same blocks, for comparison with XChaCha20-Poly1305 (what a
    format with AES would cost); None without ``cryptography`` (a test extra)."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return None
    aead, nonce = AESGCM(bytes(32)), bytes(12)
    return (
        "AES-256-GCM, 1 MiB blobs (OpenSSL, for comparison; not in the format)",
        lambda: [aead.encrypt(nonce, b, None) for b in blocks],
    )


def _source_text(size: int) -> bytes:
    """``size`` bytes of real text: the Python standard library's ``.py`` files, repeated
    only if they are fewer."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py") and total < size:
                with open(os.path.join(dirpath, name), "rb") as f:
                    parts.append(f.read())
                total += len(parts[-1])
    text = b"".join(parts) or b"text "
    return (text * (size // len(text) + 1))[:size]


def _packs(n: int, blobs_per_pack: int, blob_size: int) -> Iterator[tuple[bytes, list[Entry]]]:
    """The benchmark's packs: (pack id, [(blob id, offset, length)]), the same every time."""
    rnd = random.Random(1)
    for p in range(0, n, blobs_per_pack):
        pack_id = rnd.randbytes(32)
        yield (
            pack_id,
            [
                (rnd.randbytes(32), j * blob_size, blob_size + crypto.SEAL_OVERHEAD + 1)
                for j in range(min(blobs_per_pack, n - p))
            ],
        )


def _build_index(n: int, blobs_per_pack: int, blob_size: int) -> MasterIndex:
    idx = MasterIndex()
    for pack_id, entries in _packs(n, blobs_per_pack, blob_size):
        idx.add_pack(pack_id, entries)
    idx.compact()
    return idx


def _index_files(
    n: int, blobs_per_pack: int, blob_size: int, per_file: int, pruned: bool = False
) -> tuple[MemoryBackend, crypto.MasterKeys]:
    """A memory backend holding the benchmark's packs as real index files of at most
    ``per_file`` blobs each (whole packs), as a repository's writers leave them; with
    ``pruned``, the last file supersedes another, as a finished prune leaves them (an
    older cas's prune left one file of every blob: ``per_file`` 0)."""
    backend = MemoryBackend()
    backend.create()
    keys = crypto.MasterKeys.generate()
    store = IndexStore(backend, keys)
    packs: dict[bytes, list[packfmt.PackEntry]] = {}
    count = 0
    for pack_id, entries in _packs(n, blobs_per_pack, blob_size):
        if count + len(entries) > per_file and packs and per_file:
            store.write(indexfmt.IndexFile(packs))
            packs, count = {}, 0
        packs[pack_id] = [
            packfmt.PackEntry(b, BlobType.DATA, off, length, length - crypto.SEAL_OVERHEAD)
            for b, off, length in entries
        ]
        count += len(entries)
    if packs:
        store.write(indexfmt.IndexFile(packs, [os.urandom(32)] if pruned else []))
    return backend, keys


def _load_index(backend: MemoryBackend, keys: crypto.MasterKeys) -> MasterIndex:
    store = IndexStore(backend, keys)
    store.load()
    return store.index


@dataclass
class IndexFigures:
    """What one way of building a ``MasterIndex`` costs (medians where timed)."""

    at_rest: float  # memory_bytes() per blob
    at_rest_traced: float  # traced heap still held once built, per blob
    peak: float  # traced heap peak while building, per blob
    seconds: float
    gets_present: float  # lookups per second
    gets_absent: float
    contains: float


def _traced(build: Callable[[], MasterIndex], n: int) -> tuple[float, float]:
    """(peak, at rest) traced heap bytes per blob over ``build()``.

    tracemalloc sees Python's allocations (all of the index's), and slows
    allocation a lot: timings are taken separately.
    """
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    idx = build()
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del idx
    return (peak - base) / n, (current - base) / n


def _lookup_ids(n: int, blobs_per_pack: int, count: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` IDs the index holds (spread over it) and ``count`` it does not."""
    every = max(1, n // count)
    ids = (e[0] for _, entries in _packs(n, blobs_per_pack, 1) for e in entries)
    present = list(islice(ids, 0, None, every))[:count]
    rnd = random.Random(2)
    return present, [rnd.randbytes(32) for _ in range(count)]


def _lookup_rates(
    idx: MasterIndex, ids: tuple[list[bytes], list[bytes]], repeat: int
) -> list[float]:
    """Median lookups per second: ``get`` of present IDs, of absent ones, ``in`` of both."""
    present, absent = ids
    get, both = idx.get, present + absent
    assert all(get(b) is not None for b in present[:1000])
    assert not any(b in idx for b in absent[:1000])
    out = []
    for fn, k in (
        (lambda: [get(b) for b in present], len(present)),
        (lambda: [get(b) for b in absent], len(absent)),
        (lambda: [b in idx for b in both], len(both)),
    ):
        runs = []
        for _ in range(repeat):
            t = time.process_time()
            fn()
            runs.append(k / (time.process_time() - t))
        out.append(statistics.median(runs))
    return out


def index_figures(
    build: Callable[[], MasterIndex], n: int, blobs_per_pack: int, repeat: int, lookups: int
) -> IndexFigures:
    """Build ``repeat`` times timed and once traced; lookups timed on the last build."""
    times = []
    idx = MasterIndex()
    for _ in range(repeat):
        del idx
        gc.collect()
        t = time.process_time()
        idx = build()
        times.append(time.process_time() - t)
    at_rest = idx.memory_bytes() / n
    rates = _lookup_rates(idx, _lookup_ids(n, blobs_per_pack, lookups), repeat)
    del idx
    peak, traced = _traced(build, n)
    return IndexFigures(at_rest, traced, peak, statistics.median(times), *rates)


def index_rows(n: int, repeat: int, lookups: int) -> list[tuple[str, str]]:
    """The master index in both shapes: built directly, and loaded from index files."""
    rows = []
    for label, per_pack, bsize in (
        ("small files (~10 KiB blobs, 1,600 per pack)", 1600, 10 << 10),
        ("large files (1 MiB chunks, 16 per pack)", 16, 1 << 20),
    ):

        def direct(per_pack: int = per_pack, bsize: int = bsize) -> MasterIndex:
            return _build_index(n, per_pack, bsize)

        backend, keys = _index_files(n, per_pack, bsize, INDEX_EVERY_BLOBS)
        pruned = _index_files(n, per_pack, bsize, INDEX_EVERY_BLOBS, pruned=True)
        older = _index_files(n, per_pack, bsize, 0, pruned=True)
        files = sum(1 for _ in backend.list(layout.INDEX))

        def loaded(backend: MemoryBackend = backend, keys: crypto.MasterKeys = keys) -> MasterIndex:
            return _load_index(backend, keys)

        def loaded_pruned(
            backend: MemoryBackend = pruned[0], keys: crypto.MasterKeys = pruned[1]
        ) -> MasterIndex:
            return _load_index(backend, keys)

        def loaded_older(
            backend: MemoryBackend = older[0], keys: crypto.MasterKeys = older[1]
        ) -> MasterIndex:
            return _load_index(backend, keys)

        for how, build in (
            ("MasterIndex.add_pack", direct),
            (f"IndexStore.load of {files} index files", loaded),
            (f"IndexStore.load of the {files} index files a prune leaves", loaded_pruned),
            ("IndexStore.load of the 1 index file an older prune left", loaded_older),
        ):
            f = index_figures(build, n, per_pack, repeat, lookups)
            rows.append(
                (
                    f"index, {n:,} blobs, {label}, {how}",
                    f"at rest {f.at_rest:.1f} B/blob (heap traced: {f.at_rest_traced:.1f}), "
                    f"peak {f.peak:.1f} B/blob, built in {f.seconds:.2f} s of CPU; "
                    f"get {f.gets_present / 1e3:.0f}k/s present, "
                    f"{f.gets_absent / 1e3:.0f}k/s absent; in {f.contains / 1e3:.0f}k/s",
                )
            )
        del backend, pruned, older
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blobs", type=int, default=1_000_000)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each figure (median)")
    ap.add_argument("--lookups", type=int, default=200_000, help="present and absent IDs")
    ap.add_argument("--index-only", action="store_true", help="only the master index rows")
    ap.add_argument("--only", metavar="TEXT", help="only the rows whose label holds TEXT")
    args = ap.parse_args()
    rows = [] if args.only else index_rows(args.blobs, args.repeat, args.lookups)
    if args.index_only:
        _print(rows)
        return

    size = args.mib << 20
    data = os.urandom(size)
    keys = crypto.MasterKeys.generate()
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
    source = _source_text(size)
    source_blocks = [source[i : i + mib] for i in range(0, size, mib)]
    packed_source = [compress.encode_payload(b) for b in source_blocks]
    packed_text = [compress.encode_payload(b) for b in text_blocks]
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
            "zstd level 3, repetitive text (a directory listing, repeated)",
            lambda: [compress.encode_payload(b) for b in text_blocks],
        ),
        (
            "zstd level 3, source code (Python's standard library)",
            lambda: [compress.encode_payload(b) for b in source_blocks],
        ),
        (
            "zstd decode (decode_payload), repetitive text, 1 MiB blobs",
            lambda: [compress.decode_payload(b, mib, "b") for b in packed_text],
        ),
        (
            "zstd decode (decode_payload), source code, 1 MiB blobs",
            lambda: [compress.decode_payload(b, mib, "b") for b in packed_source],
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
    ]
    for label, fn in timed:
        if not args.only or args.only in label:
            rows.append((label, f"{rate(size, fn, args.repeat):.0f} MB/s of CPU"))
    aes = _aes_gcm(blocks)
    if aes is not None and (not args.only or args.only in aes[0]):
        rows.append((aes[0], f"{rate(size, aes[1], args.repeat):.0f} MB/s of CPU"))
    label = "BLAKE3 one buffer, multithreaded (wall)"
    if not args.only or args.only in label:
        fn = lambda: blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()  # noqa: E731
        rows.append((label, f"{rate(size, fn, args.repeat, time.perf_counter):.0f} MB/s"))
    threads = thread_rows(data, p, args.repeat)
    rows += [r for r in threads if not args.only or args.only in r[0]]
    for label, count, fn in item_rows(k):
        if not args.only or args.only in label:
            rows.append((label, f"{seconds(fn, args.repeat) / count * 1e9:.0f} ns each of CPU"))
    _print(rows)


def item_rows(keys: crypto.MasterKeys) -> list[tuple[str, int, Callable[[], object]]]:
    """Per-item costs of the backup's per-file and per-blob Python: a worker encodes
    each new file's node (``encode_node``) and reads back each pack header it writes
    (``decode_header``)."""
    entries, offset = [], 0
    for i in range(16384):
        entries.append(packfmt.PackEntry(i.to_bytes(32, "little"), BlobType.DATA, offset, 200, 300))
        offset += 200
    tail = packfmt.encode_pack_tail(keys, entries)
    trailer = tail[-packfmt.TRAILER_SIZE :]
    size = offset + len(tail)
    n = packfmt.header_length(trailer, size)
    header = tail[-packfmt.TRAILER_SIZE - n : -packfmt.TRAILER_SIZE]
    version = packfmt.trailer_version(trailer)
    nodes = [
        Node(b"f%d" % i, "file", 0o644, size=i, content=[bytes(32)], sizes=[i], digest=bytes(32),
             uid=1000, gid=1000, user="u", group="g", inode=i, device=5,
             mtime_ns=i, ctime_ns=i, atime_ns=i)
        for i in range(100_000)
    ]  # fmt: skip
    encode_reports, adopt_reports = _pack_reports(keys)
    return [
        (
            "per item: decode_header, a 16,384-blob pack header",
            len(entries),
            lambda: packfmt.decode_header(keys, header, size, version),
        ),
        (
            "per item: encode_node, 100,000 file nodes",
            len(nodes),
            lambda: [encode_node(x) for x in nodes],
        ),
        (
            "per item: Archiver._names_done, 1,000 batches of 100 saved files",
            100_000,
            _names_done_rounds(),
        ),
        (
            "per item: a worker's pack report, encoded, 4 packs of 16,384 blobs",
            4 * 16384,
            encode_reports,
        ),
        (
            "per item: a worker's pack report, adopted by the main process, 4 packs of "
            "16,384 blobs",
            4 * 16384,
            adopt_reports,
        ),
    ]


def _pack_reports(keys: crypto.MasterKeys) -> tuple[Callable[[], object], Callable[[], object]]:
    """A backup worker's report of a stored pack: made in the worker (``["k", ...]``,
    encoded for the socket), then read by the main process and adopted (``SaverPool._handle``:
    decoded, counted, indexed and listed in the index files written every 25,000 blobs),
    into an empty index each round.  Checkouts from before the columns (cas/backup/worker.py
    ``entry_columns``) send a list per blob."""
    import msgpack

    from cas.backup import pool, worker
    from cas.repo.packwriter import BlobSaver

    columns = getattr(worker, "entry_columns", None)
    packs = [
        (
            os.urandom(32),
            [
                packfmt.PackEntry(os.urandom(32), BlobType.DATA, 200 * i, 200, 300)
                for i in range(16384)
            ],
        )
        for _ in range(4)
    ]

    def report(pack_id: bytes, entries: list[packfmt.PackEntry]) -> bytes:
        body = columns(entries) if columns is not None else [worker._wire_entries(entries)]
        return msgpack.packb(["k", pack_id, 200 * 16384, *body], use_bin_type=True)

    frames = [report(*p) for p in packs]

    def encode() -> None:
        for p in packs:
            report(*p)

    def adopt() -> None:
        store = MemoryBackend()
        store.create()
        saver = BlobSaver(store, keys, 16 << 20, IndexStore(store, keys), None)
        handler = pool.SaverPool.__new__(pool.SaverPool)
        handler._adopt = saver.adopt_columns if columns is not None else saver.adopt  # type: ignore[attr-defined]
        for frame in frames:
            handler._handle(None, msgpack.unpackb(frame, raw=False))  # type: ignore[arg-type]

    return encode, adopt


def _names_done_rounds() -> Callable[[], object]:
    """The main process's work per file a worker saved by name (``Archiver._names_done``:
    the summary, the report, the encoded node kept), with the CLI's status-line reporter
    off a terminal, as a benchmark runs it; 1,000 batches of 100 files."""
    from types import MethodType, SimpleNamespace

    from cas.backup import archiver
    from cas.backup.anomaly import Changes
    from cas.backup.pool import SAVED
    from cas.cli.backup_progress import BackupProgress

    out = SimpleNamespace(json=False, quiet=False, progress_enabled=False)
    out.progress_due = lambda: False  # off a terminal, without -v: no status line
    arch = SimpleNamespace(summary=archiver.BackupSummary(), changes=Changes(), _pool=None)
    arch.report = BackupProgress(out)  # type: ignore[arg-type]
    arch._warn = lambda m: None
    arch._file_saved = MethodType(archiver.Archiver._file_saved, arch)
    names = [b"f%03d" % i for i in range(100)]
    results = [[SAVED, bytes(120), 500, 500, 1, 500, []] for _ in names]
    frame = SimpleNamespace(path=b"/src/dir", nodes=[], waiting=0, walked=False)
    done = archiver.Archiver._names_done

    def rounds() -> None:
        for _ in range(1000):
            frame.nodes = []
            done(arch, frame, names, results)  # type: ignore[arg-type]

    return rounds


def _print(rows: list[tuple[str, str]]) -> None:
    cpu = platform.processor() or platform.machine()
    usable = sorted(os.sched_getaffinity(0))
    print(
        f"cas core benchmarks, {time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} CPUs "
        f"(this run on CPUs {','.join(map(str, usable))}), Python {platform.python_version()}; "
        "medians of each figure's runs\n"
    )
    print("| measure | result |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
