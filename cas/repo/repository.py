"""A repository: keys, config, index, blobs in packs, snapshots (spec/format.md).

:class:`Repository` is the one way to stored objects; it composes the parts
that each own one kind of object: key files (:mod:`cas.repo.keyring`), index
files and the master index (:mod:`cas.repo.indexstore`), packs written
(:mod:`cas.repo.packwriter`) and read (:mod:`cas.repo.blobreader`), locks
(:mod:`cas.repo.locks`), and snapshots (here).

Write ordering (spec §14): a pack is stored before any index file names it,
an index file before any snapshot needs it.  A crash therefore leaves at
worst packs no index names, which the next backup may re-upload and prune
removes.  Every object read is checked against its name (SHA-256) or its
AEAD tag before it is trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cas import crypto, failpoints
from cas.backend import split_location
from cas.backend.accounting import AccountingBackend, PriceTable
from cas.backend.base import Backend
from cas.backend.stack import find_layer, request_summary, storage_class
from cas.chunking.chunker import StreamChunker, make_chunker
from cas.crypto import BlobType
from cas.errors import (
    FormatError,
    IntegrityError,
    LockedError,
    ObjectNotFound,
    SnapshotNotFound,
    UnsupportedVersion,
    UntrustedChange,
)
from cas.format import config as configfmt
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.format.snapshot import Snapshot, decode_snapshot, encode_snapshot
from cas.ids import storage_id
from cas.repo import keyring, layout, locks
from cas.repo.blobreader import BlobReader
from cas.repo.cache import LocalCache
from cas.repo.clientstate import ClientState
from cas.repo.filescache import FilesCache
from cas.repo.generations import Finding, Generations
from cas.repo.index import Location, MasterIndex
from cas.repo.indexstore import IndexStore
from cas.repo.keyring import KeyInfo
from cas.repo.packer import FinishedPack
from cas.repo.packwriter import BlobSaver, PackWriter, WriteStats
from cas.repo.verified import read_verified
from cas.selection import EVERY_SNAPSHOT, SnapshotFilter

__all__ = ["KeyInfo", "Repository", "WriteStats"]


class Repository:
    """An open repository.  Use :func:`cas.repo.open` (or ``init``/``open_repository``)."""

    def __init__(
        self,
        backend: Backend,
        keys: crypto.KeyBase,
        config: configfmt.Config,
        key_id: bytes,
        cache: LocalCache | None = None,
        state: ClientState | None = None,
    ) -> None:
        self._backend = backend
        self.keys = keys
        self.config = config
        self.key_id = key_id
        # Generation records, checked against this client's state when it has one
        # (the CLI's; library users without it write records and check nothing).
        self.generations = Generations(backend, keys, config.repo_id, state)
        self.indexes = IndexStore(backend, keys)
        if state is not None:
            self.indexes.on_listing = self.generations.sync
            self.indexes.on_active = self.generations.check_index
        self._retired: set[bytes] = set()  # index files a generation already retired
        # Snapshot files that could not be read by iter_snapshots, with why: listings
        # skip them and the CLI warns (one damaged snapshot never stops the others).
        self.damaged_snapshots: dict[bytes, str] = {}
        self.damaged_keys: dict[bytes, str] = {}  # key files list_keys could not read
        self.reader = BlobReader(backend, keys, self.indexes)
        self.reader.read_unit = config.pack_format.read_unit
        self.reader.version = config.version
        # A local pack is proven in pieces (a few more system calls, no more requests):
        # check's threads then hold a piece each, not a 16 MiB pack (as its helpers do).
        self.reader.stream_packs = self.is_local
        self.saver = BlobSaver(
            backend, keys, config.pack_size, self.indexes, cache, fmt=config.pack_format
        )
        self.cache = cache

    @property
    def backend(self) -> Backend:
        """The storage stack every part of the repository reads and writes through."""
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        # Tests wrap a repository's storage in fault injectors after opening it.
        self._backend = self.indexes.backend = self.reader.backend = backend
        self.generations.backend = backend
        self.saver.writer.backend = backend

    @property
    def cache(self) -> LocalCache | None:
        """The local cache of this repository's immutable objects, if one is in use."""
        return self._cache

    @cache.setter
    def cache(self, cache: LocalCache | None) -> None:
        self._cache = cache
        self.reader.cache = cache
        self.saver.writer.cache = cache

    # -- storage ------------------------------------------------------------------

    @property
    def location(self) -> str:
        """Where the repository lives, as the user typed it."""
        return self.backend.location

    @property
    def is_local(self) -> bool:
        """Whether the repository is a directory on this machine (not S3)."""
        return split_location(self.backend.location)[0] in ("", "file")

    def requests(self) -> dict[str, Any] | None:
        """Storage requests made so far by kind, bytes and estimated cost (None if uncounted)."""
        return request_summary(self.backend)

    def price_table(self) -> PriceTable:
        """The prices the storage's requests are counted at (free when nothing counts them)."""
        accounting = find_layer(self.backend, AccountingBackend)
        return accounting.prices if accounting is not None else PriceTable.free()

    def storage_class(self) -> str | None:
        """The storage class data packs go to (None: the store's default)."""
        return storage_class(self.backend)

    def set_connections(self, n: int) -> None:
        """Upload at most ``n`` packs at once (before the first save_blob)."""
        self.saver.set_connections(n)

    @property
    def stats(self) -> WriteStats:
        """What this session added to the repository."""
        return self.saver.stats

    @property
    def compression_level(self) -> int | None:
        """zstd level of new blobs (None: store uncompressed)."""
        return self.saver.compression_level

    @compression_level.setter
    def compression_level(self, level: int | None) -> None:
        self.saver.compression_level = level

    # -- chunking and IDs -----------------------------------------------------------

    def chunker(self) -> StreamChunker:
        """A chunker keyed for this repository, of its config's algorithm."""
        return make_chunker(self.keys, self.config.chunker)

    def file_digest(self) -> crypto.FileDigest:
        """A fresh keyed whole-file digest."""
        return self.keys.file_digest()

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        """The keyed ID of ``data`` as a blob of ``blob_type``."""
        return self.keys.blob_id(blob_type, data)

    # -- keys -------------------------------------------------------------------

    def list_keys(self) -> list[KeyInfo]:
        """Every readable key file, parsed (their master keys stay sealed); damaged ones
        are recorded in ``damaged_keys``."""
        return keyring.list_keys(self.backend, self.key_id, self.damaged_keys)

    def key_ids(self) -> list[bytes]:
        """IDs of every key file, readable or not."""
        return keyring.key_ids(self.backend)

    def add_key(
        self, password: bytes, kdf: crypto.KdfParams | None = None, *, write_only: bool = False
    ) -> bytes:
        """Store a new key file wrapping this repository's master keys (``write_only``: the
        write-only key made from them, spec §4.4); returns its ID.  Only a full key adds
        keys (KeyIsWriteOnly otherwise)."""
        if not isinstance(self.keys, crypto.MasterKeys):
            raise crypto.KeyIsWriteOnly(action="add keys")
        keys: crypto.KeyBase = self.keys
        if write_only:
            # The config is authenticated by its seal, which write_only_key opens.
            keys = keyring.write_only_key(self.keys, self.backend.read(layout.CONFIG))
        return keyring.write_key(self.backend, keys, password, kdf or crypto.KdfParams.new())

    def remove_key(self, key_id: bytes) -> None:
        """Delete a key file; refuses the one this session was opened with."""
        keyring.remove_key(self.backend, key_id, self.key_id)

    def change_password(self, password: bytes, kdf: crypto.KdfParams | None = None) -> bytes:
        """Replace the current key file by one under a new password (new first, then old)."""
        new_id = keyring.write_key(self.backend, self.keys, password, kdf or crypto.KdfParams.new())
        keyring.delete_key(self.backend, self.key_id)
        self.key_id = new_id
        return new_id

    # -- index ------------------------------------------------------------------

    @property
    def index(self) -> MasterIndex:
        """The master index: blob ID -> location, for live packs."""
        return self.indexes.index

    @property
    def garbage_index(self) -> MasterIndex:
        """Blobs in packs that prune marked for deletion (readable, never deduplicated)."""
        return self.indexes.garbage_index

    @property
    def damaged_index_files(self) -> dict[bytes, str]:
        """Index files that could not be read, with why."""
        return self.indexes.damaged

    def index_files(self) -> list[bytes]:
        """IDs of all index files."""
        return self.indexes.file_ids()

    def read_index_file(self, file_id: bytes) -> indexfmt.IndexFile:
        """Load, verify and decode one index file."""
        return self.indexes.read(file_id)

    def write_index_file(self, idx: indexfmt.IndexFile) -> bytes:
        """Store an index file (prune's marking index, a rebuilt index); returns its ID."""
        return self.indexes.write(idx)

    def retire_index_files(self, file_ids: list[bytes], command: str = "") -> None:
        """Record in a new generation that stored index files supersede these, before
        they are deleted: an index file of a generation's ``retired`` that comes back
        is a replay (spec §13.6)."""
        todo = [f for f in file_ids if f not in self._retired]
        if todo:
            self.generations.commit(retired=todo, command=command)
            self._retired.update(todo)

    def delete_index_file(self, file_id: bytes) -> None:
        """Delete an index file that a stored index file supersedes (retired first)."""
        self.retire_index_files([file_id])
        self.indexes.delete(file_id)

    def load_index(self) -> None:
        """Read every index file into the master index (once)."""
        self.indexes.load()

    def refresh_index(self) -> None:
        """Add index files written since the index was loaded (a long-lived reader)."""
        self.indexes.refresh()

    def active_index_files(self) -> dict[bytes, indexfmt.IndexFile]:
        """Every index file that no other index file supersedes, decoded."""
        return self.indexes.active()

    # -- writing blobs -------------------------------------------------------------

    def has_blob(self, blob_id: bytes) -> bool:
        """Whether the blob is stored or about to be."""
        self.indexes.load()
        return self.saver.has(blob_id)

    def save_blob(
        self, blob_type: BlobType, data: bytes, blob_id: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store ``data`` unless the repository already has it; returns (ID, whether new).

        The ID is computed here; compressing, sealing and storing happen on
        worker threads, so the caller's reading and chunking overlap with them.
        A worker's failure is raised by a later call or by ``flush``.
        """
        if blob_id is None:
            blob_id = self.blob_id(blob_type, data)
        self.indexes.load()
        return blob_id, self.saver.save(blob_type, data, blob_id)

    def claim_blobs(self, blob_ids: list[bytes]) -> bytes:
        """For a backup worker process that stores blobs itself: 1 for each blob that
        is new and now its to store, 0 for each the repository has or is getting."""
        self.indexes.load()
        return self.saver.claim(blob_ids)

    def adopt_pack(self, pack_id: bytes, size: int, columns: packfmt.PackColumns) -> None:
        """A pack a backup worker process stored (with blobs it claimed), its blobs as
        columns: indexed with this session's packs."""
        self.saver.adopt_columns(pack_id, size, columns)

    def add_sealed(self, body: bytes, entries: list[packfmt.PackEntry]) -> None:
        """Sealed blobs a backup worker claimed but did not pack (its last, partly filled
        pack): packed and stored with this session's own."""
        self.saver.add_sealed(body, entries)

    def wait(self) -> None:
        """Wait until every blob handed to ``save_blob`` is sealed (and packed)."""
        self.saver.wait()

    def flush(self) -> None:
        """Store every open pack, then the index file naming them (in that order)."""
        self.saver.flush()

    def pack_writer(self, on_stored: Callable[[FinishedPack], None]) -> PackWriter:
        """A pack writer for already sealed blobs (repack): packs are stored and their
        size checked, and ``on_stored`` records them (no index file is written)."""
        return PackWriter(
            self.backend,
            self.keys,
            self.config.pack_size,
            self._cache,
            on_stored,
            verify_size=True,
            version=self.config.version,
        )

    # -- reading blobs and packs ---------------------------------------------------

    def locate(self, blob_id: bytes) -> Location:
        """The pack, offset and length of a stored blob; BlobNotFound if none."""
        return self.reader.locate(blob_id)

    def locate_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, Location]:
        """Where each of these stored blobs is; those not found are left out."""
        return self.reader.locate_many(blob_ids)

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """Read, authenticate, decrypt and re-hash one blob."""
        return self.reader.load_blob(blob_type, blob_id, raw_length)

    @property
    def read_unit(self) -> int:
        """Pack ranges are read in whole units of this many bytes (0: exactly; spec §9.6)."""
        return self.reader.read_unit

    def forget_units(self, pack_id: bytes) -> None:
        """Read the units of this pack from the storage again next time (unitcache.py)."""
        self.reader.forget_units(pack_id)

    def read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """``length`` raw bytes of a pack from ``offset`` (several sealed blobs at once)."""
        return self.reader.read_pack_range(pack_id, offset, length)

    def open_blob(
        self, blob_type: BlobType, blob_id: bytes, sealed: bytes, raw_length: int | None = None
    ) -> bytes | bytearray:
        """Authenticate, decrypt and re-hash a sealed blob read with ``read_pack_range``."""
        return self.reader.open_blob(blob_type, blob_id, sealed, raw_length)

    def read_pack(self, pack_id: bytes) -> bytes:
        """A whole pack, checked against its name."""
        return self.reader.read_pack(pack_id)

    def read_pack_header(self, pack_id: bytes) -> list[packfmt.PackEntry]:
        """Read and decode a pack's header with two ranged reads (trailer, then header)."""
        return self.reader.read_pack_header(pack_id)

    def verify_pack(self, pack_id: bytes) -> list[packfmt.PackEntry]:
        """Read a whole pack and prove it: SHA-256 name, header, and every blob opened."""
        return self.reader.verify_pack(pack_id)

    def salvage(self, pack_id: bytes, keep: set[bytes]) -> tuple[bytes, list[packfmt.PackEntry]]:
        """The sealed blobs of ``keep`` in a pack, each proven first (PackRanges.salvage)."""
        return self.reader.salvage(pack_id, keep)

    def pack_sizes(self) -> dict[bytes, int]:
        """Every pack file by ID with its size, from one listing (indexed or not)."""
        sizes = {}
        for info in self.backend.list(layout.DATA):
            pid = layout.id_from_name(info.name)
            if pid is not None:
                sizes[pid] = info.size
        return sizes

    def pack_size(self, pack_id: bytes) -> int:
        """The stored size of one pack; ObjectNotFound if it is gone."""
        return self.backend.stat(layout.pack_name(pack_id)).size

    def delete_pack(self, pack_id: bytes) -> None:
        """Delete a pack (prune, once nothing can still need it)."""
        self.backend.delete(layout.pack_name(pack_id))

    # -- snapshots --------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> bytes:
        """Flush outstanding data and index, then store the snapshot; returns its ID."""
        self.flush()
        raw = encode_snapshot(snap, self.keys.data)
        sid = storage_id(raw)
        failpoints.hit("before-snapshot")
        self.backend.write(layout.snapshot_name(sid), raw)
        self.generations.commit(added=[sid], command="snapshot")
        return sid

    def snapshot_ids(self) -> list[bytes]:
        """IDs of all snapshot files; with a client state, a snapshot it saw that is
        gone without a tombstone is a finding (spec §13.6)."""
        ids = [
            i
            for i in (layout.id_from_name(o.name) for o in self.backend.list(layout.SNAPSHOTS))
            if i
        ]
        if self.generations.client is not None:
            self.generations.check_snapshots(set(ids))
        return ids

    def recorded_snapshot_ids(self) -> list[bytes] | None:
        """The snapshots of the latest generation (no listing of ``snapshots/``), or None
        without a client state or a generation."""
        if self.generations.client is None:
            return None
        recorded = self.generations.recorded_snapshots()
        return None if recorded is None else sorted(recorded)

    @property
    def trust_findings(self) -> list[Finding]:
        """What the storage changed behind this client's back, found so far."""
        return self.generations.findings

    def check_trust(self) -> list[Finding]:
        """Look for every kind of finding: the binding, the generations, the snapshots
        and the index files in use."""
        self.generations.sync()
        self.snapshot_ids()
        self.generations.check_index(self.indexes.active_ids())
        return self.generations.findings

    def accept_changes(self) -> int:
        """Accept the repository as it is now (``cas trust --accept``); returns the
        generation that records it."""
        listed = {
            i
            for i in (layout.id_from_name(o.name) for o in self.backend.list(layout.SNAPSHOTS))
            if i
        }
        return self.generations.accept(listed, set(self.indexes.active_ids()))

    def files_cache(self, hostname: str, paths: list[bytes]) -> FilesCache | None:
        """The local files cache of a write-only client for this host and path set
        (spec §4.4), or None without a client state."""
        client = self.generations.client
        if client is None:
            return None
        return FilesCache(client.root, self.config.repo_id, hostname, paths)

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot:
        """Read, verify and decode one snapshot."""
        raw = read_verified(self.backend, layout.snapshot_name(snapshot_id), "snapshot")
        return decode_snapshot(raw, self.keys.data)

    def iter_snapshots(self) -> Iterator[tuple[bytes, Snapshot]]:
        """(ID, snapshot) for every readable snapshot, oldest first.

        A snapshot file that is damaged (or of a newer version) is left out and
        recorded in ``damaged_snapshots``; one removed since the listing is left out.
        """
        yield from self._loaded(self.snapshot_ids())

    def recorded_snapshots(self) -> Iterator[tuple[bytes, Snapshot]]:
        """(ID, snapshot), oldest first, of the snapshots the latest generation records
        (backup's parent: no listing of ``snapshots/``, spec §13.6); of every readable
        snapshot when there is no generation or no client state.  Vanished ones are
        passed over, unreadable ones too and recorded in ``damaged_snapshots``."""
        ids = self.recorded_snapshot_ids()
        if ids is None:
            yield from self.iter_snapshots()
            return
        yield from self._loaded(ids)

    def _loaded(self, ids: list[bytes]) -> list[tuple[bytes, Snapshot]]:
        """(ID, snapshot) of ``ids``, oldest first: one removed since the listing is left
        out, an unreadable one too and recorded in ``damaged_snapshots``."""
        snaps = []
        for sid in ids:
            try:
                snaps.append((sid, self.load_snapshot(sid)))
            except ObjectNotFound:
                continue  # forgotten since the listing
            except (IntegrityError, FormatError, UnsupportedVersion) as e:
                self.damaged_snapshots[sid] = str(e)
        return sorted(snaps, key=lambda p: (p[1].time_ns, p[0]))

    def resolve_snapshot_id(self, ref: str) -> bytes:
        """The ID a unique hex prefix names, without reading the snapshot."""
        ref_l = ref.lower()
        if not ref_l or any(c not in "0123456789abcdef" for c in ref_l):
            raise SnapshotNotFound(f"{ref!r}: not a snapshot ID")
        matches = [sid for sid in self.snapshot_ids() if sid.hex().startswith(ref_l)]
        if not matches:
            raise SnapshotNotFound(f"{ref!r}")
        if len(matches) > 1:
            shown = ", ".join(sorted(m.hex()[: len(ref_l) + 4] for m in matches)[:10])
            more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
            raise SnapshotNotFound(
                f"{ref!r}: prefix is ambiguous, {len(matches)} snapshots: {shown}{more}"
            )
        return matches[0]

    def find_snapshot(
        self, ref: str, among: SnapshotFilter = EVERY_SNAPSHOT
    ) -> tuple[bytes, Snapshot]:
        """Resolve "latest" (the latest of the snapshots ``among`` lets through: the
        --host, --tag and --path options narrow it, as restic's do) or a unique hex
        prefix of a snapshot ID (found whatever ``among`` says, as in restic)."""
        if ref == "latest":
            snaps = [p for p in self.iter_snapshots() if among.matches(p[1])]
            if not snaps:
                if among == EVERY_SNAPSHOT:
                    raise SnapshotNotFound("latest: the repository has no snapshots")
                raise SnapshotNotFound(f"latest: no snapshot {among.describe()}")
            if self.generations.findings:
                # The listing is what the provider chose to show: the newest snapshot
                # may be hidden, so "latest" could name an old one.  An ID is safe.
                raise UntrustedChange(
                    f"{self.generations.findings[0].message}: 'latest' may not be the "
                    "latest; name the snapshot by its ID, or see 'cas trust'"
                )
            return snaps[-1]
        sid = self.resolve_snapshot_id(ref)
        return sid, self.load_snapshot(sid)

    def remove_snapshot(self, snapshot_id: bytes) -> None:
        """Delete a snapshot file (forget, tag, repair): the one way to remove a snapshot."""
        self.remove_snapshots([snapshot_id])

    def remove_snapshots(self, snapshot_ids: list[bytes], command: str = "forget") -> None:
        """Delete snapshot files after one generation records their tombstones, so
        other clients tell this forget from a hidden file (spec §13.6)."""
        if not snapshot_ids:
            return
        self.generations.commit(forgotten=snapshot_ids, command=command)
        for sid in snapshot_ids:
            failpoints.hit("forget-tombstoned")
            self.backend.delete(layout.snapshot_name(sid))

    def replace_snapshot(self, snapshot_id: bytes, snap: Snapshot) -> bytes:
        """Store ``snap`` in place of ``snapshot_id`` (new file first, then the old one
        goes); returns the new ID."""
        new_id = self.save_snapshot(snap)
        if new_id != snapshot_id:
            self.remove_snapshot(snapshot_id)
        return new_id

    # -- locks ------------------------------------------------------------------

    def lock(
        self,
        *,
        exclusive: bool,
        command: str,
        wait: float = 0.0,
        on_wait: Callable[[LockedError, float], None] | None = None,
    ) -> locks.RepoLock:
        """Take a shared or exclusive lock (a context manager that releases it), waiting
        up to ``wait`` seconds for a conflicting one to go (``on_wait``: see
        :func:`cas.repo.locks.acquire`)."""
        return locks.acquire(
            self.backend,
            self.keys.index,
            exclusive=exclusive,
            command=command,
            wait=wait,
            on_wait=on_wait,
        )

    def require_delete(self) -> None:
        """Raise AccessDenied if the storage refuses deletes (see :func:`locks.require_delete`)."""
        locks.require_delete(self.backend, self.keys.index)

    def scan_locks(self) -> locks.LockScan:
        """Every lock file, decoded (unreadable ones listed apart)."""
        return locks.scan_locks(self.backend, self.keys.index)

    def remove_stale_locks(self) -> list[str]:
        """Delete the locks of dead or silent processes; returns their names."""
        return locks.remove_stale(self.backend, self.keys.index)

    def remove_all_locks(self) -> list[str]:
        """Delete every lock, live or not (``unlock --remove-all``)."""
        return locks.remove_all(self.backend)

    def close(self) -> None:
        """Stop the worker threads and release the backend (unsaved blobs are dropped)."""
        self.saver.close()
        self.backend.close()
