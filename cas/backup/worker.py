"""A backup worker process: reads, chunks, hashes, compresses, seals and packs files.

The backup's main process walks the source, decides with the parent
snapshot what is unchanged, and hands the other regular files of a
directory, in batches, to ``--workers`` of these processes with the
directory's descriptor (SCM_RIGHTS: no path, so any depth works).  A worker
opens each file by name (not through a symlink, checking it is still the
inode the walk saw), reads its xattrs and inode flags, compares the
whole-file digest with the parent snapshot's where size and mtime suggest
the content is the same, and otherwise chunks and hashes it.  It asks the
main process which of the chunks are new (one round trip per batch, or per
``ASK_BYTES`` within a large file): the main process holds the index, and
answering claims each new blob for the asking worker, so two workers never
store the same blob.  The worker seals the new chunks into packs of its own
(BlobSaver without an index: sealing and upload threads), stores them, and
reports each stored pack; the main process indexes it.  The results of a
batch (per file: content list, digest, xattrs, flags, warnings, counts) go
back to the main process, which builds the trees and the snapshot.  The
snapshot is written only after every worker has stored and reported its
full packs and handed over the sealed blobs of its last one (``flush``),
which the main process packs with its own: a backup leaves one partly
filled data pack, as in one process, and a snapshot never names a blob that
is not stored.

Wire format (private to one run, frames of cas/ipc.py).  To a worker: one
``{"spec", "level", "pack_size", "chunker": [min, avg, max, algorithm], "connections"}``
frame, then per batch a frame carrying the directory's descriptor:
``{"j": id, "dir": shown path, "f": [[name, size, blocks, dev, ino, mtime_ns,
ctime_ns, parent digest or None, parent chunks or None], ...]}``, or for a new
directory's files ``{"j": id, "dir": shown path, "n": [name, ...], "x": the
--exclude-larger-than size (absent without one)}`` (the parent chunks,
``[content, sizes]`` of a changed file's parent node with more than one chunk,
about 39 bytes a chunk: 1 GiB of 1 MiB chunks, 39 KiB); answers ``["n", bytes
of 0/1]`` (in the order of the asks); ``["f"]`` to store the open packs.  From a
worker: ``["a", [blob ID, ...]]`` asks, ``["k", pack ID, size, blob IDs joined, types,
typecode, offsets + lengths + raw lengths as an array's bytes]`` when a pack is
stored (``entry_columns``), ``["d", id,
[result, ...]]`` when a batch is done (for files sent by name, cas/backup/pool.py
``SAVED``, ``SKIPPED``, ``BACK``), ``["f", requests]`` when flushed,
``["x", pickled exception]`` when the backup must stop (a full disk, a
storage error), ``["e", message]`` before it fails on a bug.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pickle
import select
import socket
import stat
import sys
import threading
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cas import crypto, failpoints, ipc
from cas.backend import request_summary
from cas.backend.registry import open_backend
from cas.backup.pool import AGAIN, BACK, NAMES_BYTES, SAVED, SKIPPED
from cas.backup.source import SourceReader, moved, open_source, read_small, same_digest
from cas.chunking.chunker import ChunkerParams, make_chunker
from cas.chunking.resync import ParentChunks, chunk_ids
from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.pack import PackEntry
from cas.format.tree import encode_node
from cas.fs import dirfd, posixmeta
from cas.repo.packer import FinishedPack
from cas.repo.packwriter import BlobSaver
from cas.repo.readerspec import ReaderSpec

# Chunks held while the main process answers which are new: a large file asks
# (and waits) each time this many bytes are held.
ASK_BYTES = 2 << 20
# Sealing: batches of this many bytes, two at a time (one sealed while one fills).
SEAL_BATCH = 1 << 20
# Batches read and asked about before the answer of the first is used.
HELD_BATCHES = 2
# The last, partly filled pack goes to the main process in messages of about this
# many bytes: neither side then holds a whole pack twice (sent, received, repacked).
TAIL_PIECE = 1 << 20


class Seen(NamedTuple):
    """The ``lstat`` of a file as the main process saw it (cas/backup/archiver.py SourceStat).

    A named tuple, not a frozen dataclass: one is made per file, and a frozen
    dataclass's ``__init__`` (a ``object.__setattr__`` per field) cost three times as
    much."""

    st_size: int
    st_blocks: int
    st_dev: int
    st_ino: int
    st_mtime_ns: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Seen:
        return cls(st.st_size, st.st_blocks, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class FileResult:
    """What became of one file of a batch; ``to_wire`` is what travels."""

    status: str = "ok"  # "ok", "same" (the parent's content), "skip"
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    flags: int = 0
    content: list[bytes] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    digest: bytes | None = None
    bytes_read: int = 0
    warnings: list[str] = field(default_factory=list)
    moved: bool = False  # changed while it was read: saved as read, ctime 0
    new_blobs: int = 0
    added: int = 0

    def to_wire(self) -> list[Any]:
        """The list the main process decodes (cas/backup/pool.py)."""
        return [
            self.status,
            [list(x) for x in self.xattrs],
            self.flags,
            self.content,
            self.sizes,
            self.digest,
            self.bytes_read,
            self.warnings,
            self.moved,
            self.new_blobs,
            self.added,
        ]


@dataclass
class _Ask:
    """Chunks sent to the main process to learn which are new."""

    chunks: list[tuple[bytes, bytes, FileResult]]  # (blob ID, data, file it belongs to)
    then: Callable[[], None] | None = None  # run once they are handed to the saver


class _Worker:
    def __init__(self, sock: socket.socket, init: dict[str, Any]) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()  # upload threads report packs too
        spec = ReaderSpec.decode(init["spec"])
        self.keys = crypto.key_factory(spec.key_type, spec.key_material)
        self.backend = open_backend(spec.location, spec.backend_options)
        lo, avg, hi, algorithm = init["chunker"]
        self.chunker = make_chunker(self.keys, ChunkerParams(lo, avg, hi, algorithm))
        self.min_chunk = lo
        self.data_id = functools.partial(self.keys.blob_id, BlobType.DATA)
        # One sealing thread: the other cores have workers of their own.
        self.saver = BlobSaver(
            self.backend,
            self.keys,
            init["pack_size"],
            None,
            None,
            on_pack=self._stored,
            threads=int(os.environ.get("CAS_SEAL_THREADS", "1")),
            batch_bytes=SEAL_BATCH,
            batches=2,
            fmt=spec.pack_format,
        )
        self.saver.compression_level = init["level"]
        self.saver.set_connections(init["connections"])
        self.opener = dirfd.Opener()
        self.names_cache = posixmeta.NameCache()  # user and group names of the nodes made here
        self.inbox: deque[tuple[dict[str, Any], int]] = deque()  # batches not started
        self.asks: deque[_Ask] = deque()  # sent, in order, not yet answered
        self.held = 0  # batches read whose answer has not come
        self.pending: list[tuple[bytes, bytes, FileResult]] = []
        self.pending_bytes = 0
        self.flush_asked = False
        self.poll = select.poll()  # not select(): the descriptor may be above 1024
        self.poll.register(sock, select.POLLIN)

    def send(self, value: Any) -> None:
        with self.send_lock:
            ipc.send(self.sock, value)

    # -- messages -------------------------------------------------------------------

    def serve(self) -> None:
        """Work through batches as they come until the main process closes the socket."""
        while True:
            if self.inbox and self.held < HELD_BATCHES:
                msg, fd = self.inbox.popleft()
                try:
                    self.batch(msg, fd)
                finally:
                    os.close(fd)
                self.take(block=False)
                continue
            if self.flush_asked and not self.inbox and not self.asks:
                self.flush()
                continue
            self.take(block=True)

    def take(self, *, block: bool) -> None:
        """Receive and handle the messages waiting (with ``block``, at least one);
        EOFError when the main process closed the socket (the worker ends)."""
        while block or self.poll.poll(0):
            block = False
            msg, fd = ipc.recv_maybe_fd(self.sock)
            if fd is not None:
                self.inbox.append((msg, fd))
            elif msg[0] == "n":
                self.answered(bytes(msg[1]))
            elif msg[0] == "f":
                self.flush_asked = True
            else:
                raise ValueError(f"unexpected message {msg[0]!r}")

    # -- files ----------------------------------------------------------------------

    def batch(self, msg: dict[str, Any], dir_fd: int) -> None:
        """Read the files of one batch; its result goes out once its chunks are stored."""
        failpoints.hit("backup-worker-batch")
        shown: bytes = msg["dir"]
        if "n" in msg:
            self.names(msg, dir_fd, shown)
            return
        results = []
        for name, size, blocks, dev, ino, mtime, ctime, pdigest, pchunks in msg["f"]:
            seen = Seen(size, blocks, dev, ino, mtime, ctime)
            results.append(self.file(dir_fd, name, shown, seen, pdigest, pchunks))
        job = msg["j"]
        self.held += 1

        def done() -> None:
            self.held -= 1
            self.send(["d", job, [r.to_wire() for r in results]])

        self.ask(done)

    def names(self, msg: dict[str, Any], dir_fd: int, shown: bytes) -> None:
        """Back up the files ``msg["n"]`` names in a new directory (no parent node to
        compare with): ``lstat``, node, content; each result is the file's encoded node
        (``NameResult``), made once its chunks are stored."""
        limit: int | None = msg.get("x")
        done_files: list[tuple[bytes, os.stat_result, FileResult] | list[Any]] = []
        names: list[bytes] = msg["n"]
        size = 0
        for i, name in enumerate(names):
            if size >= NAMES_BYTES:  # the rest to other workers too
                done_files += [[AGAIN]] * (len(names) - i)
                break
            path = shown + b"/" + name
            try:
                st = os.lstat(name, dir_fd=dir_fd)
            except OSError as e:
                done_files.append([SKIPPED, [f"{_shown(path)}: {dirfd.reason(e)}; skipped"], 0])
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                # Replaced since it was listed, or a name of a hardlinked inode: the
                # main process decides (it keeps the map of inodes saved).
                done_files.append([BACK])
                continue
            if limit is not None and st.st_size > limit:  # --exclude-larger-than
                done_files.append([SKIPPED, [], 0])
                continue
            size += st.st_size
            done_files.append(
                (
                    name,
                    st,
                    self.file(
                        dir_fd,
                        name,
                        shown,
                        Seen.of(st),
                        None,
                        None,
                    ),
                )
            )
        job = msg["j"]
        self.held += 1

        def done() -> None:
            self.held -= 1
            self.send(["d", job, [self.name_result(shown, d) for d in done_files]])

        self.ask(done)

    def name_result(
        self, shown: bytes, done: tuple[bytes, os.stat_result, FileResult] | list[Any]
    ) -> list[Any]:
        """What the main process gets for one file of ``names`` (see NameResult)."""
        if isinstance(done, list):
            return done
        name, st, r = done
        if r.status != "ok":
            return [SKIPPED, r.warnings, r.bytes_read]
        node, _ = posixmeta.node_from_stat(
            name,
            st,
            path=shown + b"/" + name,
            names=self.names_cache,
            read_xattrs=False,
            read_flags=False,
        )
        node.xattrs, node.flags = r.xattrs, r.flags
        node.content, node.sizes, node.size, node.digest = (
            r.content,
            r.sizes,
            sum(r.sizes),
            r.digest,
        )
        if r.warnings or r.moved:
            node.ctime_ns = 0  # metadata missing or a change seen: read again next time
        return [
            SAVED,
            encode_node(node),
            st.st_size,
            r.added,
            r.new_blobs,
            r.bytes_read,
            r.warnings,
        ]

    def file(
        self, dir_fd: int, name: bytes, dir_shown: bytes, seen: Seen, pdigest: Any, pchunks: Any
    ) -> FileResult:
        r = FileResult()
        path = dir_shown + b"/" + name
        try:
            fd = open_source(self.opener, name, dir_fd, seen)
        except OSError as e:
            r.status = "skip"
            r.warnings.append(f"{_shown(path)}: {dirfd.reason(e)}; skipped")
            return r
        try:
            r.xattrs, r.flags, r.warnings = posixmeta.fd_metadata(fd, path)
            if pdigest is not None:
                same, r.bytes_read = same_digest(fd, seen, self.keys.file_digest(), pdigest)
                if same:
                    r.status = "same"
                    return r
            parent = None if pchunks is None else ParentChunks.from_wire(pchunks)
            self.read(fd, seen, r, path, parent)
        finally:
            os.close(fd)
        return r

    def read(
        self, fd: int, seen: Seen, r: FileResult, path: bytes, parent: ParentChunks | None
    ) -> None:
        reader = SourceReader(fd, seen)
        digest = self.keys.file_digest()
        size = 0
        try:
            # A file shorter than the minimum chunk is one chunk: one pread, no chunker
            # (as in the main process: source.read_small).
            small, got = read_small(fd, seen, self.min_chunk)
            r.bytes_read += got
            if small is None:
                chunks = chunk_ids(self.chunker, self.data_id, reader, parent)
            else:
                chunks = iter([(small, self.data_id(small))] if small else [])
            for chunk, blob_id in chunks:
                digest.update(chunk)
                r.content.append(blob_id)
                r.sizes.append(len(chunk))
                size += len(chunk)
                self.pending.append((blob_id, chunk, r))
                self.pending_bytes += len(chunk)
                if self.pending_bytes >= ASK_BYTES:
                    self.ask(None)
                    self.wait_answers()  # bounds what a large file holds
            after = os.fstat(fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            r.status = "skip"
            r.warnings.append(f"{_shown(path)}: read error: {e.strerror}; skipped")
            return
        finally:
            r.bytes_read += reader.bytes_read
        r.digest = digest.digest()
        if moved(after, seen) or size != seen.st_size:
            r.moved = True
            r.warnings.append(f"{_shown(path)}: file changed while it was read; saved as read")

    # -- which chunks are new --------------------------------------------------------

    def ask(self, then: Callable[[], None] | None) -> None:
        """Ask which of the pending chunks are new; ``then`` runs once they are stored."""
        chunks, self.pending, self.pending_bytes = self.pending, [], 0
        if not chunks and not self.asks:
            if then is not None:
                then()
            return
        self.asks.append(_Ask(chunks, then))
        self.send(["a", [c[0] for c in chunks]])

    def wait_answers(self) -> None:
        while self.asks:
            self.take(block=True)

    def answered(self, mask: bytes) -> None:
        a = self.asks.popleft()
        if len(mask) != len(a.chunks):
            raise ValueError("an answer does not match its question")
        for new, (blob_id, data, r) in zip(mask, a.chunks, strict=True):
            if new:
                self.saver.save(BlobType.DATA, data, blob_id)
                r.new_blobs += 1
                r.added += len(data)
        if a.then is not None:
            a.then()

    # -- packs ----------------------------------------------------------------------

    def _stored(self, pack: FinishedPack) -> None:
        """A pack is stored (on an upload thread): the main process indexes it."""
        failpoints.hit("backup-worker-pack-stored")  # stored, not yet reported
        self.send(["k", pack.pack_id, pack.size, *entry_columns(pack.entries)])

    def flush(self) -> None:
        """Store every full pack (each reported as stored), hand the sealed blobs of the
        last, partly filled one to the main process (which packs them with the other
        workers' remainders), then say so."""
        self.flush_asked = False
        for body, entries in self.saver.take_open(TAIL_PIECE):
            self.send(["t", body, _wire_entries(entries)])
        self.saver.flush()
        self.send(["f", request_summary(self.backend) or {}])


def _shown(path: bytes) -> str:
    """A path as warnings show it (decoded only when there is one to give)."""
    return path.decode("utf-8", "backslashreplace")


def entry_columns(entries: list[PackEntry]) -> list[Any]:
    """A stored pack's blobs as columns (``["k", ...]``): their IDs joined, their types
    as one byte each, then the typecode and bytes of an array of their offsets, lengths
    and raw lengths (4 bytes each where every one fits, else 8; in this machine's byte
    order: both processes run on it).  The main process indexes them without a list
    or a ``PackEntry`` per blob (cas/backup/pool.py ``_columns``)."""
    numbers = [e.offset for e in entries]
    numbers += [e.length for e in entries]
    numbers += [e.raw_length for e in entries]
    try:
        values = array("I", numbers)
    except OverflowError:
        values = array("Q", numbers)
    ids = b"".join([e.blob_id for e in entries])
    return [ids, bytes([int(e.type) for e in entries]), values.typecode, values.tobytes()]


def _wire_entries(entries: list[PackEntry]) -> list[list[Any]]:
    return [[e.blob_id, int(e.type), e.offset, e.length, e.raw_length] for e in entries]


def _serve(sock: socket.socket) -> None:
    ipc.keep_heap_small()
    worker = _Worker(sock, ipc.recv(sock))
    try:
        worker.serve()
    except (EOFError, ConnectionError):
        raise  # the main process is gone
    except (OSError, CasError) as e:  # a full disk, a storage error: the backup stops
        with contextlib.suppress(OSError):
            worker.send(["x", pickle.dumps(e)])
    finally:
        worker.saver.close()
        worker.backend.close()


def _report_bug(sock: socket.socket, e: Exception) -> None:
    ipc.send(sock, ["e", f"{type(e).__name__}: {e}"])


def main(argv: list[str]) -> None:
    """Entry point: ``python -m cas.backup.worker FD PARENT_PID``."""
    ipc.run_helper(argv, _serve, _report_bug)


if __name__ == "__main__":
    main(sys.argv)
