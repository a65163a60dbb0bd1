"""Writing packs: the one pack writer (backup and repack) and the backup's saving pipeline.

:class:`PackWriter` fills ``OPEN_PACKS`` packers per blob type with sealed
blobs, each blob going to one of them at random (as restic 0.18 does), and
stores each finished pack (data packs flagged cold, tree packs also kept in
the local cache).  So a file's consecutive chunks do not sit side by side in
one pack, and pack sizes do not line up with file boundaries (spec §9.5,
§15).  Backup and prune's repack both store packs through it.  Open packs
are spooled to temporary files beyond a small buffer (cas/repo/packer.py),
so four of them cost little memory.

:class:`BlobSaver` is the backup side: it deduplicates against the index and
the blobs in flight, seals blobs on worker threads (zstd, libsodium and
hashlib release the GIL) and uploads finished packs on other threads
(``--connections``), so a pack waiting for fsync or the network never idles
a core.  Write ordering (spec §14): a pack is stored before any index file
names it; an index file is written every ``INDEX_EVERY_PACKS`` packs or
``INDEX_EVERY_BLOBS`` blobs, so an interrupted backup's uploads are found by
the next run.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cas import crypto, failpoints
from cas.backend.base import Backend, scan_pieces, write_file
from cas.crypto import BlobType
from cas.errors import CasError
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.ids import ID_LEN
from cas.ipc import usable_cores
from cas.repo import layout
from cas.repo.cache import LocalCache
from cas.repo.indexstore import IndexStore
from cas.repo.packer import FinishedPack, Packer

# Write an index file after this many packs, so an interrupted backup's
# uploads are found (and not sent again) by the next run.
INDEX_EVERY_PACKS = 32
# ... or after this many blobs, so packs of tiny blobs (100,000 to a pack) do
# not keep a million unindexed entries in memory, and so that loading the index
# holds the columns of a file this large at most besides the index itself (its
# peak per blob, docs/performance.md "Memory").
INDEX_EVERY_BLOBS = 25_000
# Blobs go to the sealing threads in batches of this many bytes or blobs (save_blob).
BATCH_BYTES = 4 << 20
BATCH_BLOBS = 512
# Packs open at once per blob type; each new blob goes to one of them at random.  At
# the end the partly filled ones are poured together, so a backup still leaves one
# partly filled pack per type.
OPEN_PACKS = 4
# ... poured together in pieces of this many bytes (read back from their temporary
# files: a whole pack's worth at once was the main process's largest allocation).
POUR_PIECE = 1 << 20

# A pack is also closed once it holds this many blobs, whatever its size (spec §9.5).
# Without it a million files of ~190 bytes put ~88,000 blobs in each 16 MiB pack:
# nothing was stored until the end of the backup (a kill -9 kept nothing), every
# process held the entries of its open packs and the main process the IDs in flight
# until then, and a version 2 header (padded to the power of two of its count, §9.6)
# was 5.4 MiB. 16,384 is a power of two: its header carries no padding (672 KiB).
PACK_BLOBS = 16_384


@dataclass
class WriteStats:
    """What this session added to the repository."""

    blobs: dict[BlobType, int] = field(default_factory=lambda: {t: 0 for t in BlobType})
    raw_bytes: int = 0  # plaintext of new blobs
    stored_bytes: int = 0  # sealed (compressed, encrypted) bytes of new blobs
    packs: int = 0
    pack_bytes: int = 0
    index_files: int = 0
    data_raw_bytes: int = 0  # plaintext of new data blobs
    data_incompressible_bytes: int = 0  # of those, in blobs that did not shrink by 10%

    def add_columns(self, types: list[BlobType], stored: Sequence[int], raw: Sequence[int]) -> None:
        """``add`` of each blob ``i`` (``types[i]``, ``raw[i]``, ``stored[i]``)."""
        blobs = self.blobs
        for t in set(types):
            blobs[t] += types.count(t)
        self.raw_bytes += sum(raw)
        self.stored_bytes += sum(stored)
        data = [(r, s) for t, r, s in zip(types, raw, stored, strict=True) if t is BlobType.DATA]
        self.data_raw_bytes += sum(r for r, _ in data)
        self.data_incompressible_bytes += sum(r for r, s in data if s * 10 >= r * 9)

    def add(self, blob_type: BlobType, raw_length: int, stored_length: int) -> None:
        """Count one new blob (``stored_length``: sealed, with its overhead)."""
        self.blobs[blob_type] += 1
        self.raw_bytes += raw_length
        self.stored_bytes += stored_length
        if blob_type == BlobType.DATA:
            self.data_raw_bytes += raw_length
            if stored_length * 10 >= raw_length * 9:
                self.data_incompressible_bytes += raw_length


class Choices:
    """Uniform choices below ``n`` (up to 256) from the OS's randomness, like
    ``SystemRandom().randrange(n)`` but drawn 4 KiB at a time: one ``getrandom``
    system call per thousands of blobs instead of one per blob (a backup of many
    tiny files makes one choice per blob)."""

    POOL = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def below(self, n: int) -> int:
        """A uniform integer in ``range(n)``."""
        if n <= 1:
            return 0
        if n > 256:
            return random.SystemRandom().randrange(n)
        limit = 256 - 256 % n  # bytes from here on would favour the low values
        while True:
            if self._at >= len(self._pool):
                self._pool, self._at = os.urandom(self.POOL), 0
            b = self._pool[self._at]
            self._at += 1
            if b < limit:
                return b % n


class PackWriter:
    """Sealed blobs into packs, one open packer per blob type; finished packs stored.

    Not thread-safe: callers serialise ``add`` and ``finish_open``; ``store``
    may run on any thread.  ``on_stored`` is told of every stored pack.
    """

    def __init__(
        self,
        backend: Backend,
        keys: crypto.KeyBase,
        pack_size: int,
        cache: LocalCache | None,
        on_stored: Callable[[FinishedPack], None],
        *,
        verify_size: bool = False,
        version: int = 1,
        open_packs: int = OPEN_PACKS,
        spool: bool = True,
    ) -> None:
        self.backend = backend
        self._keys = keys
        self._pack_size = pack_size
        self.cache = cache
        self._on_stored = on_stored
        self._verify_size = verify_size
        self._version = version
        # Open packs are spooled to temporary files (cas/repo/packer.py): memory holds
        # a small buffer per open pack, and a pack only while it is stored.
        self._spool = spool
        # The provider must not predict where a blob goes: the OS's randomness.
        self._random = random.SystemRandom()
        self._choices = Choices()
        self._packers = {t: [self._new(t) for _ in range(max(1, open_packs))] for t in BlobType}

    def _new(self, blob_type: BlobType) -> Packer:
        return Packer(self._keys, blob_type, self._version, spool=self._spool)

    def _full(self, packer: Packer) -> bool:
        """Whether ``packer`` is to be finished: its blobs reached the pack size or
        PACK_BLOBS of them (spec §9.5)."""
        return packer.size >= self._pack_size or len(packer) >= PACK_BLOBS

    def add(
        self,
        blob_type: BlobType,
        blob_id: bytes,
        sealed: bytes | bytearray | memoryview,
        raw_length: int,
    ) -> Packer | None:
        """Append a sealed blob to one of the open packers, chosen at random; returns
        that packer once full (to finish outside a lock), else None."""
        packers = self._packers[blob_type]
        i = self._choices.below(len(packers))
        packer = packers[i]
        packer.add(blob_id, sealed, raw_length)
        if not self._full(packer):
            return None
        packers[i] = self._new(blob_type)
        return packer

    def take_open(
        self, blob_type: BlobType, piece: int
    ) -> Iterator[tuple[bytes, list[packfmt.PackEntry]]]:
        """The sealed blobs of the open packers of ``blob_type`` in pieces of about
        ``piece`` bytes (Packer.take), the packers replaced by empty ones."""
        packers = self._packers[blob_type]
        self._packers[blob_type] = [self._new(blob_type) for _ in packers]
        return (p for packer in packers for p in packer.take(piece))

    def finish_open(self) -> list[FinishedPack]:
        """Finish every packer that holds blobs: the partly filled packers of a type are
        poured together (in random order) into as few packs as the pack size allows."""
        finished = []
        for blob_type in self._packers:
            finished += self.pour_open(blob_type)
            packers = self._packers[blob_type]
            finished += [p.finish() for p in packers if len(p)]  # one at most now
            self._packers[blob_type] = [self._new(blob_type) for _ in packers]
        return finished

    def pour_open(self, blob_type: BlobType) -> list[FinishedPack]:
        """Pour the partly filled packers of ``blob_type`` together, in random order:
        the packs that fills are finished and returned, the rest stays open in one
        packer.  A backup worker does this before it hands its last
        blobs to the main process: what it hands over is then less than one pack,
        not one partly filled pack per open packer."""
        packers = self._packers[blob_type]
        full = [p for p in packers if len(p)]
        if len(full) <= 1:
            return []
        self._random.shuffle(full)
        finished = []
        out = self._new(blob_type)
        for body, entries in (piece for p in full for piece in p.take(POUR_PIECE)):
            view = memoryview(body)
            for e in entries:
                out.add(e.blob_id, view[e.offset : e.offset + e.length], e.raw_length)
                if self._full(out):
                    finished.append(out.finish())
                    out = self._new(blob_type)
        self._packers[blob_type] = [out, *(self._new(blob_type) for _ in packers[1:])]
        return finished

    def store(self, pack: FinishedPack) -> None:
        """Store a finished pack, then report it (callable from worker threads).

        The pack was parsed back before this (Packer.finish); the backend's
        write is durable and checksummed (fsync locally, Content-MD5/SHA-256 on
        S3), so no extra HEAD per pack is needed to trust it, except where
        ``verify_size`` asks for one (repack, which replaces packs).
        """
        name = layout.pack_name(pack.pack_id)
        is_tree = bool(pack.entries) and pack.entries[0].type == BlobType.TREE
        cold = bool(pack.entries) and not is_tree
        try:
            data = pack.in_memory
            if data is not None:
                self.backend.write(name, data, cold=cold)
            else:
                # From the packer's temporary file, in pieces: never the whole pack.
                spool = pack.file()
                write_file(self.backend, name, spool, pack.size, cold=cold)
            if self._verify_size and self.backend.stat(name).size != pack.size:
                raise CasError(f"pack {name} was stored with the wrong size")
            if self.cache is not None and is_tree:
                pieces = (data,) if data is not None else scan_pieces(spool, pack.size)
                self.cache.put_pieces("packs", pack.pack_id, pieces)
        finally:
            pack.discard()
        self._on_stored(pack)


class BlobSaver:
    """The backup's blob pipeline: dedup, seal on threads, pack, upload, index as it goes."""

    def __init__(
        self,
        backend: Backend,
        keys: crypto.KeyBase,
        pack_size: int,
        indexes: IndexStore | None,
        cache: LocalCache | None,
        *,
        on_pack: Callable[[FinishedPack], None] | None = None,
        threads: int | None = None,
        batch_bytes: int = BATCH_BYTES,
        batches: int | None = None,
        fmt: packfmt.PackFormat = packfmt.V1,
    ) -> None:
        # Without ``indexes`` (a backup worker process, cas/backup/worker.py) every
        # blob handed to ``save`` is new, and each stored pack goes to ``on_pack``
        # instead of an index: the process that asked for it indexes it.
        self._keys = keys
        self._indexes = indexes
        self._on_pack = on_pack
        self.stats = WriteStats()
        self.compression_level: int | None = 3
        self.padding = fmt.padding  # of sealed blobs (spec §8.1)
        self._lock = threading.RLock()
        self.writer = PackWriter(backend, keys, pack_size, cache, self._stored, version=fmt.version)
        self._inflight: set[bytes] = set()  # blobs in open packers
        # Stored packs not yet in an index file: pack ID -> (blob count, its map in the
        # index file, packed: indexfmt.encode_pack_doc), not a PackEntry per blob.
        self._unindexed: dict[bytes, tuple[int, bytes]] = {}
        self._unindexed_blobs = 0
        # Sealing threads (compression and encryption: one per core) hand
        # finished packs to uploading threads (``--connections``).
        # taskset -c 0: one sealing thread, not one per CPU
        self.workers = threads if threads is not None else usable_cores()
        self.connections = max(2, self.workers)
        self._pool: ThreadPoolExecutor | None = None
        self._upload_pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()
        # ``batches`` of ``batch_bytes`` at most wait for or are in sealing (memory).
        self._batch_limit = batch_bytes
        self._slots = threading.BoundedSemaphore(batches or 2 * self.workers + 2)
        self._upload_slots = threading.BoundedSemaphore(self.connections)
        self._worker_error: BaseException | None = None
        self._batch: list[tuple[BlobType, bytes, bytes]] = []
        self._batch_bytes = 0

    def set_connections(self, n: int) -> None:
        """Upload at most ``n`` packs at once (before the first save)."""
        if self._upload_pool is None and n >= 1:
            self.connections = n
            self._upload_slots = threading.BoundedSemaphore(n)

    def _known(self, blob_id: bytes) -> bool:
        """Whether the blob is stored or about to be (with the lock held)."""
        return blob_id in self._inflight or (
            self._indexes is not None and blob_id in self._indexes.index
        )

    def has(self, blob_id: bytes) -> bool:
        """Whether the blob is stored or about to be."""
        with self._lock:
            return self._known(blob_id)

    def claim(self, blob_ids: list[bytes]) -> bytes:
        """For blobs another process stores: 1 for each that is new, which now counts
        as in flight (no one else stores it), 0 for each stored or claimed already.

        The claimant must store each claimed blob in a pack it then hands to
        ``adopt``; the snapshot that uses them is written after that.
        """
        answer = bytearray(len(blob_ids))
        with self._lock:
            self._raise_worker_error()
            # _known inlined: this runs once per blob a worker reads, in the main process
            inflight = self._inflight
            index = None if self._indexes is None else self._indexes.index
            for i, blob_id in enumerate(blob_ids):
                if blob_id not in inflight and (index is None or blob_id not in index):
                    inflight.add(blob_id)
                    answer[i] = 1
        return bytes(answer)

    def take_open(self, piece: int) -> Iterator[tuple[bytes, list[packfmt.PackEntry]]]:
        """Once everything is sealed (``wait``): the sealed data blobs not yet in a stored
        pack, taken out of this saver in pieces of about ``piece`` bytes (Packer.take:
        a worker hands them to the main process, so a backup ends with one partly
        filled data pack, not one per worker)."""
        self.wait()
        with self._lock:
            poured = self.writer.pour_open(BlobType.DATA)
        for pack in poured:  # full packs: stored here, beside the other workers
            self._upload(pack)
        with self._lock:
            return self.writer.take_open(BlobType.DATA, piece)

    def add_sealed(self, body: bytes, entries: list[packfmt.PackEntry]) -> None:
        """Sealed blobs another process claimed and sealed (``take_open`` there): packed
        and stored with this saver's own."""
        full = []
        view = memoryview(body)  # slices share it: no copy of each blob
        with self._lock:
            self._raise_worker_error()
            for e in entries:
                self.stats.add(e.type, e.raw_length, e.length)
                sealed = view[e.offset : e.offset + e.length]
                packer = self.writer.add(e.type, e.blob_id, sealed, e.raw_length)
                if packer is not None:
                    full.append(packer)
        for packer in full:
            self._upload(packer.finish())

    def adopt(self, pack_id: bytes, size: int, entries: list[packfmt.PackEntry]) -> None:
        """A pack another process stored with blobs it claimed: counted and indexed
        as if this saver had stored it."""
        self.adopt_columns(pack_id, size, packfmt.PackColumns.of(entries))

    def adopt_columns(self, pack_id: bytes, size: int, columns: packfmt.PackColumns) -> None:
        """``adopt`` of a pack whose blobs come as columns: counted, indexed and listed
        in the next index file without a ``PackEntry`` per blob (a backup worker's pack
        of 16,384 tiny blobs: per blob, this is the main process's work)."""
        ids, types, offsets, lengths, raw_lengths = columns
        n = len(types)
        if len(ids) != ID_LEN * n or not len(offsets) == len(lengths) == len(raw_lengths) == n:
            raise ValueError("the columns of a pack disagree in length")
        blob_ids = [ids[i : i + ID_LEN] for i in range(0, len(ids), ID_LEN)]
        kinds = [packfmt.BLOB_TYPES[t] for t in types]
        with self._lock:
            self.stats.add_columns(kinds, lengths, raw_lengths)
        self._record_rows(
            pack_id,
            size,
            list(zip(blob_ids, types, offsets, lengths, raw_lengths, strict=True)),
            zip(blob_ids, offsets, lengths, strict=True),
            blob_ids,
        )

    def save(self, blob_type: BlobType, data: bytes, blob_id: bytes) -> bool:
        """Store ``data`` as ``blob_id`` unless already there; whether it is new.

        Compressing, sealing and storing happen on worker threads; a worker's
        failure is raised by a later call or by ``flush``.
        """
        with self._lock:
            self._raise_worker_error()
            if self._known(blob_id):
                return False
            self._inflight.add(blob_id)
        # Small blobs travel to the workers in batches: one hand-off per blob
        # would cost more than sealing it, and would make this (reading) thread
        # wait for the GIL after each of its system calls.
        self._batch.append((blob_type, blob_id, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= self._batch_limit or len(self._batch) >= BATCH_BLOBS:
            self._submit_batch()
        return True

    def _submit_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
            return
        if self.workers == 0:  # sealing in the calling thread
            self._slots.acquire()
            self._sealing_job(batch)
            return
        self._slots.acquire()  # bounds memory: at most this many batches in flight
        try:
            future = self._executor().submit(self._sealing_job, batch)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._done)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cas-seal")
        return self._pool

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
            err = future.exception()
            if err is not None and self._worker_error is None:
                self._worker_error = err

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            raise self._worker_error

    def _sealing_job(self, batch: list[tuple[BlobType, bytes, bytes]]) -> None:
        """Seal a batch, then add it to the packers in one go.

        A batch's blobs keep their order within each open pack they are spread
        over (restore still reads neighbours in one request,
        cas/restore/blobstream.py); packs are finished (joined, parsed back,
        hashed) outside the lock.
        """
        try:
            level, padding = self.compression_level, self.padding
            sealed = [
                (
                    t,
                    bid,
                    packfmt.seal_blob(self._keys, t, bid, data, level, None, padding),
                    len(data),
                )
                for t, bid, data in batch
            ]
            # the plaintexts, no longer needed: not held (the submitted job keeps this
            # list) while the blobs are packed and a full pack waits for an upload slot
            batch.clear()
            full = []
            with self._lock:
                for blob_type, blob_id, blob, raw_length in sealed:
                    self.stats.add(blob_type, raw_length, len(blob))
                    packer = self.writer.add(blob_type, blob_id, blob, raw_length)
                    if packer is not None:
                        full.append(packer)
            del sealed
            for packer in full:
                self._upload(packer.finish())
        finally:
            self._slots.release()

    def _upload(self, pack: FinishedPack) -> None:
        """Store ``pack`` on an uploading thread; blocks while too many are in flight."""
        self._upload_slots.acquire()  # bounds memory: packs waiting for upload
        try:
            with self._lock:
                if self._upload_pool is None:
                    self._upload_pool = ThreadPoolExecutor(
                        self.connections, thread_name_prefix="cas-upload"
                    )
                future = self._upload_pool.submit(self._upload_job, pack)
                self._futures.add(future)
        except BaseException:
            self._upload_slots.release()
            raise
        future.add_done_callback(self._done)

    def _upload_job(self, pack: FinishedPack) -> None:
        try:
            self.writer.store(pack)
        finally:
            self._upload_slots.release()

    def _stored(self, pack: FinishedPack) -> None:
        """Record a stored pack; write an index file when enough are unindexed."""
        if self._on_pack is not None:
            self._on_pack(pack)
            with self._lock:
                self.stats.packs += 1
                self.stats.pack_bytes += pack.size
                self._inflight.difference_update(e.blob_id for e in pack.entries)
            return
        self._record(pack.pack_id, pack.size, pack.entries)

    def _record(self, pack_id: bytes, size: int, entries: list[packfmt.PackEntry]) -> None:
        """Index a stored pack (this saver's, or a worker's), writing an index file when
        enough are unindexed."""
        self._record_rows(
            pack_id,
            size,
            [indexfmt.blob_row(e) for e in entries],
            ((e.blob_id, e.offset, e.length) for e in entries),
            [e.blob_id for e in entries],
        )

    def _record_rows(
        self,
        pack_id: bytes,
        size: int,
        rows: list[indexfmt.BlobRow],
        locations: Iterable[tuple[bytes, int, int]],
        blob_ids: list[bytes],
    ) -> None:
        """``_record`` of a pack's index file rows, (blob ID, offset, length) of its
        blobs and their IDs."""
        assert self._indexes is not None
        failpoints.hit("pack-stored")  # a worker's pack: once this process knows of it
        packed = indexfmt.encode_pack_doc(pack_id, rows)
        with self._lock:
            self.stats.packs += 1
            self.stats.pack_bytes += size
            self._unindexed[pack_id] = (len(rows), packed)
            self._indexes.index.add_pack(pack_id, locations)
            self._inflight.difference_update(blob_ids)
            self._unindexed_blobs += len(rows)
            due = (
                len(self._unindexed) >= INDEX_EVERY_PACKS
                or self._unindexed_blobs >= INDEX_EVERY_BLOBS
            )
        if due:
            self._write_index()

    def _write_index(self) -> None:
        with self._lock:
            packs, self._unindexed = self._unindexed, {}
            self._unindexed_blobs = 0
        if not packs or self._indexes is None:
            return
        failpoints.hit("before-index")
        try:
            self._indexes.write_packed([packed for _, packed in packs.values()])
        except BaseException:
            with self._lock:
                self._unindexed.update(packs)
                self._unindexed_blobs += sum(n for n, _ in packs.values())
            raise
        failpoints.hit("index-written")
        with self._lock:
            self.stats.index_files += 1

    def wait(self) -> None:
        """Wait until every blob handed to ``save`` is sealed (and packed)."""
        self._submit_batch()
        while True:
            with self._lock:
                pending = list(self._futures)
            if not pending:
                break
            for f in pending:
                f.exception()  # waits; errors are collected by _done
        with self._lock:
            self._raise_worker_error()

    def flush(self) -> None:
        """Store every open pack, then the index file naming them (in that order)."""
        self.wait()
        with self._lock:
            finished = self.writer.finish_open()
        for pack in finished:
            self.writer.store(pack)
        self._write_index()

    def close(self) -> None:
        """Stop the worker threads (unsaved blobs are dropped)."""
        for pool in (self._pool, self._upload_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._upload_pool = None
