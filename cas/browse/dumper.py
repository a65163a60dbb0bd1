"""``cas dump``: a stored file's bytes, or a directory as a tar or zip stream.

Content is read blob by blob through a :class:`~cas.protocols.BlobReader` and
written as it comes: a few blobs are loaded ahead on threads (READAHEAD), never
a whole file.  Holes are found as the mount finds them (:mod:`cas.sparse`) and
written as GNU sparse members, so an extracted file is as sparse as a restored
one.

A tar member holds everything ``tar --xattrs --acls --numeric-owner -xpf``
restores (:mod:`cas.browse.tarstream`); what tar cannot hold is left out and
reported: sockets, and inode flags (chattr), ctimes and inode numbers, which no
archive restores.  Atimes are in the archive; GNU tar applies them only with
-G.  A zip holds files, directories and symlinks with their modes and times
(2-second resolution); names that are not UTF-8 are written with their bytes as
``\\xNN`` text.
"""

from __future__ import annotations

import os
import stat
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from cas import sparse
from cas.browse import tarstream as ts
from cas.browse.nav import Entry, WalkError, shown, walk
from cas.crypto import BlobType
from cas.errors import CasError, IntegrityError
from cas.format.tree import Node
from cas.protocols import BlobReader

READAHEAD = 4  # blobs loaded ahead of the one being written (at most 8 MiB each by default)

_TAR_TYPES = {
    "file": ts.REGULAR,
    "dir": ts.DIRECTORY,
    "symlink": ts.SYMLINK,
    "chardev": ts.CHARDEV,
    "blockdev": ts.BLOCKDEV,
    "fifo": ts.FIFO,
}


class DumpError(CasError):
    """cannot dump {path}: {detail}"""


@dataclass(frozen=True)
class Blobs:
    """How dump reads content and finds holes."""

    reader: BlobReader
    is_zero: Callable[[bytes, int], bool]  # blob ID, size -> an all-zero blob?
    stored_size: Callable[[bytes], int | None]  # sealed size in its pack, if known


@dataclass
class DumpSummary:
    """What an archive received."""

    members: int = 0
    content_bytes: int = 0  # bytes of content written (holes not counted)
    sparse_files: int = 0
    hardlinks: int = 0
    skipped: list[tuple[bytes, str]] = field(default_factory=list)  # (path, why)


class Dumper:
    """Streams snapshot entries to a binary stream."""

    def __init__(self, blobs: Blobs, on_error: WalkError | None = None) -> None:
        self.blobs = blobs
        self.on_error = on_error
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the loading threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # -- one file ------------------------------------------------------------------

    def content(self, node: Node) -> Iterator[bytes]:
        """A file's bytes in order (zero blobs without a read), at most READAHEAD
        blobs loaded ahead of the one being written."""
        _check_sizes(node)
        yield from self._stream(list(zip(node.content, node.sizes, strict=True)))

    def extents(self, node: Node) -> list[tuple[int, int]] | None:
        """The file's data extents when it has holes, else None."""
        _check_sizes(node)
        if node.size < sparse.BLOCK:
            return None
        found = sparse.data_extents(node.sizes, self._kind(node), self._loader(node))
        if sum(n for _, n in found) == node.size:
            return None
        return found

    def sparse_content(self, node: Node, extents: list[tuple[int, int]]) -> Iterator[bytes]:
        """The bytes of ``extents`` of the file, in order, reading only the blobs they touch."""
        wanted: list[tuple[bytes, int]] = []
        cuts: list[list[tuple[int, int]]] = []  # per wanted blob: its slices to write
        pos, k = 0, 0
        for blob_id, size in zip(node.content, node.sizes, strict=True):
            start, pos = pos, pos + size
            while k < len(extents) and extents[k][0] + extents[k][1] <= start:
                k += 1
            parts = []
            j = k
            while j < len(extents) and extents[j][0] < pos:
                lo = max(extents[j][0], start) - start
                hi = min(extents[j][0] + extents[j][1], pos) - start
                parts.append((lo, hi))
                j += 1
            if parts:
                wanted.append((blob_id, size))
                cuts.append(parts)
        for data, parts in zip(self._stream(wanted), cuts, strict=True):
            for lo, hi in parts:
                yield data[lo:hi]

    def _stream(self, wanted: list[tuple[bytes, int]]) -> Iterator[bytes]:
        """The plaintexts of ``wanted`` blobs in order: zero blobs made here, the others
        loaded on threads, at most READAHEAD ahead of the one the caller has."""
        if len(wanted) <= 1:
            for blob_id, size in wanted:
                yield self._load_or_zero(blob_id, size)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(READAHEAD, thread_name_prefix="cas-dump")
        pending: deque[Future[bytes]] = deque()
        try:
            for blob_id, size in wanted:
                pending.append(self._pool.submit(self._load_or_zero, blob_id, size))
                if len(pending) > READAHEAD:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()

    def _load_or_zero(self, blob_id: bytes, size: int) -> bytes:
        if self.blobs.is_zero(blob_id, size):
            return bytes(size)
        return self._load(blob_id, size)

    def _kind(self, node: Node) -> Callable[[int], str]:
        def kind(i: int) -> str:
            blob_id, size = node.content[i], node.sizes[i]
            if self.blobs.is_zero(blob_id, size):
                return "zero"
            stored = self.blobs.stored_size(blob_id)
            return "scan" if sparse.worth_scanning(size, stored) else "data"

        return kind

    def _loader(self, node: Node) -> Callable[[int], bytes]:
        return lambda i: self._load(node.content[i], node.sizes[i])

    def _load(self, blob_id: bytes, size: int) -> bytes:
        data = self.blobs.reader.load_blob(BlobType.DATA, blob_id, size)
        if len(data) != size:
            raise IntegrityError(what=f"blob {blob_id.hex()}", detail="has the wrong size")
        return data

    # -- archives ------------------------------------------------------------------

    def tar(self, top: Entry, out: BinaryIO) -> DumpSummary:
        """``top`` (unless it is the snapshot's root) and everything below it as a tar."""
        w = ts.TarWriter(out)
        summary = DumpSummary()
        first_names: dict[tuple[int, int], bytes] = {}
        for entry, name in self._members(top):
            node = entry.node
            assert node is not None
            if node.type not in _TAR_TYPES:
                summary.skipped.append((entry.path, f"a {node.type}: tar cannot hold it"))
                continue
            m = _tar_member(node, name)
            if node.type != "dir" and node.links > 1:
                key = (node.device, node.inode)
                earlier = first_names.get(key)
                if earlier is not None:
                    m.type, m.linkname, m.size = ts.HARDLINK, earlier, 0
                    w.add(m)
                    summary.members += 1
                    summary.hardlinks += 1
                    continue
                first_names[key] = name
            if node.type == "file":
                with failing(entry.path):
                    extents = self.extents(node)
                    if extents is not None:
                        m.extents = extents
                        summary.sparse_files += 1
                        w.add(m, self._counted(self.sparse_content(node, extents), summary))
                    else:
                        w.add(m, self._counted(self.content(node), summary))
            else:
                w.add(m)
            summary.members += 1
        w.close()
        return summary

    def zip(self, top: Entry, out: BinaryIO) -> DumpSummary:
        """Files, directories and symlinks at and below ``top`` as a zip (ZIP64, deflated)."""
        summary = DumpSummary()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for entry, name in self._members(top):
                node = entry.node
                assert node is not None
                if node.type not in ("file", "dir", "symlink"):
                    summary.skipped.append((entry.path, f"a {node.type}: zip cannot hold it"))
                    continue
                text = name.decode("utf-8", "backslashreplace")
                if node.type == "dir":
                    text += "/"
                info = zipfile.ZipInfo(text, _zip_time(node.mtime_ns))
                info.external_attr = (_st_mode(node) << 16) | (0x10 if node.type == "dir" else 0)
                info.compress_type = zipfile.ZIP_DEFLATED
                if node.type == "symlink":
                    info.compress_type = zipfile.ZIP_STORED
                    zf.writestr(info, node.target or b"")
                elif node.type == "dir":
                    zf.writestr(info, b"")
                else:
                    with failing(entry.path), zf.open(info, "w", force_zip64=True) as f:
                        for chunk in self._counted(self.content(node), summary):
                            f.write(chunk)
                summary.members += 1
        out.flush()
        return summary

    def _members(self, top: Entry) -> Iterator[tuple[Entry, bytes]]:
        """(entry, name in the archive): names start at ``top``'s own name."""
        cut = len(top.path.rsplit(b"/", 1)[0]) + 1 if top.node is not None else 1
        if top.node is not None:
            yield top, top.path[cut:]
        for entry in walk(self.blobs.reader, top, on_error=self.on_error):
            yield entry, entry.path[cut:]

    @staticmethod
    def _counted(chunks: Iterator[bytes], summary: DumpSummary) -> Iterator[bytes]:
        for chunk in chunks:
            summary.content_bytes += len(chunk)
            yield chunk


@contextmanager
def failing(path: bytes) -> Iterator[None]:
    """Name the entry whose content could not be read or written in the error."""
    try:
        yield
    except DumpError:
        raise
    except CasError as e:
        raise DumpError(path=shown(path), detail=str(e)) from e


def _check_sizes(node: Node) -> None:
    if sum(node.sizes) != node.size:
        raise IntegrityError(
            what=f"file {node.name.decode('utf-8', 'backslashreplace')!r}",
            detail=f"its blobs hold {sum(node.sizes)} bytes, not its size {node.size}",
        )


def _st_mode(node: Node) -> int:
    bits = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}
    return bits.get(node.type, 0) | (node.mode & 0o7777)


def _zip_time(ns: int) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(ns // 1_000_000_000)
    if t.tm_year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (min(t.tm_year, 2107), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _tar_member(node: Node, name: bytes) -> ts.Member:
    return ts.Member(
        name=name,
        type=_TAR_TYPES[node.type],
        mode=node.mode & 0o7777,
        uid=node.uid,
        gid=node.gid,
        uname=node.user,
        gname=node.group,
        size=node.size if node.type == "file" else 0,
        mtime_ns=node.mtime_ns,
        atime_ns=node.atime_ns,
        linkname=node.target or b"",
        rdev_major=os.major(node.rdev) if node.rdev else 0,
        rdev_minor=os.minor(node.rdev) if node.rdev else 0,
        xattrs=node.xattrs,
    )
