"""A repository: keys, config, index, blobs in packs, snapshots (spec/format.md).

Write ordering (spec §14): a pack is stored before any index file names it,
an index file before any snapshot needs it.  A crash therefore leaves at
worst packs no index names, which the next backup may re-upload and prune
removes.  Every object read is checked against its name (SHA-256) or its
AEAD tag before it is trusted.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cas import crypto, failpoints
from cas.backend.base import Backend
from cas.chunking.chunker import Chunker, ChunkerParams
from cas.crypto import BlobType
from cas.errors import (
    BlobNotFound,
    CasError,
    FormatError,
    IntegrityError,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsupportedVersion,
    UsageError,
    WrongPassword,
)
from cas.format import FORMAT_VERSION
from cas.format import config as configfmt
from cas.format import index as indexfmt
from cas.format import keyfile as keyfmt
from cas.format import pack as packfmt
from cas.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from cas.ids import storage_id
from cas.repo import layout, locks
from cas.repo.cache import LocalCache
from cas.repo.index import Location, MasterIndex
from cas.repo.packer import FinishedPack, Packer

# Write an index file after this many packs, so an interrupted backup's
# uploads are found (and not sent again) by the next run.
INDEX_EVERY_PACKS = 32
# ... or after this many blobs, so packs of tiny blobs (100,000 to a pack) do
# not keep a million unindexed entries in memory.
INDEX_EVERY_BLOBS = 100_000
# Blobs go to the sealing threads in batches of this many bytes or blobs (save_blob).
BATCH_BYTES = 4 << 20
BATCH_BLOBS = 512
TREE_PACKS_IN_MEMORY = 8


@dataclass
class KeyInfo:
    """A key file as listed by ``cas key list``."""

    key_id: bytes
    created: str
    hostname: str
    username: str
    type: str
    current: bool


@dataclass
class WriteStats:
    """What this session added to the repository."""

    blobs: dict[BlobType, int] = field(default_factory=lambda: {t: 0 for t in BlobType})
    raw_bytes: int = 0  # plaintext of new blobs
    stored_bytes: int = 0  # sealed (compressed, encrypted) bytes of new blobs
    packs: int = 0
    pack_bytes: int = 0
    index_files: int = 0


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_verified(backend: Backend, name: str, what: str) -> bytes:
    """Read a whole content-named object and check that it hashes to its name."""
    raw = backend.read(name)
    expected = layout.id_from_name(name)
    if expected is None or storage_id(raw) != expected:
        raise IntegrityError(what=f"{what} {name}", detail="content does not match its name")
    return raw


class Repository:
    """An open repository.  Use :func:`init_repository` or :func:`open_repository`."""

    def __init__(
        self, backend: Backend, keys: crypto.MasterKeys, config: configfmt.Config, key_id: bytes
    ) -> None:
        self.backend = backend
        self.keys = keys
        self.config = config
        self.key_id = key_id
        self.index = MasterIndex()
        self.garbage_index = MasterIndex()  # blobs in packs awaiting deletion (read-only)
        self.stats = WriteStats()
        self.compression_level: int | None = 3
        self._lock = threading.RLock()
        self._packers = {t: Packer(keys, t) for t in BlobType}
        self._inflight: set[bytes] = set()  # blobs in open packers
        self._unindexed: dict[bytes, list[packfmt.PackEntry]] = {}
        self._unindexed_blobs = 0
        self._index_loaded = False
        # Sealing threads (compression and encryption: one per core) hand
        # finished packs to uploading threads (``--connections``), so a pack
        # waiting for fsync or for the network never idles a core.
        self.workers = max(1, os.cpu_count() or 1)
        self.connections = max(2, self.workers)
        self._pool: ThreadPoolExecutor | None = None
        self._upload_pool: ThreadPoolExecutor | None = None
        self._futures: set[Future[None]] = set()
        self._slots = threading.BoundedSemaphore(2 * self.workers + 2)
        self._upload_slots = threading.BoundedSemaphore(self.connections)
        self._worker_error: BaseException | None = None
        self._batch: list[tuple[BlobType, bytes, bytes]] = []
        self._batch_bytes = 0
        self.cache: LocalCache | None = None  # whole tree packs, when a cache is in use
        self.damaged_index_files: dict[bytes, str] = {}
        self._tree_packs: OrderedDict[bytes, bytes] = OrderedDict()

    # -- chunking ---------------------------------------------------------------

    def chunker(self) -> Chunker:
        """A chunker keyed for this repository."""
        return Chunker(crypto.chunker_permutation(self.keys.chunker_key), self.config.chunker)

    # -- keys -------------------------------------------------------------------

    def list_keys(self) -> list[KeyInfo]:
        """Every key file, parsed (their master keys stay sealed)."""
        out = []
        for info in self.backend.list(layout.KEYS):
            kid = layout.id_from_name(info.name)
            if kid is None:
                continue
            kf = keyfmt.decode_keyfile(read_verified(self.backend, info.name, "key file"))
            out.append(
                KeyInfo(kid, kf.created, kf.hostname, kf.username, kf.type, kid == self.key_id)
            )
        return sorted(out, key=lambda k: (k.created, k.key_id))

    def add_key(self, password: bytes, kdf: crypto.KdfParams | None = None) -> bytes:
        """Store a new key file wrapping this repository's master keys; returns its ID."""
        return _write_key(self.backend, self.keys, password, kdf or crypto.KdfParams.new())

    def remove_key(self, key_id: bytes) -> None:
        """Delete a key file; refuses the one this session was opened with."""
        if key_id == self.key_id:
            raise CasError("refusing to remove the key in use; open with another key first")
        name = layout.key_name(key_id)
        self.backend.stat(name)
        self.backend.delete(name)

    def change_password(self, password: bytes, kdf: crypto.KdfParams | None = None) -> bytes:
        """Replace the current key file by one under a new password (new first, then old)."""
        new_id = self.add_key(password, kdf)
        self.backend.delete(layout.key_name(self.key_id))
        self.key_id = new_id
        return new_id

    # -- index ------------------------------------------------------------------

    def index_files(self) -> list[bytes]:
        """IDs of all index files."""
        return sorted(_ids_in(self.backend, layout.INDEX))

    def read_index_file(self, file_id: bytes) -> indexfmt.IndexFile:
        """Load, verify and decode one index file."""
        raw = read_verified(self.backend, layout.index_name(file_id), "index file")
        return indexfmt.decode_index(raw, self.keys.index_key)

    def load_index(self) -> None:
        """Read every index file into the master index (once).

        Index files are decoded one at a time and dropped once added, so a
        million blobs cost the compact index, not a million decoded entries.
        Only while a prune is under way (superseded files, packs marked as
        garbage) must all files be seen before any is used: then the files
        are read again, the slow way.
        """
        if self._index_loaded:
            return
        for fid in self.index_files():
            try:
                f = self.read_index_file(fid)
            except (IntegrityError, UnsupportedVersion) as e:
                self.damaged_index_files[fid] = str(e)
                continue
            if f.supersedes or f.garbage:
                self._load_index_during_prune()
                break
            for pack_id, entries in f.packs.items():
                self.index.add_pack(pack_id, ((e.blob_id, e.offset, e.length) for e in entries))
        self.index.compact()
        self.garbage_index.compact()
        self._index_loaded = True

    def _load_index_during_prune(self) -> None:
        self.index, self.garbage_index = MasterIndex(), MasterIndex()
        self.damaged_index_files.clear()
        files = self.active_index_files()
        # Packs prune marked for deletion never serve deduplication (a new
        # snapshot must not come to depend on them), but stay readable.
        doomed = {p for f in files.values() for p in f.garbage}
        for f in files.values():
            for pack_id, entries in f.packs.items():
                target = self.garbage_index if pack_id in doomed else self.index
                target.add_pack(pack_id, ((e.blob_id, e.offset, e.length) for e in entries))
            for pack_id, (_, entries) in f.garbage.items():
                self.garbage_index.add_pack(
                    pack_id, ((e.blob_id, e.offset, e.length) for e in entries)
                )

    def active_index_files(self) -> dict[bytes, indexfmt.IndexFile]:
        """Every index file that no other index file supersedes, decoded.

        A damaged index file is skipped and recorded in ``damaged_index_files``
        so that restore and backup can still use the rest (check reports it,
        ``repair index`` replaces it, prune refuses to run).
        """
        files = {}
        for fid in self.index_files():
            try:
                files[fid] = self.read_index_file(fid)
            except (IntegrityError, UnsupportedVersion) as e:
                self.damaged_index_files[fid] = str(e)
        superseded = {s for f in files.values() for s in f.supersedes}
        return {fid: f for fid, f in files.items() if fid not in superseded}

    # -- blobs ------------------------------------------------------------------

    def file_digest(self) -> crypto.FileDigest:
        """A fresh keyed whole-file digest."""
        return crypto.FileDigest(self.keys.id_key)

    def has_blob(self, blob_id: bytes) -> bool:
        """Whether the blob is stored or about to be."""
        self.load_index()
        with self._lock:
            return blob_id in self._inflight or blob_id in self.index

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """The keyed ID of ``data`` as a blob of ``blob_type``."""
        return crypto.blob_id(self.keys.id_key, blob_type, data)

    def save_blob(
        self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store ``data`` unless the repository already has it; returns (ID, whether new).

        The ID is computed here; compressing, sealing and storing happen on
        worker threads (zstd, libsodium and hashlib release the GIL), so the
        caller's reading and chunking overlap with them.  A worker's failure
        is raised by a later call or by ``flush``.
        """
        if blob_id is None:
            blob_id = self.blob_id(blob_type, data)
        self.load_index()
        with self._lock:
            self._raise_worker_error()
            if blob_id in self._inflight or blob_id in self.index:
                return blob_id, False
            self._inflight.add(blob_id)
        # Small blobs travel to the workers in batches: one hand-off per blob
        # would cost more than sealing it, and would make this (reading) thread
        # wait for the GIL after each of its system calls.
        self._batch.append((blob_type, blob_id, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_BLOBS:
            self._submit_batch()
        return blob_id, True

    def _submit_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if not batch:
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

    def set_connections(self, n: int) -> None:
        """Upload at most ``n`` packs at once (before the first save_blob)."""
        if self._upload_pool is None and n >= 1:
            self.connections = n
            self._upload_slots = threading.BoundedSemaphore(n)

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

        A batch's blobs stay together and in order in their pack (restore
        reads neighbours in one request, cas/restore/blobstream.py); packs are
        finished (joined, parsed back, hashed) outside the lock.
        """
        try:
            level = self.compression_level
            sealed = [
                (t, bid, packfmt.seal_blob(self.keys, t, bid, data, level), len(data))
                for t, bid, data in batch
            ]
            full = []
            with self._lock:
                for blob_type, blob_id, blob, raw_length in sealed:
                    packer = self._packers[blob_type]
                    packer.add(blob_id, blob, raw_length)
                    self.stats.blobs[blob_type] += 1
                    self.stats.raw_bytes += raw_length
                    self.stats.stored_bytes += len(blob)
                    if packer.size >= self.config.pack_size:
                        full.append(packer)
                        self._packers[blob_type] = Packer(self.keys, blob_type)
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
            self._store_pack(pack)
        finally:
            self._upload_slots.release()

    def _store_pack(self, pack: FinishedPack) -> None:
        """Upload a finished pack, then record it (callable from worker threads)."""
        # The pack was parsed back before this (Packer.finish); the backend's write
        # is durable and checksummed (fsync locally, Content-MD5/SHA-256 on S3),
        # so no extra HEAD per pack is needed to trust it.
        self.backend.write(
            layout.pack_name(pack.pack_id),
            pack.data,
            cold=bool(pack.entries) and pack.entries[0].type == BlobType.DATA,
        )
        failpoints.hit("pack-stored")
        if self.cache is not None and pack.entries and pack.entries[0].type == BlobType.TREE:
            self.cache.put("packs", pack.pack_id, pack.data)
        with self._lock:
            self.stats.packs += 1
            self.stats.pack_bytes += len(pack.data)
            self._unindexed[pack.pack_id] = pack.entries
            self.index.add_pack(
                pack.pack_id, ((e.blob_id, e.offset, e.length) for e in pack.entries)
            )
            self._inflight.difference_update(e.blob_id for e in pack.entries)
            self._unindexed_blobs += len(pack.entries)
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
        if not packs:
            return
        raw = indexfmt.encode_index(indexfmt.IndexFile(packs), self.keys.index_key)
        failpoints.hit("before-index")
        try:
            self.backend.write(layout.index_name(storage_id(raw)), raw)
        except BaseException:
            with self._lock:
                self._unindexed.update(packs)
                self._unindexed_blobs += sum(len(e) for e in packs.values())
            raise
        failpoints.hit("index-written")
        with self._lock:
            self.stats.index_files += 1

    def wait(self) -> None:
        """Wait until every blob handed to ``save_blob`` is sealed (and packed)."""
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
        for packer in self._packers.values():
            with self._lock:
                finished = packer.finish() if len(packer) else None
            if finished is not None:
                self._store_pack(finished)
        self._write_index()

    def locate(self, blob_id: bytes) -> Location:
        """The pack, offset and length of a stored blob; BlobNotFound if none."""
        self.load_index()
        loc = self.index.get(blob_id) or self.garbage_index.get(blob_id)
        if loc is None:
            raise BlobNotFound(blob=blob_id.hex())
        return loc

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """Read, authenticate, decrypt and re-hash one blob."""
        loc = self.locate(blob_id)
        if blob_type == BlobType.TREE and self.cache is not None:
            sealed = self._tree_pack(loc.pack_id)[loc.offset : loc.offset + loc.length]
        else:
            sealed = self.backend.read(layout.pack_name(loc.pack_id), loc.offset, loc.length)
        return packfmt.open_blob(self.keys, blob_type, blob_id, sealed, raw_length)

    def read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """``length`` raw bytes of a pack from ``offset`` (several sealed blobs at once)."""
        return self.backend.read(layout.pack_name(pack_id), offset, length)

    def open_blob(
        self, blob_type: BlobType, blob_id: bytes, sealed: bytes, raw_length: int | None = None
    ) -> bytes:
        """Authenticate, decrypt and re-hash a sealed blob read with ``read_pack_range``."""
        return packfmt.open_blob(self.keys, blob_type, blob_id, sealed, raw_length)

    def _tree_pack(self, pack_id: bytes) -> bytes:
        """A whole tree pack: from memory, else the local cache, else the backend.

        Tree packs hold only trees, which every backup and restore walks: they
        are kept whole on local disk (verified by their SHA-256 name when read)
        and the last few in memory, so each is read and hashed once per run.
        """
        with self._lock:
            pack = self._tree_packs.get(pack_id)
            if pack is not None:
                self._tree_packs.move_to_end(pack_id)
                return pack
        assert self.cache is not None
        pack = self.cache.get("packs", pack_id)
        if pack is None:
            pack = read_verified(self.backend, layout.pack_name(pack_id), "pack")
            self.cache.put("packs", pack_id, pack)
        with self._lock:
            self._tree_packs[pack_id] = pack
            while len(self._tree_packs) > TREE_PACKS_IN_MEMORY:
                self._tree_packs.popitem(last=False)
        return pack

    def pack_sizes(self) -> dict[bytes, int]:
        """Every pack file by ID with its size, from one listing (indexed or not)."""
        sizes = {}
        for info in self.backend.list(layout.DATA):
            pid = layout.id_from_name(info.name)
            if pid is not None:
                sizes[pid] = info.size
        return sizes

    def read_pack_header(self, pack_id: bytes) -> list[packfmt.PackEntry]:
        """Read and decode a pack's header with two ranged reads (trailer, then header)."""
        name = layout.pack_name(pack_id)
        size = self.backend.stat(name).size
        if size < packfmt.TRAILER_SIZE:
            raise FormatError(what=f"pack {name}", detail="shorter than a trailer")
        trailer = self.backend.read(name, size - packfmt.TRAILER_SIZE, packfmt.TRAILER_SIZE)
        n = packfmt.header_length(trailer, size)
        header = self.backend.read(name, size - packfmt.TRAILER_SIZE - n, n)
        return packfmt.decode_header(self.keys, header, size)

    def verify_pack(self, pack_id: bytes) -> list[packfmt.PackEntry]:
        """Read a whole pack and prove it: SHA-256 name, header, and every blob opened.

        Returns the header entries; raises IntegrityError/FormatError on the first problem.
        """
        name = layout.pack_name(pack_id)
        data = read_verified(self.backend, name, "pack")
        entries = packfmt.parse_pack(self.keys, data)
        for e in entries:
            sealed = data[e.offset : e.offset + e.length]
            packfmt.open_blob(self.keys, e.type, e.blob_id, sealed, e.raw_length)
        return entries

    # -- snapshots --------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> bytes:
        """Flush outstanding data and index, then store the snapshot; returns its ID."""
        self.flush()
        raw = encode_snapshot(snap, self.keys.data_key)
        sid = storage_id(raw)
        failpoints.hit("before-snapshot")
        self.backend.write(layout.snapshot_name(sid), raw)
        return sid

    def snapshot_ids(self) -> list[bytes]:
        """IDs of all snapshot files."""
        return [
            i
            for i in (layout.id_from_name(o.name) for o in self.backend.list(layout.SNAPSHOTS))
            if i
        ]

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot:
        """Read, verify and decode one snapshot."""
        raw = read_verified(self.backend, layout.snapshot_name(snapshot_id), "snapshot")
        return decode_snapshot(raw, self.keys.data_key)

    def iter_snapshots(self) -> Iterator[tuple[bytes, Snapshot]]:
        """(ID, snapshot) for every snapshot, oldest first."""
        snaps = [(sid, self.load_snapshot(sid)) for sid in self.snapshot_ids()]
        yield from sorted(snaps, key=lambda p: (p[1].time_ns, p[0]))

    def find_snapshot(self, ref: str) -> tuple[bytes, Snapshot]:
        """Resolve "latest" or a unique hex prefix of a snapshot ID."""
        if ref == "latest":
            snaps = list(self.iter_snapshots())
            if not snaps:
                raise SnapshotNotFound("latest: the repository has no snapshots")
            return snaps[-1]
        ref_l = ref.lower()
        if not ref_l or any(c not in "0123456789abcdef" for c in ref_l):
            raise SnapshotNotFound(f"{ref!r}: not a snapshot ID")
        matches = [sid for sid in self.snapshot_ids() if sid.hex().startswith(ref_l)]
        if not matches:
            raise SnapshotNotFound(f"{ref!r}")
        if len(matches) > 1:
            raise SnapshotNotFound(f"{ref!r}: prefix is ambiguous ({len(matches)} snapshots)")
        return matches[0], self.load_snapshot(matches[0])

    def remove_snapshot(self, snapshot_id: bytes) -> None:
        """Delete a snapshot file (forget, tag, repair): the one way to remove a snapshot."""
        self.backend.delete(layout.snapshot_name(snapshot_id))

    def replace_snapshot(self, snapshot_id: bytes, snap: Snapshot) -> bytes:
        """Store ``snap`` in place of ``snapshot_id`` (new file first, then the old one
        goes); returns the new ID."""
        new_id = self.save_snapshot(snap)
        if new_id != snapshot_id:
            self.remove_snapshot(snapshot_id)
        return new_id

    # -- locks ------------------------------------------------------------------

    def lock(self, *, exclusive: bool, command: str, wait: float = 0.0) -> locks.RepoLock:
        """Take a shared or exclusive lock (a context manager that releases it)."""
        return locks.acquire(
            self.backend, self.keys.index_key, exclusive=exclusive, command=command, wait=wait
        )

    def scan_locks(self) -> locks.LockScan:
        """Every lock file, decoded (unreadable ones listed apart)."""
        return locks.scan_locks(self.backend, self.keys.index_key)

    def remove_stale_locks(self) -> list[str]:
        """Delete the locks of dead or silent processes; returns their names."""
        return locks.remove_stale(self.backend, self.keys.index_key)

    def remove_all_locks(self) -> list[str]:
        """Delete every lock, live or not (``unlock --remove-all``)."""
        return locks.remove_all(self.backend)

    def close(self) -> None:
        """Stop the worker threads and release the backend (unsaved blobs are dropped)."""
        for pool in (self._pool, self._upload_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._upload_pool = None
        self.backend.close()


def _ids_in(backend: Backend, directory: str) -> list[bytes]:
    return [i for i in (layout.id_from_name(o.name) for o in backend.list(directory)) if i]


def _write_key(
    backend: Backend, keys: crypto.MasterKeys, password: bytes, kdf: crypto.KdfParams
) -> bytes:
    _, raw = keyfmt.create(
        keys,
        password,
        kdf,
        created=_now_iso(),
        hostname=socket.gethostname(),
        username=getpass.getuser(),
    )
    kid = storage_id(raw)
    backend.write(layout.key_name(kid), raw)
    return kid


def repository_exists(backend: Backend) -> bool:
    """Whether a config object is present."""
    try:
        backend.stat(layout.CONFIG)
        return True
    except ObjectNotFound:
        return False


def init_repository(
    backend: Backend,
    password: bytes,
    *,
    chunker: ChunkerParams | None = None,
    pack_size: int = configfmt.DEFAULT_PACK_SIZE,
    kdf: crypto.KdfParams | None = None,
    share_ids_with: Repository | None = None,
) -> Repository:
    """Create a new repository: fresh master keys, the first key file, then the config.

    With ``share_ids_with``, the new repository takes that repository's ID
    key, chunker key and chunker parameters (its data and index keys stay
    fresh), so blob IDs agree and ``cas copy`` moves only missing blobs.

    The config is written last so a crash halfway leaves no half-made
    repository that ``open`` would accept; ``init`` refuses any location that
    already holds a config.
    """
    if not (1 << 20) <= pack_size <= (1 << 30):
        raise UsageError("the pack size must be between 1 MiB and 1 GiB")
    if repository_exists(backend):
        raise RepositoryExists(location=backend.location)
    backend.create()
    if any(layout.id_from_name(o.name) for o in backend.list(layout.KEYS)):
        # Key files but no config: an earlier init died before writing the config.
        # They open nothing; remove them so this init starts clean.
        for o in backend.list(layout.KEYS):
            backend.delete(o.name)
    keys = crypto.MasterKeys.generate()
    if share_ids_with is not None:
        keys = dataclasses.replace(
            keys,
            id_key=share_ids_with.keys.id_key,
            chunker_key=share_ids_with.keys.chunker_key,
        )
        chunker = share_ids_with.config.chunker
    cfg = configfmt.Config(os.urandom(32), chunker or ChunkerParams(), pack_size)
    key_id = _write_key(backend, keys, password, kdf or crypto.KdfParams.new())
    backend.write(layout.CONFIG, configfmt.encode_config(cfg, keys.data_key))
    return Repository(backend, keys, cfg, key_id)


def read_config_version(backend: Backend) -> bytes:
    """The raw config, after checking there is one and that its version is supported."""
    try:
        raw = backend.read(layout.CONFIG)
    except ObjectNotFound:
        raise RepositoryNotFound(location=backend.location) from None
    version = configfmt.read_version(raw)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(what="repository", version=version, supported=FORMAT_VERSION)
    return raw


def open_repository(
    backend: Backend, password: bytes, raw_config: bytes | None = None
) -> Repository:
    """Unlock with the first key file that ``password`` opens, then read the config.

    ``raw_config``: the config as already read by ``read_config_version`` (callers
    check the version before asking for a password).
    """
    if raw_config is None:
        raw_config = read_config_version(backend)
    names = [o.name for o in backend.list(layout.KEYS) if layout.id_from_name(o.name)]
    if not names:
        raise FormatError(what="repository", detail="it has no key files")
    damaged: list[str] = []
    opened_elsewhere: list[str] = []  # the password opened these, but not the config
    for name in sorted(names):
        try:
            kf = keyfmt.decode_keyfile(read_verified(backend, name, "key file"))
            keys = keyfmt.unlock(kf, password)
        except WrongPassword:
            continue
        except (IntegrityError, UnsupportedVersion) as e:
            damaged.append(str(e))
            continue
        try:
            cfg = configfmt.decode_config(raw_config, keys.data_key)
        except IntegrityError as e:
            # A key file left by an interrupted init of another repository here:
            # it opens with the password but its keys do not open this config.
            opened_elsewhere.append(f"key file {name}: its keys do not open the config ({e})")
            continue
        kid = layout.id_from_name(name)
        assert kid is not None
        return Repository(backend, keys, cfg, kid)
    if opened_elsewhere:
        # The password is right, so this is damage (of the config, or a stray key file).
        raise IntegrityError(what="config", detail="; ".join(opened_elsewhere))
    if damaged and len(damaged) == len(names):
        raise IntegrityError(what="key files", detail="; ".join(damaged))
    raise WrongPassword()
