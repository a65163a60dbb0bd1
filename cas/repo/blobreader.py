"""Reading blobs and packs: locate, read, authenticate, decrypt, re-hash.

Tree packs hold only trees, which every backup and restore walks: with a
local cache they are kept whole on local disk, and each is read and hashed
whole (verified by its SHA-256 name) once per run, then kept open and read a
tree at a time; only where the cache cannot hold one is a whole pack kept in
memory (the last few).  Data blobs are read with ranged reads: of just their bytes in a
version 1 repository; in a version 2 repository rounded out to whole
aligned ``READ_UNIT`` units (cut at the pack's end, which the index entries
give), so that a read does not give a blob's offset or length (spec §9.6).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cas import crypto
from cas.backend.base import Backend, ReadBackend
from cas.crypto import BlobType
from cas.errors import (
    BackendError,
    BlobNotFound,
    CasError,
    FormatError,
    IntegrityError,
    ObjectNotFound,
)
from cas.format import pack as packfmt
from cas.ids import new_sha256
from cas.repo import layout
from cas.repo.cache import LocalCache
from cas.repo.index import Location
from cas.repo.unitcache import UNITS_KEPT, UnitCache
from cas.repo.verified import read_verified

if TYPE_CHECKING:  # a restore writer reads blobs by location: it loads no index files
    from cas.repo.indexstore import IndexStore

TREE_PACKS_IN_MEMORY = 8  # whole tree packs the cache could not take
TREE_PACKS_OPEN = 8  # verified tree packs of the cache kept open
_UNITS_LOCK = threading.Lock()


@dataclass(frozen=True)
class BlobRef:
    """A stored blob: its type, ID, where it is and its plaintext length."""

    type: BlobType
    blob_id: bytes
    location: Location
    raw_length: int


def read_aligned(
    backend: ReadBackend, name: str, offset: int, length: int, unit: int, size: int
) -> bytes:
    """``length`` bytes of object ``name`` from ``offset``, read as the whole aligned
    ``unit``-byte units that hold them, the last cut at the object's ``size`` (exactly,
    with ``unit`` 0): the provider sees ranges of whole units, never a blob's own."""
    if unit <= 0 or length <= 0:
        return backend.read(name, offset, length)
    start = offset - offset % unit
    end = offset + length
    end = max(end, min(end + (-end % unit), size))
    data = backend.read(name, start, end - start)
    return data[offset - start : offset - start + length]


class PackRanges:
    """Ranges of packs, and the blobs read in them: what every blob reader shares."""

    backend: Backend
    _keys: crypto.KeyBase
    # Ranges are read in whole units of this many bytes (0: exactly): the
    # repository's PackFormat.read_unit.
    read_unit = 0
    version = 1  # the repository's: how a pack's size follows from its entries
    _sizes: dict[bytes, int] | None = None  # packs stat'ed for want of index entries
    _unit_cache: UnitCache | None = None
    # How many units the cache keeps (cas/repo/unitcache.py); set before the first read.
    units_kept = UNITS_KEPT

    def read_pack_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """``length`` raw bytes of a pack from ``offset`` (several sealed blobs at once)."""
        name = layout.pack_name(pack_id)
        if not self.read_unit:
            return self.backend.read(name, offset, length)
        size = self.known_pack_size(pack_id)
        if size is None or size < offset + length:
            size = self._stat_once(name, pack_id)
        try:
            return self._units().read(
                lambda start, n: self.backend.read(name, start, n), pack_id, offset, length, size
            )
        except ObjectNotFound:
            raise
        except BackendError:
            # A pack shorter than its entries say (damaged, truncated): what it still
            # holds of this range is read up to its real end, so one lost tail costs
            # only the blobs in it.
            actual = self.backend.stat(name).size
            if actual >= size:
                raise
            return read_aligned(self.backend, name, offset, length, self.read_unit, actual)

    def known_pack_size(self, pack_id: bytes) -> int | None:
        """The pack's size as the index entries this reader holds give it, or None."""
        return None

    def forget_units(self, pack_id: bytes) -> None:
        """Read the units of this pack from the storage again next time."""
        if self._unit_cache is not None:
            self._unit_cache.forget(pack_id)

    def _units(self) -> UnitCache:
        """The units at the ends of this reader's recent reads (cas/repo/unitcache.py)."""
        with _UNITS_LOCK:
            if self._unit_cache is None:
                self._unit_cache = UnitCache(self.read_unit, self.units_kept)
            return self._unit_cache

    def _stat_once(self, name: str, pack_id: bytes) -> int:
        """The pack's size from the storage, asked once per pack and reader."""
        if self._sizes is None:
            self._sizes = {}
        size = self._sizes.get(pack_id)
        if size is None:
            size = self._sizes[pack_id] = self.backend.stat(name).size
        return size

    def open_blob(
        self, blob_type: BlobType, blob_id: bytes, sealed: bytes, raw_length: int | None = None
    ) -> bytes | bytearray:
        """Authenticate, decrypt and re-hash a sealed blob read with ``read_pack_range``
        (a bytearray when stored uncompressed: cas/format/pack.py ``open_blob_buffer``)."""
        return packfmt.open_blob_buffer(self._keys, blob_type, blob_id, sealed, raw_length)

    def read_pack(self, pack_id: bytes) -> bytes:
        """A whole pack, checked against its name (SHA-256)."""
        return read_verified(self.backend, layout.pack_name(pack_id), "pack")

    # Verify packs piece by piece (verify_pack_streamed): set where ranged reads cost
    # nothing more than one whole read (a local directory).
    stream_packs = False

    def verify_pack(self, pack_id: bytes) -> list[packfmt.PackEntry]:
        """Read a whole pack and prove it: SHA-256 name, header, and every blob opened.

        Returns the header entries; raises IntegrityError/FormatError on the first problem.
        """
        if self.stream_packs:
            try:
                return self.verify_pack_streamed(pack_id)
            except CasError:
                pass  # the whole pack read again below names the problem as always
        data = self.read_pack(pack_id)
        entries = packfmt.parse_pack(self._keys, data)
        for e in entries:
            sealed = data[e.offset : e.offset + e.length]
            packfmt.open_blob(self._keys, e.type, e.blob_id, sealed, e.raw_length)
        return entries

    def read_pack_header(self, pack_id: bytes, size: int | None = None) -> list[packfmt.PackEntry]:
        """Read and decode a pack's header with two ranged reads (trailer, then header);
        ``size``: the pack's, when the caller has it (else a stat)."""
        name = layout.pack_name(pack_id)
        if size is None:
            size = self.backend.stat(name).size
        if size < packfmt.TRAILER_SIZE:
            raise FormatError(what=f"pack {name}", detail="shorter than a trailer")
        if self.read_unit:
            # Version 2: the last unit holds the trailer and (up to 1,024 blobs) the
            # whole header, so one request reads both and gives no header length.
            last = min(size, self.read_unit)
            tail = self.backend.read(name, size - last, last)
            trailer = tail[-packfmt.TRAILER_SIZE :]
            n = packfmt.header_length(trailer, size)
            if n + packfmt.TRAILER_SIZE <= len(tail):
                header = tail[-packfmt.TRAILER_SIZE - n : -packfmt.TRAILER_SIZE]
            else:
                start = size - packfmt.TRAILER_SIZE - n
                header = read_aligned(self.backend, name, start, n, self.read_unit, size)
        else:
            trailer = self.backend.read(name, size - packfmt.TRAILER_SIZE, packfmt.TRAILER_SIZE)
            n = packfmt.header_length(trailer, size)
            header = self.backend.read(name, size - packfmt.TRAILER_SIZE - n, n)
        version = packfmt.trailer_version(trailer)
        return packfmt.decode_header(self._keys, header, size, version)

    def verify_pack_streamed(self, pack_id: bytes, piece: int = 1 << 20) -> list[packfmt.PackEntry]:
        """``verify_pack`` holding about ``piece`` bytes (or one larger blob) instead of
        the whole pack: the header first (two ranged reads), then the pack from its
        start in pieces, each hashed in file order and its complete blobs opened; the
        hash of every byte read must still be the pack's name."""
        name = layout.pack_name(pack_id)
        size = self.backend.stat(name).size
        if size < packfmt.TRAILER_SIZE:
            raise FormatError(what=f"pack {name}", detail="shorter than a trailer")
        entries = self.read_pack_header(pack_id, size)
        digest = new_sha256()
        held = b""  # read, hashed, not yet opened: the start of the next blob
        held_at = 0  # its offset in the pack
        pos = 0
        todo = iter(entries)
        nxt = next(todo, None)
        while pos < size:
            want = piece if nxt is None else max(piece, nxt.offset + nxt.length - pos)
            if self.read_unit:  # whole units: a piece's length gives no blob's end
                want += -want % self.read_unit
            data = self.backend.read(name, pos, min(want, size - pos))
            if not data:
                raise IntegrityError(what=f"pack {name}", detail="shorter than its listing")
            digest.update(data)
            pos += len(data)
            held = held + data if held else data
            # blobs opened where they were read, not copied out (views of bytes: not
            # released by hand, an error's traceback may still hold libsodium's pointer)
            view = memoryview(held)
            while nxt is not None and nxt.offset + nxt.length <= pos:
                start = nxt.offset - held_at
                # the plaintext is only hashed: a stored blob is not copied to bytes
                packfmt.open_blob_buffer(
                    self._keys,
                    nxt.type,
                    nxt.blob_id,
                    view[start : start + nxt.length],
                    nxt.raw_length,
                )
                nxt = next(todo, None)
            del view
            cut = (nxt.offset if nxt is not None else pos) - held_at
            held, held_at = held[cut:], held_at + cut
        if digest.digest() != pack_id:
            raise IntegrityError(what=f"pack {name}", detail="content does not match its name")
        return entries

    def load_at(self, blob_type: BlobType, blob_id: bytes, loc: Location, raw_length: int) -> bytes:
        """The blob stored at ``loc``: read, authenticated, decrypted and re-hashed."""
        sealed = self.read_pack_range(loc.pack_id, loc.offset, loc.length)
        return packfmt.open_blob(self._keys, blob_type, blob_id, sealed, raw_length)

    def salvage(self, pack_id: bytes, keep: set[bytes]) -> tuple[bytes, list[packfmt.PackEntry]]:
        """The sealed blobs of ``keep`` that a pack holds, end to end, for another pack:
        the pack is checked against its name and each blob opened and re-hashed before
        it moves (damage is never copied forward), but not sealed again.  The entries
        locate the blobs in the returned bytes."""
        data = self.read_pack(pack_id)
        body = bytearray()
        out: list[packfmt.PackEntry] = []
        taken: set[bytes] = set()
        for e in packfmt.parse_pack(self._keys, data):
            if e.blob_id not in keep or e.blob_id in taken:
                continue
            taken.add(e.blob_id)
            sealed = data[e.offset : e.offset + e.length]
            packfmt.open_blob(self._keys, e.type, e.blob_id, sealed, e.raw_length)
            out.append(packfmt.PackEntry(e.blob_id, e.type, len(body), e.length, e.raw_length))
            body += sealed
        return bytes(body), out


def reseal(
    load: Callable[[BlobType, bytes, Location, int], bytes],
    refs: list[BlobRef],
    keys: crypto.KeyBase,
    level: int | None,
    padding: str | None = None,
) -> tuple[bytes, list[packfmt.PackEntry]]:
    """Blobs read with ``load`` (authenticated, decrypted and re-hashed there) and sealed
    again with ``keys`` (padded with the target's ``padding``): their sealed bytes end to
    end and their entries in them (for another repository's packer: copy)."""
    body = bytearray()
    out: list[packfmt.PackEntry] = []
    for ref in refs:
        data = load(ref.type, ref.blob_id, ref.location, ref.raw_length)
        sealed = packfmt.seal_blob(keys, ref.type, ref.blob_id, data, level, None, padding)
        out.append(packfmt.PackEntry(ref.blob_id, ref.type, len(body), len(sealed), len(data)))
        body += sealed
    return bytes(body), out


class BlobReader(PackRanges):
    """Blobs by ID through the master index; whole packs and pack headers by pack ID."""

    def __init__(self, backend: Backend, keys: crypto.KeyBase, indexes: IndexStore) -> None:
        self.backend = backend
        self._keys = keys
        self._indexes = indexes
        self.cache: LocalCache | None = None  # whole tree packs, when a cache is in use
        self._lock = threading.Lock()
        self._tree_packs: OrderedDict[bytes, bytes] = OrderedDict()
        # Tree packs of the cache, verified whole this run: pack ID -> open descriptor.
        # Closed only under _lock, which every read of one holds.
        self._tree_files: OrderedDict[bytes, int] = OrderedDict()
        # Tree packs whose whole bytes did not match their name: their trees are read
        # one blob range at a time, so one damaged tree costs one directory, not the pack.
        self.damaged_tree_packs: dict[bytes, str] = {}
        # Other copies of blobs stored more than once (the master index keeps the first),
        # found by one pass over the index files the first time a read fails.
        self._alternates: dict[bytes, list[Location]] | None = None

    def known_pack_size(self, pack_id: bytes) -> int | None:
        """The pack's size from its index entries (spec §9.6), or None."""
        indexes = self._indexes
        extent = indexes.index.extent(pack_id) or indexes.garbage_index.extent(pack_id)
        return None if extent is None else packfmt.pack_size(self.version, *extent)

    def locate(self, blob_id: bytes) -> Location:
        """The pack, offset and length of a stored blob; BlobNotFound if none."""
        self._indexes.load()
        loc = self._indexes.index.get(blob_id) or self._indexes.garbage_index.get(blob_id)
        if loc is None:
            raise BlobNotFound(blob=blob_id.hex())
        return loc

    def locate_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, Location]:
        """Where each of these stored blobs is (``locate`` for many: those not
        found are left out)."""
        self._indexes.load()
        ids = blob_ids if isinstance(blob_ids, (list, tuple, set)) else list(blob_ids)
        found: dict[bytes, Location] = {}
        self._indexes.index.get_many(ids, found)
        if len(found) < len(ids):  # some not found (or named twice): the garbage index
            self._indexes.garbage_index.get_many(ids, found)
        return found

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        """Read, authenticate, decrypt and re-hash one blob; when its copy fails, from
        another pack that holds it too."""
        loc = self.locate(blob_id)
        try:
            return self._load_at(loc, blob_type, blob_id, raw_length)
        except CasError as first:
            for other in self._other_copies(blob_id, loc.pack_id):
                try:
                    return self._load_at(other, blob_type, blob_id, raw_length)
                except CasError:
                    continue
            raise first

    def _other_copies(self, blob_id: bytes, pack_id: bytes) -> list[Location]:
        with self._lock:
            if self._alternates is None:
                self._alternates = self._find_alternates()
            return [a for a in self._alternates.get(blob_id, []) if a.pack_id != pack_id]

    def _find_alternates(self) -> dict[bytes, list[Location]]:
        """Every index entry whose blob the master index places in another pack."""
        found: dict[bytes, list[Location]] = {}
        index, garbage = self._indexes.index, self._indexes.garbage_index
        for fid in self._indexes.file_ids():
            try:
                index_file = self._indexes.read(fid)
            except CasError:
                continue  # damaged: the other files still serve
            for pid, entries in index_file.packs.items():
                for e in entries:
                    primary = index.get(e.blob_id) or garbage.get(e.blob_id)
                    if primary is not None and primary.pack_id != pid:
                        found.setdefault(e.blob_id, []).append(Location(pid, e.offset, e.length))
        return found

    def _load_at(
        self, loc: Location, blob_type: BlobType, blob_id: bytes, raw_length: int | None
    ) -> bytes:
        if (
            blob_type == BlobType.TREE
            and self.cache is not None
            and loc.pack_id not in self.damaged_tree_packs
        ):
            try:
                sealed = self._tree_range(loc.pack_id, loc.offset, loc.length)
            except IntegrityError as e:
                self.damaged_tree_packs[loc.pack_id] = str(e)
            else:
                try:
                    return packfmt.open_blob(self._keys, blob_type, blob_id, sealed, raw_length)
                except IntegrityError:
                    # The cache file changed since it was hashed: forgotten (hashed
                    # again, or fetched again, next time) and this tree read from storage.
                    self._forget_tree_file(loc.pack_id)
        sealed = self.read_pack_range(loc.pack_id, loc.offset, loc.length)
        return packfmt.open_blob(self._keys, blob_type, blob_id, sealed, raw_length)

    def _tree_range(self, pack_id: bytes, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of a tree pack: from its file in the local
        cache (hashed whole the first time this run, fetched whole from the backend if
        missing or bad), else from a copy in memory where the cache could not take it.
        IntegrityError if the pack fetched does not hash to its name."""
        with self._lock:
            got = self._cached_range(pack_id, offset, length)
        if got is not None:
            return got
        assert self.cache is not None
        fd = self.cache.open_verified("packs", pack_id)
        if fd is None:
            pack = read_verified(self.backend, layout.pack_name(pack_id), "pack")
            self.cache.put("packs", pack_id, pack)
            fd = self.cache.open_verified("packs", pack_id)
            if fd is None:  # the cache could not take it (full disk, permissions)
                with self._lock:
                    self._tree_packs[pack_id] = pack
                    while len(self._tree_packs) > TREE_PACKS_IN_MEMORY:
                        self._tree_packs.popitem(last=False)
                return pack[offset : offset + length]
        with self._lock:
            if pack_id in self._tree_files:  # another thread opened it meanwhile
                os.close(fd)
            else:
                self._tree_files[pack_id] = fd
                while len(self._tree_files) > TREE_PACKS_OPEN:
                    os.close(self._tree_files.popitem(last=False)[1])
            got = self._cached_range(pack_id, offset, length)
        assert got is not None
        return got

    def _forget_tree_file(self, pack_id: bytes) -> None:
        with self._lock:
            fd = self._tree_files.pop(pack_id, None)
            if fd is not None:
                os.close(fd)
            self._tree_packs.pop(pack_id, None)

    def _cached_range(self, pack_id: bytes, offset: int, length: int) -> bytes | None:
        """The range from an open cache file or a pack in memory (``_lock`` held), or
        None.  A file cut short since gives short bytes, which fail authentication."""
        fd = self._tree_files.get(pack_id)
        if fd is not None:
            self._tree_files.move_to_end(pack_id)
            return os.pread(fd, length, offset)
        pack = self._tree_packs.get(pack_id)
        if pack is not None:
            self._tree_packs.move_to_end(pack_id)
            return pack[offset : offset + length]
        return None
