"""A read-only view of a repository's snapshots as a filesystem, independent of FUSE.

The view is what ``cas mount`` shows; :mod:`cas.mount.fusefs` only translates
between it and libfuse, so everything here is testable without a mount.
It is written against :class:`SnapshotStore` (list and load snapshots, load
blobs), never against the repository.

Layout (inode 1 is the root)::

    snapshots/<time>/...        every snapshot, plus a ``latest`` symlink
    ids/<short id>/...          the same snapshots by ID prefix
    hosts/<host>/<time>/...     by host (each with ``latest``)
    tags/<tag>/<time>/...       by tag (each with ``latest``)

Inside a snapshot directory are the saved absolute paths as restore lays
them out (the snapshot's root tree).  Every entry shows its recorded
metadata: permission bits with setuid/setgid/sticky, owner, size, the three
times in nanoseconds, link count, symlink target, device number and xattrs.
Entries that were hardlinks of one another when backed up (same device and
inode within one snapshot) share one inode here.  ``st_blocks`` counts the
4 KiB blocks restore would allocate, and ``seek`` answers SEEK_DATA/SEEK_HOLE
with the same holes (:mod:`cas.sparse`: all-zero blobs, and zero blocks inside
blobs that compressed to almost nothing), so a file that restore would write
sparse looks sparse to ``du``, ``cp`` and ``rsync``.

A snapshot directory is one object wherever it appears (``snapshots/``,
``ids/``, ``hosts/``, ``tags/``), so it has one inode.  Trees are loaded
lazily, when a directory is first looked into.  File content is decrypted
on demand through a bounded blob cache, with blobs ahead of a sequential
reader prefetched in the background.  Time names are local time, like
restic's; snapshots that fall in the same second get ``-1``, ``-2``, ...
in (time, ID) order.

Errors are ``OSError`` with the errno a filesystem would give (ENOENT,
ENOTDIR, EISDIR, EINVAL, ENODATA, EIO for damaged or missing repository
data).  All methods may be called from several threads at once.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from cas import sparse
from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.snapshot import Snapshot
from cas.format.tree import TYPE_BITS, Node
from cas.protocols import BlobReader
from cas.selection import EVERY_SNAPSHOT, SnapshotFilter
from cas.walker import load_tree

__all__ = [
    "CACHE_BYTES",
    "HOLE_MAX",
    "HOLE_MIN",
    "READAHEAD_BYTES",
    "REFRESH_SECONDS",
    "ROOT_INO",
    "Attr",
    "BlobCache",
    "DirEntry",
    "SnapshotStore",
    "SnapshotView",
    "time_name",
]

log = logging.getLogger(__name__)

ROOT_INO = 1
REFRESH_SECONDS = 3.0  # at most one re-listing of snapshots/ per this many seconds
CACHE_BYTES = 64 << 20  # decrypted blobs kept in memory
READAHEAD_BYTES = 8 << 20  # how far ahead of a sequential reader blobs are prefetched
READAHEAD_WORKERS = 2
# An all-zero blob of at least this size counts as a hole, as restore writes it.
HOLE_MIN = 4096
# Recognising a zero blob hashes that many zeros: beyond this size (far above
# any chunker's default) a blob is counted as data rather than hashed.
HOLE_MAX = 64 << 20
BLOCK = 4096  # allocation unit used for st_blocks
BLKSIZE = 4096  # st_blksize: preferred I/O size reported to readers
ZERO_ID_CACHE = 4096  # sizes whose zero-blob ID is remembered
# zstd packs a run of zeros into a few dozen bytes per MiB: a blob stored larger
# than this (+ 1/256 of its size) holds something else and is not hashed as zeros.
ZERO_STORED_MAX = 1024
DIR_CACHE_PATHS = 1 << 16  # directory paths remembered by resolve()
READ_STATE_FILES = 256  # files whose read position is remembered for readahead
# A read starting at most this far after the previous one's end counts as
# sequential (the kernel's requests may be handled slightly out of order).
SEQUENTIAL_GAP = 1 << 20


class SnapshotStore(BlobReader, Protocol):
    """What the view reads: snapshot listings, snapshots and blobs."""

    def snapshot_ids(self) -> list[bytes]: ...

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot: ...

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes: ...

    def stored_size(self, blob_id: bytes) -> int | None:
        """The blob's sealed size in its pack, or None when unknown (a hint only)."""
        ...

    def listing_trusted(self) -> bool:
        """False while the listing may hide snapshots (a trust finding, spec §13.6):
        then no ``latest`` link is shown, as ``latest`` is refused by the other
        reading commands; snapshots named by time or ID stay."""
        ...


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` shows for one entry."""

    ino: int
    mode: int  # file type and permission bits, as st_mode
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int  # 512-byte units
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    blksize: int = BLKSIZE


class DirEntry(NamedTuple):
    """One name in a directory listing."""

    name: bytes
    ino: int
    mode: int


def time_name(time_ns: int) -> bytes:
    """A snapshot's directory name: its local time like restic's, 2026-11-22T04:13:01."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time_ns // 1_000_000_000)).encode()


def _enoent(what: object) -> OSError:
    return OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(what))


# -- entries -------------------------------------------------------------------


class _Entry:
    """Metadata common to every entry (slots keep a big mounted tree small)."""

    __slots__ = (
        "atime_ns",
        "ctime_ns",
        "flags",
        "gid",
        "ino",
        "mode",
        "mtime_ns",
        "nlink",
        "rdev",
        "size",
        "uid",
        "xattrs",
    )

    def __init__(self, ino: int, mode: int, *, size: int = 0, nlink: int = 1) -> None:
        self.ino = ino
        self.mode = mode
        self.nlink = nlink
        self.uid = 0
        self.gid = 0
        self.size = size
        self.rdev = 0
        self.atime_ns = self.mtime_ns = self.ctime_ns = 0
        self.flags = 0
        self.xattrs: Sequence[tuple[bytes, bytes]] = ()

    def set_times(self, ns: int) -> None:
        self.atime_ns = self.mtime_ns = self.ctime_ns = ns

    def from_node(self, node: Node) -> None:
        self.uid, self.gid = node.uid, node.gid
        self.rdev = node.rdev
        self.atime_ns, self.mtime_ns, self.ctime_ns = node.atime_ns, node.mtime_ns, node.ctime_ns
        self.flags = node.flags
        self.xattrs = node.xattrs


class _File(_Entry):
    __slots__ = ("content", "extents", "offsets", "sizes", "zero")

    def __init__(self, ino: int, mode: int, content: list[bytes], sizes: list[int]) -> None:
        super().__init__(ino, mode)
        self.content = content
        self.sizes = sizes
        self.offsets: list[int] | None = None  # start of each blob, then the end
        self.zero: frozenset[int] | None = None  # indices of all-zero blobs
        self.extents: list[tuple[int, int]] | None = None  # (offset, length) of data


class _Symlink(_Entry):
    __slots__ = ("target",)

    def __init__(self, ino: int, target: bytes) -> None:
        super().__init__(ino, stat.S_IFLNK | 0o777, size=len(target))
        self.target = target


class _Dir(_Entry):
    __slots__ = ("children",)

    def __init__(self, ino: int, mode: int) -> None:
        super().__init__(ino, stat.S_IFDIR | mode, nlink=2)
        # None until loaded; replaced whole, never changed in place, so readers
        # may iterate a reference they took without a lock.
        self.children: dict[bytes, _Entry] | None = None


class _TreeDir(_Dir):
    """A directory of a snapshot (or a snapshot's root), backed by a tree blob."""

    __slots__ = ("links", "synthetic", "tree")

    def __init__(
        self, ino: int, mode: int, tree: bytes | None, links: dict[tuple[int, int], _Entry]
    ) -> None:
        super().__init__(ino, mode)
        self.tree = tree
        self.links = links  # (device, inode) -> entry, shared by one snapshot's dirs
        self.synthetic = False  # a snapshot's root: its link count is computed
        if tree is None:
            self.children = {}


class _VirtualDir(_Dir):
    """snapshots/, ids/, hosts/..., tags/... and the root: rebuilt on refresh."""

    __slots__ = ()


# -- the blob cache ----------------------------------------------------------------


class BlobCache:
    """Decrypted data blobs, least recently used dropped first, bounded by total bytes.

    Concurrent requests for one blob load it once.  :meth:`prefetch` loads
    blobs on background threads so that a sequential reader finds them ready
    (with ``workers=0`` it loads them at once, which tests use).
    """

    def __init__(
        self,
        load: Callable[[bytes, int], bytes],
        max_bytes: int = CACHE_BYTES,
        workers: int = READAHEAD_WORKERS,
    ) -> None:
        self._load = load
        self.max_bytes = max_bytes
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[bytes, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._workers = workers
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="cas-readahead") if workers else None
        )
        self.loads = 0  # blobs loaded from the store (for tests and benchmarks)
        self.hits = 0

    @property
    def size_bytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._data

    def get(self, blob_id: bytes, size: int) -> bytes:
        """The blob's plaintext, from memory or loaded now (waiting for a load under way)."""
        with self._lock:
            data = self._data.get(blob_id)
            if data is not None:
                self._data.move_to_end(blob_id)
                self.hits += 1
                return data
            fut = self._inflight.get(blob_id)
            owner = fut is None
            if fut is None:
                fut = Future()
                self._inflight[blob_id] = fut
        if owner:
            return self._fill(blob_id, size, fut)
        return fut.result()

    def prefetch(self, blobs: Iterable[tuple[bytes, int]]) -> None:
        """Start loading blobs not yet held, without waiting; errors are left for ``get``."""
        for blob_id, size in blobs:
            with self._lock:
                if blob_id in self._data or blob_id in self._inflight:
                    continue
                if self._pool is not None and len(self._inflight) >= 2 * self._workers:
                    return
                fut: Future[bytes] = Future()
                self._inflight[blob_id] = fut
            if self._pool is None:
                self._fill_quietly(blob_id, size, fut)
                continue
            try:
                self._pool.submit(self._fill_quietly, blob_id, size, fut)
            except RuntimeError:  # closed
                with self._lock:
                    self._inflight.pop(blob_id, None)
                fut.cancel()
                return

    def _fill_quietly(self, blob_id: bytes, size: int, fut: Future[bytes]) -> None:
        try:
            self._fill(blob_id, size, fut)
        except Exception as e:  # a reader that needs the blob sees the error itself
            log.debug("prefetch of blob %s failed: %s", blob_id.hex()[:8], e)

    def _fill(self, blob_id: bytes, size: int, fut: Future[bytes]) -> bytes:
        try:
            data = self._load(blob_id, size)
        except BaseException as e:
            with self._lock:
                self._inflight.pop(blob_id, None)
            fut.set_exception(e)
            raise
        with self._lock:
            self.loads += 1
            self._inflight.pop(blob_id, None)
            if len(data) <= self.max_bytes and blob_id not in self._data:
                self._data[blob_id] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, old = self._data.popitem(last=False)
                    self._bytes -= len(old)
        fut.set_result(data)
        return data

    def close(self) -> None:
        """Stop the background threads (loads under way finish on their own)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


# -- the view --------------------------------------------------------------------


@dataclass
class _Listed:
    snapshot_id: bytes
    snapshot: Snapshot
    root: _TreeDir


class SnapshotView:
    """The filesystem tree of :mod:`cas.mount.vfs`; inodes are ints, names are bytes."""

    def __init__(
        self,
        store: SnapshotStore,
        *,
        selection: SnapshotFilter = EVERY_SNAPSHOT,
        cache_bytes: int = CACHE_BYTES,
        readahead_bytes: int = READAHEAD_BYTES,
        readahead_workers: int = READAHEAD_WORKERS,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        uid: int | None = None,
        gid: int | None = None,
    ) -> None:
        self._store = store
        self._selection = selection
        self._readahead_bytes = readahead_bytes
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._lock = threading.RLock()  # inode table, lazy children, refresh results
        self._refresh_lock = threading.Lock()  # one re-listing at a time
        self._next_ino = itertools.count(ROOT_INO + 1)
        self._inodes: dict[int, _Entry] = {}
        self._virtual: dict[tuple[bytes, ...], _Entry] = {}
        self._links_of_view: set[int] = set()  # the inodes of the ``latest`` links
        # "/a/b" -> directory, for resolve(); replaced (not cleared) when the top
        # changes, so a walk that started before cannot put an old answer back.
        self._dir_cache: dict[bytes, _Dir] = {}
        self._known: dict[bytes, _Listed] = {}  # snapshot ID -> listed snapshot
        self._skipped: set[bytes] = set()  # filtered out by --host/--tag
        self._last_refresh: float | None = None
        self.errors: list[str] = []  # snapshots that could not be read
        self._zero_ids: OrderedDict[int, bytes] = OrderedDict()
        self._read_state: OrderedDict[int, int] = OrderedDict()  # ino -> end of last read
        self.cache = BlobCache(self._load_data, cache_bytes, readahead_workers)
        self._root = _VirtualDir(ROOT_INO, 0o555)
        self._root.children = {}
        self._inodes[ROOT_INO] = self._root
        self._stamp(self._root, time.time_ns())
        self._tops = {name: self._virtual_dir((name,)) for name in _TOPS}
        self._root.children = dict(self._tops)
        self._root.nlink = 2 + len(self._tops)

    # -- public API ------------------------------------------------------------

    def refresh(self, force: bool = True) -> None:
        """Re-list the snapshots (at most once per refresh interval unless ``force``)."""
        last = self._last_refresh
        if not force and last is not None and self._clock() - last < self._refresh_seconds:
            return
        with self._refresh_lock:
            now = self._clock()
            if (
                not force
                and self._last_refresh is not None
                and now - self._last_refresh < self._refresh_seconds
            ):
                return
            self._last_refresh = now
            try:
                ids = self._store.snapshot_ids()
            except CasError as e:
                log.warning("cannot list snapshots: %s", e)
                return
            current = set(ids)
            added: dict[bytes, _Listed] = {}
            for sid in sorted(current - set(self._known) - self._skipped):
                try:
                    snap = self._store.load_snapshot(sid)
                except CasError as e:
                    msg = f"snapshot {sid.hex()[:8]}: {e}"
                    if msg not in self.errors:
                        self.errors.append(msg)
                        log.warning("%s", msg)
                    continue
                if not self._selected(snap):
                    self._skipped.add(sid)
                    continue
                added[sid] = _Listed(sid, snap, self._snapshot_root(snap))
            if not added and current >= set(self._known):
                return
            with self._lock:
                known = {sid: s for sid, s in self._known.items() if sid in current}
                known.update(added)
                self._known = known
                self._rebuild()

    def lookup(self, parent: int, name: bytes) -> Attr:
        """The attributes of ``name`` in directory ``parent``."""
        return self._attr(self._child(self._entry(parent), name))

    def getattr(self, ino: int) -> Attr:
        """The attributes of inode ``ino``."""
        return self._attr(self._entry(ino))

    def readdir(self, ino: int) -> list[DirEntry]:
        """The names in directory ``ino`` (without ``.`` and ``..``), in a stable order."""
        entry = self._entry(ino)
        if not isinstance(entry, _Dir):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(ino))
        kids = self._children(entry)
        return [DirEntry(name, e.ino, e.mode) for name, e in kids.items()]

    def readlink(self, ino: int) -> bytes:
        """A symlink's target, raw bytes."""
        entry = self._entry(ino)
        if not isinstance(entry, _Symlink):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(ino))
        return entry.target

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a file from ``offset`` (fewer only at its end)."""
        entry = self._entry(ino)
        if isinstance(entry, _Dir):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(ino))
        if not isinstance(entry, _File):
            if stat.S_ISLNK(entry.mode) or stat.S_ISREG(entry.mode):
                return b""
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(ino))
        if offset < 0 or size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(ino))
        offsets = self._offsets(entry)
        end = min(offset + size, entry.size, offsets[-1])
        if offset >= end:
            return b""
        zero = self._zero_blobs(entry)
        i = bisect.bisect_right(offsets, offset) - 1
        parts: list[bytes | memoryview] = []
        pos = offset
        try:
            while pos < end:
                start, blob_size = offsets[i], entry.sizes[i]
                hi = min(end - start, blob_size)
                if i in zero:
                    parts.append(bytes(hi - (pos - start)))
                else:
                    data = self.cache.get(entry.content[i], blob_size)
                    if len(data) != blob_size:
                        raise CasError(f"blob {entry.content[i].hex()[:8]} has the wrong size")
                    parts.append(memoryview(data)[pos - start : hi])
                pos = start + hi
                i += 1
        except CasError as e:
            log.error("read of inode %d at %d: %s", ino, offset, e)
            raise OSError(errno.EIO, f"cannot read content: {e}") from e
        self._read_ahead(entry, offset, end, i - 1)
        return b"".join(parts)

    def listxattr(self, ino: int) -> list[bytes]:
        """The names of the entry's extended attributes (POSIX ACLs included)."""
        return [name for name, _ in self._entry(ino).xattrs]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """The value of one extended attribute; ENODATA when the entry has none of that name."""
        for key, value in self._entry(ino).xattrs:
            if key == name:
                return value
        raise OSError(errno.ENODATA, os.strerror(errno.ENODATA), name.decode(errors="replace"))

    def getflags(self, ino: int) -> int:
        """The entry's recorded Linux inode flags (what ``lsattr`` shows)."""
        return self._entry(ino).flags

    def resolve(self, path: bytes) -> int:
        """The inode of a slash-separated path from the root (``/`` or ``b""`` is the root).

        The last component is not followed (like ``lstat``) unless the path ends
        in a slash; a ``latest`` link before it is, so that
        ``snapshots/latest/etc`` works.  Snapshot symlinks are never followed:
        the kernel does that before FUSE asks.
        """
        # FUSE hands over normalised absolute paths: their parent directory is
        # usually cached, and one more name finishes the walk.
        cache = self._dir_cache
        if not path.endswith(b"/"):
            parent, _, name = path.rpartition(b"/")
            d = cache.get(parent)
            if d is not None and name not in (b"", b".", b".."):
                return self._child(d, name).ino
        entry: _Entry = self._root
        parts = [p for p in path.split(b"/") if p and p != b"."]
        follow = len(parts) if path.endswith(b"/") else len(parts) - 1
        for i, part in enumerate(parts):
            child = self._child(entry, part)
            if i < follow and child.ino in self._links_of_view:
                assert isinstance(child, _Symlink)
                child = self._child(entry, child.target)
            entry = child
            if i < follow and isinstance(entry, _Dir) and len(cache) < DIR_CACHE_PATHS:
                cache[b"/" + b"/".join(parts[: i + 1])] = entry
        return entry.ino

    def snapshot_count(self) -> int:
        """How many snapshots are shown."""
        return len(self._known)

    def close(self) -> None:
        """Stop background work."""
        self.cache.close()

    # -- inodes and children -------------------------------------------------

    def _entry(self, ino: int) -> _Entry:
        entry = self._inodes.get(ino)
        if entry is None:
            raise _enoent(f"inode {ino}")
        return entry

    def _new_ino(self) -> int:
        return next(self._next_ino)

    def _child(self, parent: _Entry, name: bytes) -> _Entry:
        if not isinstance(parent, _Dir):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name.decode(errors="replace"))
        if name == b"..":
            raise OSError(errno.EINVAL, "'..' is resolved by the kernel")
        entry = self._children(parent).get(name)
        if entry is None:
            raise _enoent(name.decode(errors="replace"))
        return entry

    def _children(self, d: _Dir) -> dict[bytes, _Entry]:
        if isinstance(d, _VirtualDir):
            self.refresh(force=False)
        kids = d.children
        if kids is not None:
            return kids
        assert isinstance(d, _TreeDir) and d.tree is not None
        try:
            nodes = load_tree(self._store, d.tree)  # lazily, one directory when looked into
        except CasError as e:
            log.error("tree %s: %s", d.tree.hex()[:8], e)
            raise OSError(errno.EIO, f"cannot read directory: {e}") from e
        with self._lock:
            if d.children is None:
                d.children = {n.name: self._node_entry(n, d.links) for n in nodes}
            return d.children

    def _node_entry(self, node: Node, links: dict[tuple[int, int], _Entry]) -> _Entry:
        """The entry for one tree node; hardlinks of one snapshot share theirs."""
        key = (node.device, node.inode)
        if node.type != "dir" and node.links > 1:
            shared = links.get(key)
            if shared is not None:
                return shared
        ino = self._new_ino()
        perm = node.mode & 0o7777
        entry: _Entry
        if node.type == "dir":
            entry = _TreeDir(ino, perm, node.subtree, links)
        elif node.type == "file":
            entry = _File(ino, stat.S_IFREG | perm, list(node.content), list(node.sizes))
        elif node.type == "symlink":
            entry = _Symlink(ino, node.target or b"")
            entry.mode = stat.S_IFLNK | perm
        else:
            entry = _Entry(ino, TYPE_BITS[node.type] | perm)
        entry.from_node(node)
        entry.size = node.size
        entry.nlink = node.links
        self._inodes[ino] = entry
        if node.type != "dir" and node.links > 1:
            links[key] = entry
        return entry

    # -- attributes ------------------------------------------------------------

    def _attr(self, e: _Entry) -> Attr:
        if isinstance(e, _File):
            blocks = self._blocks(e)
        elif isinstance(e, _Symlink):
            blocks = 0
        elif isinstance(e, _Dir):
            blocks = BLOCK // 512 * ((e.size + BLOCK - 1) // BLOCK)
            if isinstance(e, _TreeDir) and e.synthetic:
                self._count_subdirs(e)
        else:
            blocks = 0
        return Attr(
            ino=e.ino,
            mode=e.mode,
            nlink=e.nlink,
            uid=e.uid,
            gid=e.gid,
            size=e.size,
            blocks=blocks,
            atime_ns=e.atime_ns,
            mtime_ns=e.mtime_ns,
            ctime_ns=e.ctime_ns,
            rdev=e.rdev,
        )

    def _count_subdirs(self, d: _TreeDir) -> None:
        try:
            kids = self._children(d)
        except OSError:
            return
        d.nlink = 2 + sum(1 for k in kids.values() if isinstance(k, _Dir))
        d.synthetic = False

    def _offsets(self, f: _File) -> list[int]:
        offsets = f.offsets
        if offsets is None:
            offsets = [0, *itertools.accumulate(f.sizes)]
            f.offsets = offsets
        return offsets

    def _zero_blobs(self, f: _File) -> frozenset[int]:
        """Indices of ``f``'s blobs that are all zero (restore leaves those as holes)."""
        zero = f.zero
        if zero is None:
            zero = frozenset(
                i
                for i, (blob_id, size) in enumerate(zip(f.content, f.sizes, strict=False))
                if HOLE_MIN <= size <= HOLE_MAX and self._may_be_zero(blob_id, size)
            )
            f.zero = zero
        return zero

    def _blocks(self, f: _File) -> int:
        """512-byte units of the 4 KiB blocks that restore would allocate (not holes)."""
        return sparse.allocated_blocks(self._extents(f)) * (BLOCK // 512)

    def _extents(self, f: _File) -> list[tuple[int, int]]:
        """``(offset, length)`` of the file's data, holes left out (:mod:`cas.sparse`):
        all-zero blobs, and zero blocks inside blobs that compressed to almost nothing."""
        extents = f.extents
        if extents is None:
            zero = self._zero_blobs(f)

            def kind(i: int) -> str:
                if i in zero:
                    return "zero"
                try:
                    stored = self._store.stored_size(f.content[i])
                except CasError:
                    stored = None
                return "scan" if sparse.worth_scanning(f.sizes[i], stored) else "data"

            def load(i: int) -> bytes:
                try:
                    return self.cache.get(f.content[i], f.sizes[i])
                except CasError as e:  # counted as data; a read reports the damage
                    log.warning("blob %s: %s", f.content[i].hex()[:8], e)
                    return b""

            extents = sparse.data_extents(f.sizes, kind, load)
            f.extents = extents
        return extents

    def seek(self, ino: int, offset: int, data: bool) -> int:
        """``lseek`` SEEK_DATA (``data``) or SEEK_HOLE in a file: ENXIO past the last
        data or the end, as a filesystem answers."""
        entry = self._entry(ino)
        if not isinstance(entry, _File):
            if isinstance(entry, _Dir):
                raise OSError(errno.EISDIR, os.strerror(errno.EISDIR), str(ino))
            raise OSError(errno.ENXIO, os.strerror(errno.ENXIO), str(ino))
        size = min(entry.size, self._offsets(entry)[-1])
        pos = sparse.seek(self._extents(entry), size, offset, data)
        if pos is None:
            raise OSError(errno.ENXIO, os.strerror(errno.ENXIO), str(ino))
        return pos

    def _may_be_zero(self, blob_id: bytes, size: int) -> bool:
        """Whether the blob is all zero: its zero-blob ID of that size, hashed only for blobs
        that compressed as zeros do (a stored size near the raw one rules zeros out)."""
        try:
            stored = self._store.stored_size(blob_id)
        except CasError:
            stored = None
        if stored is not None and stored > ZERO_STORED_MAX + size // 256:
            return False
        return blob_id == self._zero_id(size)

    def _zero_id(self, size: int) -> bytes:
        with self._lock:
            zid = self._zero_ids.get(size)
            if zid is not None:
                self._zero_ids.move_to_end(size)
                return zid
        zid = self._store.blob_id(BlobType.DATA, bytes(size))
        with self._lock:
            self._zero_ids[size] = zid
            if len(self._zero_ids) > ZERO_ID_CACHE:
                self._zero_ids.popitem(last=False)
        return zid

    # -- content ---------------------------------------------------------------

    def _load_data(self, blob_id: bytes, size: int) -> bytes:
        return self._store.load_blob(BlobType.DATA, blob_id, size)

    def _read_ahead(self, f: _File, offset: int, end: int, last: int) -> None:
        """After a sequential read (from the start, or just after the previous
        read of this file), start loading the blobs that come next."""
        with self._lock:
            prev_end = self._read_state.get(f.ino)
            self._read_state[f.ino] = end
            self._read_state.move_to_end(f.ino)
            if len(self._read_state) > READ_STATE_FILES:
                self._read_state.popitem(last=False)
        sequential = offset == 0 or (
            prev_end is not None and prev_end <= offset <= prev_end + SEQUENTIAL_GAP
        )
        if not sequential:
            return
        zero = self._zero_blobs(f)
        want: list[tuple[bytes, int]] = []
        ahead = 0
        for i in range(last + 1, len(f.content)):
            if ahead >= self._readahead_bytes and want:
                break
            ahead += f.sizes[i]
            if i not in zero:
                want.append((f.content[i], f.sizes[i]))
        if want:
            self.cache.prefetch(want)

    # -- the virtual top ---------------------------------------------------------

    def _selected(self, snap: Snapshot) -> bool:
        return self._selection.matches(snap)

    def _stamp(self, e: _Entry, ns: int) -> None:
        e.uid, e.gid = self._uid, self._gid
        e.set_times(ns)

    def _virtual_dir(self, key: tuple[bytes, ...]) -> _VirtualDir:
        d = self._virtual.get(key)
        if not isinstance(d, _VirtualDir):
            d = _VirtualDir(self._new_ino(), 0o555)
            d.children = {}
            self._stamp(d, self._root.mtime_ns)
            self._virtual[key] = d
            self._inodes[d.ino] = d
        return d

    def _latest_link(self, key: tuple[bytes, ...], target: bytes) -> _Symlink:
        link = self._virtual.get(key)
        if not isinstance(link, _Symlink):
            link = _Symlink(self._new_ino(), target)
            self._virtual[key] = link
            self._inodes[link.ino] = link
            self._links_of_view.add(link.ino)
        link.target, link.size = target, len(target)
        return link

    def _snapshot_root(self, snap: Snapshot) -> _TreeDir:
        root = _TreeDir(self._new_ino(), 0o755, snap.tree, {})
        root.synthetic = True
        root.uid, root.gid = snap.uid, snap.gid
        root.set_times(snap.time_ns)
        with self._lock:
            self._inodes[root.ino] = root
        return root

    def _rebuild(self) -> None:
        """Lay out the top directories for the snapshots now known (caller holds the lock)."""
        listed = sorted(self._known.values(), key=lambda s: (s.snapshot.time_ns, s.snapshot_id))
        newest = listed[-1].snapshot.time_ns if listed else self._root.mtime_ns
        # Per host and per tag, each snapshot once (two tags may map to one name).
        groups: dict[bytes, dict[bytes, dict[bytes, _Listed]]] = {b"hosts": {}, b"tags": {}}
        for s in listed:
            hosts = groups[b"hosts"].setdefault(_dir_name(s.snapshot.hostname), {})
            hosts[s.snapshot_id] = s
            for tag in s.snapshot.tags:
                groups[b"tags"].setdefault(_dir_name(tag), {})[s.snapshot_id] = s

        self._dir_cache = {}
        self._fill_times((b"snapshots",), listed)
        self._fill_names(self._tops[b"ids"], _short_ids(listed))
        for top, by_name in groups.items():
            subdirs: dict[bytes, _Entry] = {}
            for name, members in sorted(by_name.items()):
                subdirs[name] = self._fill_times((top, name), list(members.values()))
            self._fill_names(self._tops[top], subdirs)
        for d in self._virtual.values():
            if isinstance(d, _VirtualDir | _Symlink):
                d.set_times(newest)
        self._root.set_times(newest)

    def _fill_times(self, key: tuple[bytes, ...], members: list[_Listed]) -> _VirtualDir:
        d = self._virtual_dir(key)
        names: dict[bytes, _Entry] = {}
        seen: dict[bytes, int] = {}
        name = b""
        for s in members:
            base = time_name(s.snapshot.time_ns)
            n = seen.get(base, 0)
            seen[base] = n + 1
            name = base if n == 0 else base + b"-%d" % n
            names[name] = s.root
        if members and self._store.listing_trusted():  # sorted by time: the last is latest
            names[b"latest"] = self._latest_link((*key, b"latest"), name)
        self._fill_names(d, names)
        return d

    def _fill_names(self, d: _VirtualDir, names: dict[bytes, _Entry]) -> None:
        d.children = names
        d.nlink = 2 + sum(1 for e in names.values() if isinstance(e, _Dir))


_TOPS = (b"snapshots", b"ids", b"hosts", b"tags")


def _dir_name(text: str) -> bytes:
    """A host or tag as one directory name."""
    name = text.encode("utf-8", "surrogateescape").replace(b"/", b"_").replace(b"\0", b"_")
    return name if name not in (b"", b".", b"..") else b"_" + name


def _short_ids(listed: list[_Listed]) -> dict[bytes, _Entry]:
    """8 hex digits per snapshot, more where two snapshots share a prefix."""
    hexes = [s.snapshot_id.hex() for s in listed]
    width = 8
    for a, b in itertools.pairwise(sorted(hexes)):
        common = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        width = max(width, common + 1)
    return {h[:width].encode(): s.root for h, s in zip(hexes, listed, strict=True)}
