"""Index files under ``index/`` and the master index built from them (spec §12, §13.5).

The only code that names, writes or deletes index files.  ``load`` reads
every index file into a compact :class:`~cas.repo.index.MasterIndex` once;
``refresh`` adds files written since (a mount that outlives backups).  A
damaged index file is skipped and recorded in ``damaged`` so that restore
and backup can still use the rest (check reports it, ``repair index``
replaces it, prune refuses to run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial

from cas import crypto
from cas.backend.base import Backend
from cas.errors import IntegrityError, UnsupportedVersion
from cas.format import index as indexfmt
from cas.ids import storage_id
from cas.repo import layout
from cas.repo.index import MasterIndex
from cas.repo.verified import read_verified


class IndexStore:
    """The repository's index files and the master index loaded from them."""

    def __init__(self, backend: Backend, keys: crypto.KeyBase) -> None:
        self.backend = backend
        self._keys = keys
        self.index = MasterIndex()
        self.garbage_index = MasterIndex()  # blobs in packs awaiting deletion (read-only)
        self.damaged: dict[bytes, str] = {}
        self.loaded = False
        self._seen: set[bytes] = set()  # index files read into the master index
        self._refresh_lock = threading.Lock()
        # Told every listing of index/ (generation records live there too) and the
        # index files in use after a load: the generations' checks (spec §13.6).
        self.on_listing: Callable[[list[tuple[str, int]]], None] | None = None
        self.on_active: Callable[[list[bytes]], None] | None = None

    # -- files ------------------------------------------------------------------

    def file_ids(self) -> list[bytes]:
        """IDs of all index files, sorted."""
        listing = [(o.name, o.size) for o in self.backend.list(layout.INDEX)]
        if self.on_listing is not None:
            self.on_listing(listing)
        return sorted(i for i in (layout.id_from_name(name) for name, _ in listing) if i)

    def read(self, file_id: bytes) -> indexfmt.IndexFile:
        """Load, verify and decode one index file."""
        raw = read_verified(self.backend, layout.index_name(file_id), "index file")
        return indexfmt.decode_index(raw, self._keys.index)

    def write(self, idx: indexfmt.IndexFile) -> bytes:
        """Encode, seal and store an index file; returns its ID."""
        raw = indexfmt.encode_index(idx, self._keys.index)
        fid = storage_id(raw)
        self.backend.write(layout.index_name(fid), raw)
        return fid

    def write_rows(self, packs: dict[bytes, list[indexfmt.BlobRow]]) -> bytes:
        """``write`` of an index file listing ``packs`` (blobs as ``indexfmt.blob_row``
        rows) and nothing else; returns its ID."""
        raw = indexfmt.encode_index_rows(packs, self._keys.index)
        fid = storage_id(raw)
        self.backend.write(layout.index_name(fid), raw)
        return fid

    def delete(self, file_id: bytes) -> None:
        """Delete one index file (one that another index file supersedes)."""
        self.backend.delete(layout.index_name(file_id))

    def active(self) -> dict[bytes, indexfmt.IndexFile]:
        """Every index file that no other index file supersedes, decoded (damaged ones
        recorded in ``damaged`` and left out)."""
        files = {}
        for fid in self.file_ids():
            try:
                files[fid] = self.read(fid)
            except (IntegrityError, UnsupportedVersion) as e:
                self.damaged[fid] = str(e)
        superseded = {s for f in files.values() for s in f.supersedes}
        active = {fid: f for fid, f in files.items() if fid not in superseded}
        if self.on_active is not None:
            self.on_active(list(active))
        return active

    def _locations(self, fid: bytes) -> indexfmt.BlobLocations | indexfmt.IndexFile | None:
        """One index file as ``read_locations`` gives it, or None when it is damaged (then
        recorded in ``damaged``)."""
        fetch = partial(read_verified, self.backend, layout.index_name(fid), "index file")
        try:
            return indexfmt.read_locations(fetch, self._keys.index)
        except (IntegrityError, UnsupportedVersion) as e:
            self.damaged[fid] = str(e)
            return None

    def active_ids(self) -> list[bytes]:
        """The IDs of ``active``'s files, without keeping any file: each is read as
        compact columns for its ``supersedes`` and dropped before the next, so the
        trust checks cost one file's columns, not every entry of every file decoded
        (damaged files recorded in ``damaged`` and left out, as ``active`` does)."""
        ids: list[bytes] = []
        superseded: set[bytes] = set()
        for fid in self.file_ids():
            f = self._locations(fid)
            if f is None:
                continue
            ids.append(fid)
            superseded.update(f.supersedes)
            del f  # before the next file is read
        active = [fid for fid in ids if fid not in superseded]
        if self.on_active is not None:
            self.on_active(active)
        return active

    # -- the master index ---------------------------------------------------------

    def load(self) -> None:
        """Read every index file into the master index (once).

        Index files are decoded one at a time, as compact columns of blob
        locations (``read_locations``: no object per entry), added, and
        dropped, so a million blobs cost the compact index and one file's
        columns, not a million decoded entries.  A file prune wrote
        (``supersedes``, ``garbage``) is read the same way: once a prune has
        finished, the files it superseded are gone and no listed pack is
        marked, and the files can be used as they come.  Only while a prune
        is under way (a superseded file still stored, a listed pack marked)
        must all files be seen before any is used: then the files are read
        again, the slow way.
        """
        if self.loaded:
            return
        ids = self.file_ids()
        self._seen.update(ids)
        superseded: set[bytes] = set()
        doomed: set[bytes] = set()
        for fid in ids:
            f = self._locations(fid)
            if f is None:
                continue
            superseded.update(f.supersedes)
            if isinstance(f, indexfmt.BlobLocations):
                # Straight from the columns into the segments (no pending blobs).
                self.index.add_columns(f.packs, f.ids, f.offsets, f.lengths)
                dead = [(p, first, count) for p, _, first, count in f.garbage]
                doomed.update(p for p, _, _ in dead)
                self.garbage_index.add_columns(dead, f.ids, f.offsets, f.lengths)
            else:
                for pack_id, blobs in _packs(f, garbage=False):
                    self.index.add_pack(pack_id, blobs)
                for pack_id, blobs in _packs(f, garbage=True):
                    doomed.add(pack_id)
                    self.garbage_index.add_pack(pack_id, blobs)
            del f  # before the next file is read
        pruning = bool(superseded.intersection(ids)) or not doomed.isdisjoint(self.index.pack_ids())
        if pruning:
            self._load_during_prune()  # tells on_active itself (through active())
        self.index.compact()
        self.garbage_index.compact()
        self.loaded = True
        if not pruning and self.on_active is not None:
            self.on_active(ids)  # no stored file is superseded: every one is in use

    def _load_during_prune(self) -> None:
        self.index, self.garbage_index = MasterIndex(), MasterIndex()
        self.damaged.clear()
        files = self.active()
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

    def refresh(self) -> None:
        """Add the packs of index files written since the index was loaded.

        For a long-lived reader (the mount): a snapshot is written after the
        index files naming its blobs, so refreshing when a new snapshot shows
        up makes its blobs findable.  Files listed before the first load are
        known, so one written meanwhile is read again (harmless: known blobs
        keep their location) rather than never.
        """
        with self._refresh_lock:
            for fid in sorted(set(self.file_ids()) - self._seen):
                index_file = self.read(fid)
                for pack_id, entries in index_file.packs.items():
                    self.index.add_pack(pack_id, ((e.blob_id, e.offset, e.length) for e in entries))
                self._seen.add(fid)


def _packs(
    f: indexfmt.IndexFile, garbage: bool
) -> Iterator[tuple[bytes, Iterator[tuple[bytes, int, int]]]]:
    """Each pack of a fully decoded ``f`` (its live packs, or those under ``garbage``)
    with its blobs' (id, offset, length)."""
    listed = ((p, e) for p, (_, e) in f.garbage.items()) if garbage else f.packs.items()
    for pack_id, entries in listed:
        yield pack_id, ((e.blob_id, e.offset, e.length) for e in entries)
