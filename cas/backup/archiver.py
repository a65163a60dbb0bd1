"""Backup: turn source paths into tree blobs, data blobs and a snapshot.

The walk is iterative (an explicit stack of open directories), so trees
thousands of levels deep need no recursion; every entry is reached by its
name inside its directory's open descriptor (``fstatat``, ``openat``), so
paths longer than PATH_MAX are no obstacle (cas/fs/dirfd.py).  A directory's tree blob is
written when its last entry is done; identical trees deduplicate like data.
With a parent snapshot, a file whose size, mtime, ctime and inode are
unchanged reuses the parent's content list, xattrs and inode flags without
being opened (changing any of them moves the ctime).  Every other file and
each directory is opened once (``O_NOATIME`` where allowed): that descriptor
gives its xattrs, inode flags and its content or names, so an unreadable
entry costs one warning.  With worker processes the regular files of a
directory the parent snapshot does not have go to them by name (the listing's
file types tell them apart): a worker takes their ``lstat``, node and
encoding, and the tree splices in the encoded nodes; hardlinked files come
back to be handled here.  Holes of sparse files are found with SEEK_DATA/SEEK_HOLE and
not read; they chunk like the zeros they read as.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cas.backup.anomaly import Changes
from cas.backup.pool import AGAIN, BACK, SAVED, SaverPool
from cas.backup.source import (  # the worker processes read files with these too
    SourceReader,
    moved,
    open_source,
    read_small,
    same_digest,
)
from cas.chunking.chunker import StreamChunker
from cas.chunking.resync import ParentChunks, chunk_ids
from cas.chunking.worker import OFFLOAD_MIN, WorkerGone
from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.tree import EncodedNode, Node, encode_tree
from cas.fs import dirfd, posixmeta
from cas.fs.patterns import PatternSet
from cas.protocols import BlobWriter, Chunks, FileChunker
from cas.walker import load_tree

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


@dataclass
class BackupOptions:
    """Selection and behaviour switches of one backup run."""

    excludes: PatternSet = field(default_factory=lambda: PatternSet([]))
    iexcludes: PatternSet = field(default_factory=lambda: PatternSet([], ignore_case=True))
    exclude_if_present: list[bytes] = field(default_factory=list)
    exclude_caches: bool = False
    one_file_system: bool = False
    exclude_larger_than: int | None = None
    force: bool = False

    def excludes_path(self, path: bytes) -> bool:
        """Whether --exclude or --iexclude matches ``path``."""
        return self.excludes.matches(path) or self.iexcludes.matches(path)

    def excludes_size(self, size: int) -> bool:
        """Whether --exclude-larger-than leaves out a file of ``size`` bytes."""
        return self.exclude_larger_than is not None and size > self.exclude_larger_than


@dataclass
class BackupSummary:
    """Counts reported at the end of a backup and stored in the snapshot."""

    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unchanged: int = 0
    other_entries: int = 0
    bytes_total: int = 0  # size of all files in the snapshot
    bytes_read: int = 0  # bytes actually read from files (not holes, not unchanged files)
    data_blobs_new: int = 0
    tree_blobs_new: int = 0
    data_added: int = 0  # plaintext bytes of new blobs
    warnings: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and for the snapshot's summary field."""
        return dict(self.__dict__)


class Reporter:
    """Callbacks for progress and warnings; the CLI overrides what it shows."""

    def file_started(self, path: bytes, size: int) -> None:
        """A file is about to be read."""

    def bytes_done(self, n: int) -> None:
        """``n`` more bytes of file content were processed."""

    def warning(self, message: str) -> None:
        """Something was skipped or could not be read; the backup goes on."""

    def entry(self, path: bytes, action: str, kind: str, size: int, added: int) -> None:
        """A file or directory is decided: ``action`` "new", "modified" or "unchanged";
        ``size`` its bytes (files), ``added`` the bytes of new blobs it brought."""


@dataclass(eq=False, slots=True)
class _Frame:
    """A directory being backed up: its own node, entries left to do, nodes done.

    With worker processes a directory is done when it is walked and nothing
    in it is waiting (``waiting``: files out at workers, hardlinks waiting
    for their first name, subdirectories not done); its tree is saved then.
    """

    path: bytes
    fd: int  # the open directory (-1: it could not be opened, nothing to visit)
    node: Node | None  # None for the synthetic root
    todo: list[bytes]  # names left, in reverse order (pop() gives the next)
    select: dict[bytes, Any] | None  # for synthetic ancestors: which children to visit
    parent_nodes: dict[bytes, Node]
    parent_subtree: bytes | None
    device: int
    nodes: list[Node | EncodedNode] = field(default_factory=list)
    up: _Frame | None = None  # the directory this one is in
    # The regular files of a new directory, not yet handed to the workers by name
    # (in reverse order, as ``todo``); the other entries are in ``todo``.
    files: list[bytes] = field(default_factory=list)
    walked: bool = False
    waiting: int = 0
    saved: bool = False  # its tree is saved (once)
    batch: list[_Queued] = field(default_factory=list)  # files for the next worker batch
    batch_bytes: int = 0


@dataclass(slots=True)
class _Queued:
    """A file handed (or about to be handed) to a worker process."""

    node: Node  # from its lstat; the worker's result completes it
    path: bytes
    st: os.stat_result
    parent: Node | None
    # Its other names (hardlinks) waiting for it; None until one does (most files: a
    # million-file backup makes one of these per file).
    waiters: list[tuple[_Frame, _Queued]] | None = None


@dataclass(slots=True)
class _Names:
    """Files of a new directory handed to a worker by name (``Archiver._hand_out``)."""

    names: list[bytes]


FULL = object()  # marks a path given on the command line: back it up whole


def _path_tree(paths: list[bytes]) -> dict[bytes, Any]:
    """Nested dict of path components; a requested path maps to FULL."""
    root: dict[bytes, Any] = {}
    for p in sorted(paths, key=len):
        parts = [c for c in p.split(b"/") if c]
        d = root
        for i, part in enumerate(parts):
            cur = d.get(part)
            if cur is FULL:
                break  # an ancestor is already backed up whole
            if i == len(parts) - 1:
                d[part] = FULL
            else:
                d = d.setdefault(part, {})
    return root


def _fmt(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


_TAG_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # CACHEDIR.TAG may be a symlink
# A worker batch: up to this many files of one directory, or this many bytes.
BATCH_FILES = 64
BATCH_BYTES = 2 << 20
# While workers run, the walk takes their results (waiting when every worker has its
# share of batches) after each batch it sends, and otherwise every this many entries.
CHECK_EVERY = 64  # not a poll() per entry
CHECK_FULL = 8  # while small files are read here: soon back to the workers once they can
# Small files are read here while the workers are full only as long as this process has
# used less CPU than a worker (the restore's rule for its share, cas/restore/pool.py): on
# a million tiny files this process is what limits the backup, and reading them cost it
# a sixth of its CPU; where the workers are the limit (larger files) it helps them.
# Compared again after this many batches.
COMPARE_EVERY = 16
# The files of a new directory go to the workers by name, this many at a time (the
# worker takes their lstat, node and encoding off this process); while this process
# reads small files itself, this many at a time are walked here the usual way.
BATCH_NAMES = 128
NAMES_HERE = 16


class Archiver:
    """Backs up paths into a repository through the narrow BlobWriter interface."""

    def __init__(
        self,
        repo: BlobWriter,
        chunker: Chunks,
        options: BackupOptions | None = None,
        reporter: Reporter | None = None,
        offload: FileChunker | None = None,
        pool: SaverPool | None = None,
        pool_after: tuple[int, int] = (0, 0),
    ) -> None:
        """``pool``: worker processes that read and store new files, started once the
        walk has seen ``pool_after`` (files, bytes) of files to read."""
        self.repo = repo
        self.chunker = chunker
        # A file of at most this many bytes is one chunk (no cut is searched for before
        # the chunker's minimum size): read in one pread and stored without the chunker.
        self._one_chunk = chunker.params.min_size if isinstance(chunker, StreamChunker) else 0
        self.offload = offload  # chunks large files in another process, if given
        self.opts = options or BackupOptions()
        self.report = reporter or Reporter()
        self.summary = BackupSummary()
        self.changes = Changes()  # against the parent, for the anomaly check
        self.names = posixmeta.NameCache()
        self._hardlinks: dict[tuple[int, int], Node] = {}
        self._opener: dirfd.Opener | None = None  # made by backup(): it raises the fd limit
        self._pool = pool
        self._pool_after = pool_after
        self._pool_on = False
        self._since_check = 0  # entries walked since the workers' results were looked at
        self._full = False  # every worker had its share of batches when last looked at
        self._batches_done = 0
        self._may_read = False  # this process has used less CPU than a worker
        self._cpu_before = 0.0  # CPU seconds this process had used when they started
        self._compare_at = 0  # batches done when the CPU times are compared next
        self._seen = [0, 0]  # files and bytes to read before the workers start
        self._jobs: dict[int, tuple[_Frame, list[_Queued] | _Names]] = {}
        self._queued: dict[tuple[int, int], _Queued] = {}  # hardlinked files out at workers
        self._unfinished: set[_Frame] = set()  # walked, waiting for workers
        # Directories found where a worker expected a file (replaced since the listing):
        # walked once the stack is empty.
        self._late: list[_Frame] = []
        self._root_tree: bytes | None = None
        self._excludes = True  # whether any --exclude/--iexclude is given (backup() sets it)

    @property
    def workers_used(self) -> int:
        """Worker processes that took part."""
        return self._pool.started if self._pool is not None and self._pool_on else 0

    # -- the walk -----------------------------------------------------------

    def backup(self, paths: list[bytes], parent_tree: bytes | None) -> bytes:
        """Back up absolute ``paths``; returns the root tree ID."""
        if self._opener is None:
            self._opener = dirfd.Opener()
        self._excludes = bool(self.opts.excludes) or bool(self.opts.iexcludes)
        select: dict[bytes, Any] | None = _path_tree(paths)
        try:
            root_fd = self._opener.open_dir(b"/")
        except OSError as e:
            raise CasError(f"cannot open /: {dirfd.reason(e)}") from None
        device = -1
        if any(not p.strip(b"/") for p in paths):  # "/" itself: everything
            select = None
            try:
                names = [os.fsencode(e) for e in os.listdir(root_fd)]
            except OSError as e:
                self._opener.close_dir(root_fd)
                raise CasError(f"cannot list /: {dirfd.reason(e)}") from None
            if self.opts.one_file_system:
                device = os.fstat(root_fd).st_dev
        else:
            assert select is not None
            names = list(select)
        root = _Frame(
            b"",
            root_fd,
            None,
            sorted(names, reverse=True),
            select,
            self._parent_nodes(parent_tree),
            parent_tree,
            device,
        )
        stack = [root]
        self._root_tree = None
        self._late = []
        try:
            while True:
                if not stack:
                    if self._late:
                        stack.append(self._late.pop())
                        continue
                    if self._saved_root():
                        break
                    self._take_results(block=True)
                    continue
                if self._pool_on:
                    self._since_check += 1
                    if self._since_check >= (CHECK_FULL if self._full else CHECK_EVERY):
                        self._since_check = 0
                        self._check_workers()
                frame = stack[-1]
                if frame.todo:
                    child = self._visit(frame, frame.todo.pop())
                    if child is not None:
                        child.up = frame
                        frame.waiting += 1
                        stack.append(child)
                    continue
                if frame.files:
                    self._hand_out(frame)
                    continue
                stack.pop()
                self._send_batch(frame)
                frame.walked = True
                self._unfinished.add(frame)
                self._finish(frame)
            if self._pool_on:
                assert self._pool is not None
                self._pool.flush()  # the snapshot may name only stored blobs
        finally:
            for frame in [*stack, *self._late, *self._unfinished]:
                self._opener.close_dir(frame.fd)
        return self._saved_root()

    def _saved_root(self) -> bytes:
        """The root tree's ID once it is saved, else b""."""
        return self._root_tree or b""

    def _finish(self, frame: _Frame | None) -> None:
        """Save the tree of ``frame`` if it is walked and nothing in it is waiting, then
        of each directory above it that this leaves done."""
        assert self._opener is not None
        while frame is not None and frame.walked and frame.waiting == 0 and not frame.saved:
            frame.saved = True
            self._unfinished.discard(frame)
            self._opener.close_dir(frame.fd)
            frame.fd = -1
            tree_id = self._save_tree(frame)
            up = frame.up
            if frame.node is None or up is None:
                self._root_tree = tree_id
                return
            frame.node.subtree = tree_id
            up.nodes.append(frame.node)
            up.waiting -= 1
            frame = up

    # -- worker processes ------------------------------------------------------------

    def _pool_full(self) -> bool:
        return self._pool is not None and self._pool.full()

    def _check_workers(self) -> None:
        """Take the workers' finished batches.  While every worker has its share and
        this process has used less CPU than a worker, small files are read here
        (``_full``) rather than the walk waiting; a batch sent meanwhile (of larger
        files, or begun before) is waited for."""
        assert self._pool is not None
        self._take_results(block=False)
        limit = self._pool.per_worker * max(self._pool.started, 1)
        while len(self._jobs) > limit:
            self._take_results(block=True)
        if self._batches_done >= self._compare_at:
            self._compare_at = self._batches_done + COMPARE_EVERY
            worker = self._pool.worker_cpu()
            # Since they started: the key derivation and the index load before do not count.
            self._may_read = worker is None or time.process_time() - self._cpu_before < worker
        # Not while they start: they take the first batches the walk sends them all.
        self._full = self._may_read and self._batches_done >= limit and self._pool_full()

    def _to_workers(self, st: os.stat_result) -> bool:
        """Whether this file goes to a worker process (starting them when it is time)."""
        if self._pool_on or self._pool is None:
            return self._pool_on
        self._seen[0] += 1
        self._seen[1] += st.st_size
        if self._seen[0] <= self._pool_after[0] and self._seen[1] <= self._pool_after[1]:
            return False
        self._cpu_before = time.process_time()
        if not self._pool.start():
            self._pool = None  # none could start: every file is read here
            return False
        self._pool_on = True
        return True

    def _queue(
        self, frame: _Frame, node: Node, path: bytes, st: os.stat_result, parent: Node | None
    ) -> None:
        """Add a new or changed file (``node``: from its lstat) to the directory's next
        worker batch."""
        q = _Queued(node, path, st, parent)
        if st.st_nlink > 1:  # its other names wait for it, then take what it gets
            self._queued[(st.st_dev, st.st_ino)] = q
            self._hardlinks[(st.st_dev, st.st_ino)] = node
        frame.batch.append(q)
        frame.batch_bytes += st.st_size
        frame.waiting += 1
        self.report.file_started(path, st.st_size)
        if len(frame.batch) >= BATCH_FILES or frame.batch_bytes >= BATCH_BYTES:
            self._send_batch(frame)

    def _send_batch(self, frame: _Frame) -> None:
        if not frame.batch:
            return
        assert self._pool is not None
        files = [
            [
                q.node.name,
                st.st_size,
                st.st_blocks,
                st.st_dev,
                st.st_ino,
                st.st_mtime_ns,
                st.st_ctime_ns,
                None if q.parent is None else self._parent_digest(st, q.parent),
                None if q.parent is None else _parent_chunks(q.parent, wire=True),
            ]
            for q in frame.batch
            for st in (q.st,)
        ]
        job = self._pool.submit(frame.fd, frame.path, files, frame.batch_bytes)
        self._jobs[job] = (frame, frame.batch)
        frame.batch, frame.batch_bytes = [], 0
        self._since_check = CHECK_EVERY  # the walk looks at the workers next: full now?

    def _take_results(self, *, block: bool) -> None:
        """Use the batches the workers finished (with ``block``, wait for one)."""
        pool = self._pool
        if pool is None or not self._pool_on:
            raise CasError("a directory is waiting for a worker process that never started")
        while block or pool.has_news():
            done = pool.next_event()
            if done is None:
                continue
            block = False
            frame, queued = self._jobs.pop(done.job)
            self._batches_done += 1
            if isinstance(queued, _Names):
                self._names_done(frame, queued.names, done.results)
            else:
                for q, result in zip(queued, done.results, strict=True):
                    self._file_done(frame, q, result)
            self._finish(frame)

    def _hand_out(self, frame: _Frame) -> None:
        """Hand the next files of a new directory to a worker by name; while this
        process reads small files itself (``_full``), walk a few here instead."""
        assert self._pool is not None
        files = frame.files
        if self._full:
            frame.todo += files[-NAMES_HERE:]
            del files[-NAMES_HERE:]
            return
        self._submit_names(frame, files[-BATCH_NAMES:])
        del files[-BATCH_NAMES:]
        self._since_check = CHECK_EVERY  # the walk looks at the workers next: full now?

    def _submit_names(self, frame: _Frame, names: list[bytes]) -> None:
        assert self._pool is not None
        job = self._pool.submit_names(frame.fd, frame.path, names, self.opts.exclude_larger_than)
        self._jobs[job] = (frame, _Names(names))
        frame.waiting += len(names)

    def _names_done(self, frame: _Frame, names: list[bytes], results: list[list[Any]]) -> None:
        """Take the encoded nodes a worker made for files handed out by name (worker.py
        ``names``); a file it handed back (another name of a hardlinked inode, or no
        longer a regular file) is visited here."""
        frame.waiting -= len(names)
        base = frame.path + b"/"
        summary, report, nodes = self.summary, self.report, frame.nodes
        entry = report.entry
        back, again = [], []
        # Summed over the batch and counted once after it (the status line shows the
        # batch's last file, and its bytes, as it would after the last file's calls):
        # this loop runs once per file of a million-file backup, in the main process.
        saved = read = blobs = added_sum = size_sum = moved = 0
        last, last_size = b"", 0
        for name, result in zip(names, results, strict=True):
            kind = result[0]
            if kind == SAVED:
                _, raw, size, added, new_blobs, bytes_read, warnings = result
                for w in warnings:
                    self._warn(w)
                path = base + name
                saved += 1
                read += bytes_read
                blobs += new_blobs
                added_sum += added
                size_sum += size
                if added == 0 and size > 0:  # its content is stored already (_file_saved)
                    moved += 1
                last, last_size = path, size
                entry(path, "new", "file", size, added)
                nodes.append(EncodedNode(name, "file", raw))
            elif kind == AGAIN:
                again.append(name)
            elif kind == BACK:
                back.append(name)
            else:  # skipped
                for w in result[1]:
                    self._warn(w)
                read += result[2]
        summary.bytes_read += read
        if saved:
            summary.data_blobs_new += blobs
            summary.data_added += added_sum
            summary.bytes_total += size_sum
            summary.files_new += saved
            self.changes.moved += moved
            report.file_started(last, last_size)
            report.bytes_done(size_sum)
        if again:  # a batch of larger files than thought: split among the workers
            assert self._pool is not None
            parts = max(1, min(self._pool.count, len(again)))
            for i in range(parts):
                self._submit_names(frame, again[i::parts])
        for name in back:
            child = self._visit(frame, name)
            if child is not None:  # a directory now: walked once the stack is empty
                child.up = frame
                frame.waiting += 1
                self._late.append(child)
        if back and frame.walked:
            self._send_batch(frame)  # what visiting them queued for the workers

    def _file_done(self, frame: _Frame, q: _Queued, result: list[Any]) -> None:
        """Complete a file's node from a worker's result (worker.FileResult.to_wire)."""
        (status, xattrs, flags, content, sizes, digest, bytes_read, warnings, moved_) = result[:9]
        new_blobs, added = result[9], result[10]
        for w in warnings:
            self._warn(w)
        self.summary.bytes_read += bytes_read
        frame.waiting -= 1
        # Only a file with other names is in _queued and _hardlinks (_queue).
        linked = q.st.st_nlink > 1
        key = (q.st.st_dev, q.st.st_ino)
        if linked and self._queued.get(key) is q:
            del self._queued[key]
        if status == "skip":
            if linked and self._hardlinks.get(key) is q.node:
                del self._hardlinks[key]
            for f, w in q.waiters or ():  # its other names are read on their own
                f.waiting -= 1
                self._visit_file(f, w.node.name, w.path, w.st, w.parent)
                if f.walked:
                    self._send_batch(f)
                self._finish(f)
            return
        node = q.node
        if xattrs:
            node.xattrs = [(k, v) for k, v in xattrs]
        node.flags = flags
        if status == "same":
            assert q.parent is not None
            _same_data(node, q.parent)
        else:
            # Fresh lists and bytes from the decoder (msgpack's bin type is bytes): kept.
            node.content = content
            node.sizes = sizes
            node.size = sum(sizes)
            node.digest = digest
        if warnings or moved_:
            node.ctime_ns = 0  # metadata missing or a change seen: read again next time
        self.summary.data_blobs_new += new_blobs
        self.summary.data_added += added
        self._file_saved(q.path, q.st.st_size, q.parent, added)
        self.report.bytes_done(q.st.st_size)
        frame.nodes.append(node)
        for f, w in q.waiters or ():
            self._same_as_first(f, w.node, w.path, w.st, node)
            f.waiting -= 1
            self._finish(f)

    def _parent_nodes(self, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        try:
            return {n.name: n for n in load_tree(self.repo, tree_id)}
        except Exception as e:  # a damaged parent only costs re-reading
            self._warn(f"cannot read parent tree {tree_id.hex()[:8]}: {e}; reading files again")
            return {}

    def _visit(self, frame: _Frame, name: bytes) -> _Frame | None:
        path = frame.path + b"/" + name
        sel = frame.select.get(name) if frame.select is not None else FULL
        if sel is FULL and self._excludes and self._excluded(path):
            return None
        try:
            st = os.lstat(name, dir_fd=frame.fd)
        except OSError as e:
            self._warn(f"{_fmt(path)}: {dirfd.reason(e)}; skipped")
            return None
        parent = frame.parent_nodes.get(name)
        if stat.S_ISDIR(st.st_mode):
            return self._visit_dir(frame, name, path, st, parent, sel)
        if sel is not FULL:
            self._warn(f"{_fmt(path)}: not a directory; skipped")
            return None
        if stat.S_ISREG(st.st_mode):
            self._visit_file(frame, name, path, st, parent)
            return None
        try:
            node, warnings = posixmeta.node_from_stat(
                name, st, path=path, names=self.names, dir_fd=frame.fd
            )
        except OSError as e:  # a symlink that vanished or changed since lstat
            self._warn(f"{_fmt(path)}: {dirfd.reason(e)}; skipped")
            return None
        for w in warnings:
            self._warn(w)
        self.summary.other_entries += 1
        frame.nodes.append(node)
        return None

    def _visit_file(
        self, frame: _Frame, name: bytes, path: bytes, st: os.stat_result, parent: Node | None
    ) -> None:
        if self.opts.exclude_larger_than is not None and self.opts.excludes_size(st.st_size):
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            out = self._queued.get(key)
            if out is not None:  # another name of a file out at a worker: wait for it
                if out.waiters is None:
                    out.waiters = []
                out.waiters.append(
                    (frame, _Queued(self._stat_node(name, path, st), path, st, parent))
                )
                frame.waiting += 1
                return
            first = self._hardlinks.get(key)
            if first is not None:
                # Another name of an inode already saved: same content, xattrs and flags.
                self._same_as_first(frame, self._stat_node(name, path, st), path, st, first)
                return
        node = self._stat_node(name, path, st)
        if parent is not None and not self.opts.force and self._unchanged(node, parent):
            # Size, mtime, ctime and inode as in the parent: changing the content,
            # xattrs or inode flags moves the ctime, so all three are the parent's
            # and the file is not even opened.
            assert parent is not None
            _same_inode(node, parent)
            self.summary.bytes_total += st.st_size
            self.summary.files_unchanged += 1
            self.report.entry(path, "unchanged", "file", st.st_size, 0)
            self.report.bytes_done(st.st_size)
        elif self._to_workers(st) and not (self._full and st.st_size < self._one_chunk):
            self._queue(frame, node, path, st, parent)
            return
        elif not self._read_new_file(frame.fd, name, path, st, parent, node):
            return
        if st.st_nlink > 1:
            self._hardlinks[(st.st_dev, st.st_ino)] = node
        frame.nodes.append(node)

    def _same_as_first(
        self, frame: _Frame, node: Node, path: bytes, st: os.stat_result, first: Node
    ) -> None:
        """Save ``node``, another name of the inode saved as ``first``."""
        _same_inode(node, first)
        self.summary.bytes_total += st.st_size
        self.summary.files_unchanged += 1
        self.report.entry(path, "unchanged", "file", st.st_size, 0)
        frame.nodes.append(node)

    def _file_saved(self, path: bytes, size: int, parent: Node | None, added: int) -> None:
        """Count a file that was read (new or changed; ``size`` from its lstat) and
        report it."""
        self.summary.bytes_total += size
        if parent is None or parent.type != "file":
            self.summary.files_new += 1
            if added == 0 and size > 0:  # its content is stored already: moved or copied
                self.changes.moved += 1
            self.report.entry(path, "new", "file", size, added)
        else:
            self.summary.files_changed += 1
            self.report.entry(path, "modified", "file", size, added)

    def _stat_node(self, name: bytes, path: bytes, st: os.stat_result) -> Node:
        """The node of a file from its ``lstat`` alone (no xattrs, flags or content yet)."""
        node, _ = posixmeta.node_from_stat(
            name, st, path=path, names=self.names, read_xattrs=False, read_flags=False
        )
        return node

    def _read_new_file(
        self,
        dir_fd: int,
        name: bytes,
        path: bytes,
        st: os.stat_result,
        parent: Node | None,
        node: Node,
    ) -> bool:
        """Open, describe and read a new or changed file into ``node`` (made from its
        ``lstat``); False if it was skipped.

        One descriptor serves the xattrs, the inode flags and the content, so a
        file that cannot be opened costs exactly one warning.
        """
        assert self._opener is not None
        try:
            fd = open_source(self._opener, name, dir_fd, st)
        except OSError as e:
            self._warn(f"{_fmt(path)}: {dirfd.reason(e)}; skipped")
            return False
        added = self.summary.data_added
        try:
            node.xattrs, node.flags, warnings = posixmeta.fd_metadata(fd, path)
            for w in warnings:
                self._warn(w)
            if not self._same_content(fd, path, node, st, parent) and not self._read_file(
                fd, path, node, st, _parent_chunks(parent)
            ):
                return False
        finally:
            os.close(fd)
        if warnings:
            node.ctime_ns = 0  # metadata missing: the next run must not reuse this node
        self._file_saved(path, st.st_size, parent, self.summary.data_added - added)
        return True

    def _visit_dir(
        self,
        frame: _Frame,
        name: bytes,
        path: bytes,
        st: os.stat_result,
        parent: Node | None,
        sel: Any,
    ) -> _Frame | None:
        """Open the directory ``name``, read its node and (unless excluded) its names.

        One descriptor serves the xattrs, the inode flags, the listing and every
        entry below, so an unreadable directory costs one warning.
        """
        assert self._opener is not None
        fd, failure = -1, None
        try:
            fd = self._opener.open_dir(name, frame.fd)
        except OSError as e:
            if e.errno == errno.ENOENT:  # gone since it was listed
                self._warn(f"{_fmt(path)}: {e.strerror}; skipped")
                return None
            failure = e
        if fd >= 0:
            opened = os.fstat(fd)
            if (opened.st_ino, opened.st_dev) != (st.st_ino, st.st_dev):
                self._opener.close_dir(fd)
                fd, failure = -1, OSError(errno.ESTALE, "replaced while it was backed up")
        kept = False  # whether the new frame holds fd
        try:
            node, warnings = posixmeta.node_from_stat(
                name,
                st,
                path=path,
                names=self.names,
                read_flags=False,
                fd=None if fd < 0 else fd,
                dir_fd=frame.fd,
            )
            for w in warnings:
                self._warn(w)
            if fd >= 0:
                try:
                    node.flags = posixmeta.fd_flags(fd)
                except OSError as e:
                    self._warn(f"could not read inode flags of {_fmt(path)}: {e.strerror}")
            parent_subtree = parent.subtree if parent is not None and parent.type == "dir" else None
            if sel is not FULL:
                frame_fd = self._ancestor(fd, failure, name, path, frame.fd)
                if frame_fd < 0:
                    return None
                kept = True
                # A directory above the backed-up paths (/, /home, ...): anyone listing
                # it moves its atime, which would make every snapshot's root tree new.
                # Its atime is recorded as its mtime (spec §11.2).
                node.atime_ns = node.mtime_ns
                todo = sorted(sel, reverse=True)
                subtree_nodes = self._parent_nodes(parent_subtree)
                return _Frame(path, frame_fd, node, todo, sel, subtree_nodes, parent_subtree, -1)
            if self.opts.one_file_system and frame.device not in (-1, st.st_dev):
                frame.nodes.append(node)  # keep the mount point itself, empty
                node.subtree = self._save_empty_tree()
                return None
            files: list[bytes] = []
            if self._pool_on and parent_subtree is None and not self._excludes and fd >= 0:
                names, files = self._scan(fd, path)  # a new directory: files to the workers
            else:
                names = self._list(fd, failure, path)
            if (names or files) and self._skip_contents(fd, names + files):
                names, files = [], []
            device = st.st_dev if self.opts.one_file_system else -1
            kept = True
            return _Frame(
                path,
                fd,
                node,
                sorted(names, reverse=True),
                None,
                self._parent_nodes(parent_subtree),
                parent_subtree,
                device,
                files=sorted(files, reverse=True),
            )
        finally:
            if not kept:
                self._opener.close_dir(fd)

    def _ancestor(
        self, fd: int, failure: OSError | None, name: bytes, path: bytes, dir_fd: int
    ) -> int:
        """A descriptor to walk through a directory above the backed-up paths, or -1."""
        if fd >= 0:
            return fd
        assert self._opener is not None and failure is not None
        self._warn(f"could not read inode flags of {_fmt(path)}: {dirfd.reason(failure)}")
        try:  # searching it needs no read permission
            return self._opener.open_dir(name, dir_fd, search_only=True)
        except OSError as e:
            self._warn(f"{_fmt(path)}: {dirfd.reason(e)}; skipped")
            return -1

    def _list(self, fd: int, failure: OSError | None, path: bytes) -> list[bytes]:
        if fd >= 0:
            try:
                return [os.fsencode(e) for e in os.listdir(fd)]
            except OSError as e:
                failure = e
        assert failure is not None
        self._warn(f"{_fmt(path)}: cannot read directory: {dirfd.reason(failure)}; saved empty")
        return []

    def _scan(self, fd: int, path: bytes) -> tuple[list[bytes], list[bytes]]:
        """The names in the open directory ``fd``: those of regular files (by the
        listing's file type: the worker that takes them checks with ``lstat``) apart."""
        names: list[bytes] = []
        files: list[bytes] = []
        try:
            with os.scandir(fd) as entries:
                for e in entries:
                    (files if e.is_file(follow_symlinks=False) else names).append(
                        os.fsencode(e.name)
                    )
        except OSError as e:
            self._warn(f"{_fmt(path)}: cannot read directory: {dirfd.reason(e)}; saved empty")
            return [], []
        return names, files

    def _save_empty_tree(self) -> bytes:
        tree_id, new = self.repo.save_blob(BlobType.TREE, encode_tree([]))
        if new:
            self.summary.tree_blobs_new += 1
        return tree_id

    def _save_tree(self, frame: _Frame) -> bytes:
        self.changes.directory(frame.nodes, frame.parent_nodes)
        tree_id, new = self.repo.save_blob(BlobType.TREE, encode_tree(frame.nodes))
        if new:
            self.summary.tree_blobs_new += 1
        if frame.node is not None:
            if frame.parent_subtree is None:
                self.summary.dirs_new += 1
                action = "new"
            elif frame.parent_subtree == tree_id:
                self.summary.dirs_unchanged += 1
                action = "unchanged"
            else:
                self.summary.dirs_changed += 1
                action = "modified"
            self.report.entry(frame.path + b"/", action, "dir", 0, 0)
        return tree_id

    # -- selection ----------------------------------------------------------

    def _excluded(self, path: bytes) -> bool:
        return self.opts.excludes_path(path)

    def _skip_contents(self, dir_fd: int, names: list[bytes]) -> bool:
        return skip_contents(self.opts, dir_fd, names)

    # -- files --------------------------------------------------------------

    def _unchanged(self, node: Node, parent: Node | None) -> bool:
        return (
            parent is not None
            and (parent.size, parent.mtime_ns, parent.ctime_ns, parent.inode)
            == (node.size, node.mtime_ns, node.ctime_ns, node.inode)
            and self._reusable(parent)
        )

    def _reusable(self, parent: Node) -> bool:
        """Whether a parent node's content can be taken over: a file with a digest
        whose blobs are all still stored (one may have been pruned or lost since)."""
        return (
            parent.type == "file"
            and parent.digest is not None
            and all(self.repo.has_blob(b) for b in parent.content)
        )

    def _same_content(
        self, fd: int, path: bytes, node: Node, st: os.stat_result, parent: Node | None
    ) -> bool:
        """Whether a file whose size and mtime are the parent's holds the parent's content
        (``same_digest``); if so ``node`` takes the parent's content list."""
        expected = self._parent_digest(st, parent)
        if expected is None:
            return False
        assert parent is not None
        self.report.file_started(path, st.st_size)
        same, bytes_read = same_digest(fd, st, self.repo.file_digest(), expected)
        self.summary.bytes_read += bytes_read
        if not same:
            return False
        _same_data(node, parent)
        self.report.bytes_done(st.st_size)
        return True

    def _parent_digest(self, st: os.stat_result, parent: Node | None) -> bytes | None:
        """The digest a changed file is compared with before it is chunked: the parent's,
        when its size and mtime are the file's and its content is still stored."""
        if (
            self.opts.force
            or parent is None
            or (parent.size, parent.mtime_ns) != (st.st_size, st.st_mtime_ns)
            or not self._reusable(parent)
        ):
            return None
        return parent.digest

    def _read_file(
        self, fd: int, path: bytes, node: Node, st: os.stat_result, parent: ParentChunks | None
    ) -> bool:
        self.report.file_started(path, st.st_size)
        reader: SourceReader | None = None
        try:
            total = self._save_small(fd, node, st)
            if total is None:
                total = self._save_offloaded(fd, node, st, parent)
            if total is None:
                reader = SourceReader(fd, st)
                total = self.save_content(node, reader, parent)
            after = os.fstat(fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            self._warn(f"{_fmt(path)}: read error: {e.strerror}; skipped")
            return False
        finally:
            if reader is not None:
                self.summary.bytes_read += reader.bytes_read
        if moved(after, st) or total != st.st_size:
            # The node keeps the times seen before reading and the size read (so
            # the content list agrees with it).  A change within one tick of the
            # kernel's clock leaves the times as they were, so the ctime is
            # recorded as 0, which no file has: the next run reads it again.
            node.ctime_ns = 0
            self._warn(f"{_fmt(path)}: file changed while it was read; saved as read")
        return True

    def _save_small(self, fd: int, node: Node, st: os.stat_result) -> int | None:
        """Store a file shorter than the chunker's minimum chunk (so one chunk, none
        when empty) and without holes from one pread, without the chunker; returns
        the size read.  None for any other file, or one that grew past its size
        while read: it is read the normal way."""
        data, got = read_small(fd, st, self._one_chunk)
        self.summary.bytes_read += got
        if data is None:
            return None
        digest = self.repo.file_digest()
        node.content, node.sizes = [], []
        if data:
            digest.update(data)
            blob_id, new = self.repo.save_blob(BlobType.DATA, data)
            if new:
                self.summary.data_blobs_new += 1
                self.summary.data_added += len(data)
            node.content.append(blob_id)
            node.sizes.append(len(data))
        node.size = len(data)
        node.digest = digest.digest()
        self.report.bytes_done(len(data))
        return node.size

    def _save_offloaded(
        self, fd: int, node: Node, st: os.stat_result, parent: ParentChunks | None
    ) -> int | None:
        """Store a large file chunked by the helper process; None: chunk it here instead.

        Only the chunks the repository lacks are read here, and each is hashed
        again by ``save_blob``: an ID that differs from the helper's means the
        file changed between the two reads, and it is read again the normal way.
        Sparse files stay here (the helper reads holes as zeros).
        """
        helper = self.offload
        if (
            helper is None
            or helper.failed
            or st.st_size < OFFLOAD_MIN
            or st.st_blocks * 512 < st.st_size
        ):
            return None
        node.content, node.sizes, node.size = [], [], 0
        added, new_blobs = 0, 0
        try:
            with contextlib.closing(helper.chunks(fd, st.st_size, parent)) as found:
                for size, blob_id in found:
                    if not self.repo.has_blob(blob_id):
                        data = os.pread(fd, size, node.size)
                        got, new = self.repo.save_blob(BlobType.DATA, data)
                        if got != blob_id:
                            raise _Moved
                        added += size if new else 0
                        new_blobs += new
                    node.content.append(blob_id)
                    node.sizes.append(size)
                    node.size += size
                    self.report.bytes_done(size)
        except (_Moved, WorkerGone):
            return None
        self.summary.data_blobs_new += new_blobs
        self.summary.data_added += added
        self.summary.bytes_read += helper.bytes_read
        node.digest = helper.digest
        return node.size

    def save_content(
        self, node: Node, read: Callable[[int], bytes], parent: ParentChunks | None = None
    ) -> int:
        """Chunk, store and digest everything ``read`` returns into ``node``; returns the size.

        With ``parent`` (the parent file's chunks) the chunks it still holds are
        taken without a cut search (cas/chunking/resync.py): the same chunks."""
        node.content, node.sizes, node.size = [], [], 0
        digest = self.repo.file_digest()
        data_id = functools.partial(self.repo.blob_id, BlobType.DATA)
        for chunk, chunk_id in chunk_ids(self.chunker, data_id, read, parent):
            digest.update(chunk)
            blob_id, new = self.repo.save_blob(BlobType.DATA, chunk, chunk_id)
            if new:
                self.summary.data_blobs_new += 1
                self.summary.data_added += len(chunk)
            node.content.append(blob_id)
            node.sizes.append(len(chunk))
            node.size += len(chunk)
            self.report.bytes_done(len(chunk))
        node.digest = digest.digest()
        return node.size

    def _warn(self, message: str) -> None:
        self.summary.warnings += 1
        self.report.warning(message)


class _Moved(Exception):
    """A chunk read for storing is not the chunk the helper found: the file changed."""


def _parent_chunks(parent: Node | None, *, wire: bool = False) -> Any:
    """The parent file's chunks to resynchronise a changed file with (or their wire
    form, about 39 bytes a chunk), None when there is nothing worth sending."""
    if parent is None or parent.type != "file" or not ParentChunks.wanted(parent.content):
        return None
    return [parent.content, parent.sizes] if wire else ParentChunks(parent.content, parent.sizes)


def _same_data(node: Node, other: Node) -> None:
    """Give ``node`` the content recorded in ``other``."""
    node.content, node.sizes, node.digest = other.content, other.sizes, other.digest
    node.size = other.size


def _same_inode(node: Node, other: Node) -> None:
    """Give ``node`` the content, xattrs and inode flags recorded in ``other``."""
    node.xattrs, node.flags = other.xattrs, other.flags
    _same_data(node, other)


def stdin_node(name: bytes, read: Callable[[int], bytes], archiver: Archiver) -> Node:
    """A file node holding everything read from ``read`` (for ``backup --stdin``)."""
    now = time.time_ns()
    node = Node(
        name=name,
        type="file",
        mode=0o644,
        uid=os.getuid(),
        gid=os.getgid(),
        mtime_ns=now,
        atime_ns=now,
        ctime_ns=now,
    )
    size = archiver.save_content(node, read)
    archiver.summary.files_new += 1
    archiver.summary.bytes_read += size
    archiver.summary.bytes_total += size
    return node


def skip_contents(opts: BackupOptions, dir_fd: int, names: list[bytes]) -> bool:
    """Whether the directory open as ``dir_fd`` and holding ``names`` is kept empty:
    it holds an --exclude-if-present marker, or (--exclude-caches) a CACHEDIR.TAG
    that starts with the signature."""
    if not opts.exclude_if_present and not opts.exclude_caches:
        return False
    present = set(names)
    for marker in opts.exclude_if_present:
        if marker in present:
            return True
    if opts.exclude_caches and CACHEDIR_TAG in present:
        try:
            fd = os.open(CACHEDIR_TAG, _TAG_FLAGS, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            return os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
        except OSError:
            return False
        finally:
            os.close(fd)
    return False
