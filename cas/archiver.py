"""Backup: turn source paths into tree blobs, data blobs and a snapshot.

The walk is iterative (an explicit stack of open directories), so trees
thousands of levels deep need no recursion.  A directory's tree blob is
written when its last entry is done; identical trees deduplicate like data.
With a parent snapshot, a file whose size, mtime, ctime and inode are
unchanged reuses the parent's content list without being read.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import posixmeta
from .crypto import BlobType
from .format.tree import Node, decode_tree, encode_tree
from .patterns import PatternSet
from .protocols import BlobWriter, Chunks

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
    bytes_read: int = 0  # bytes actually read from files
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


@dataclass
class _Frame:
    """A directory being backed up: its own node, entries left to do, nodes done."""

    path: bytes
    node: Node | None  # None for the synthetic root
    todo: list[bytes]  # names left, in reverse order (pop() gives the next)
    select: dict[bytes, Any] | None  # for synthetic ancestors: which children to visit
    parent_nodes: dict[bytes, Node]
    parent_subtree: bytes | None
    device: int
    nodes: list[Node] = field(default_factory=list)


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


class Archiver:
    """Backs up paths into a repository through the narrow BlobWriter interface."""

    def __init__(
        self,
        repo: BlobWriter,
        chunker: Chunks,
        options: BackupOptions | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.repo = repo
        self.chunker = chunker
        self.opts = options or BackupOptions()
        self.report = reporter or Reporter()
        self.summary = BackupSummary()
        self.names = posixmeta.NameCache()
        self._hardlinks: dict[tuple[int, int], Node] = {}
        self._noatime = True

    # -- the walk -----------------------------------------------------------

    def backup(self, paths: list[bytes], parent_tree: bytes | None) -> bytes:
        """Back up absolute ``paths``; returns the root tree ID."""
        select = _path_tree(paths)
        root = _Frame(
            b"",
            None,
            sorted(select, reverse=True),
            select,
            self._parent_nodes(parent_tree),
            parent_tree,
            -1,
        )
        stack = [root]
        root_tree = b""
        while stack:
            frame = stack[-1]
            if frame.todo:
                child = self._visit(frame, frame.todo.pop())
                if child is not None:
                    stack.append(child)
                continue
            stack.pop()
            tree_id = self._save_tree(frame)
            if frame.node is None:
                root_tree = tree_id
            else:
                frame.node.subtree = tree_id
                stack[-1].nodes.append(frame.node)
        return root_tree

    def _parent_nodes(self, tree_id: bytes | None) -> dict[bytes, Node]:
        if tree_id is None:
            return {}
        try:
            return {n.name: n for n in decode_tree(self.repo.load_blob(BlobType.TREE, tree_id))}
        except Exception as e:  # a damaged parent only costs re-reading
            self._warn(f"cannot read parent tree {tree_id.hex()[:8]}: {e}; reading files again")
            return {}

    def _visit(self, frame: _Frame, name: bytes) -> _Frame | None:
        path = frame.path + b"/" + name
        sel = frame.select.get(name) if frame.select is not None else FULL
        if sel is FULL and self._excluded(path):
            return None
        try:
            st = os.lstat(path)
        except OSError as e:
            self._warn(f"{_fmt(path)}: {e.strerror}; skipped")
            return None
        node, warnings = posixmeta.node_from_stat(name, st, path=path, names=self.names)
        for w in warnings:
            self._warn(w)
        parent = frame.parent_nodes.get(name)
        if sel is not FULL:
            if not stat.S_ISDIR(st.st_mode):
                self._warn(f"{_fmt(path)}: not a directory; skipped")
                return None
            assert isinstance(sel, dict)
            return self._open_dir(path, node, parent, st, select=sel)
        if stat.S_ISDIR(st.st_mode):
            if self.opts.one_file_system and frame.device not in (-1, st.st_dev):
                frame.nodes.append(node)  # keep the mount point itself, empty
                node.subtree = self.repo.save_blob(BlobType.TREE, encode_tree([]))[0]
                return None
            return self._open_dir(path, node, parent, st, select=None, root_dev=frame.device)
        if stat.S_ISREG(st.st_mode):
            limit = self.opts.exclude_larger_than
            if limit is not None and st.st_size > limit:
                return None
            if not self._file(path, node, st, parent):
                return None
        else:
            self.summary.other_entries += 1
        frame.nodes.append(node)
        return None

    def _open_dir(
        self,
        path: bytes,
        node: Node,
        parent: Node | None,
        st: os.stat_result,
        *,
        select: dict[bytes, Any] | None,
        root_dev: int = -1,
    ) -> _Frame:
        parent_subtree = parent.subtree if parent is not None and parent.type == "dir" else None
        device = st.st_dev if root_dev == -1 or select is not None else root_dev
        if select is not None:
            todo = sorted(select, reverse=True)
            return _Frame(
                path, node, todo, select, self._parent_nodes(parent_subtree), parent_subtree, -1
            )
        try:
            names = self._list_dir(path)
        except OSError as e:
            self._warn(f"{_fmt(path)}: cannot list directory: {e.strerror}; saved empty")
            names = []
        if self._skip_contents(path, names):
            names = []
        if not self.opts.one_file_system:
            device = -1
        return _Frame(
            path,
            node,
            sorted(names, reverse=True),
            None,
            self._parent_nodes(parent_subtree),
            parent_subtree,
            device,
        )

    def _list_dir(self, path: bytes) -> list[bytes]:
        # Through an O_NOATIME descriptor: listing must not change the directory's
        # atime, or every backup would record (and store) new trees for nothing.
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags | (os.O_NOATIME if self._noatime else 0))
        except PermissionError:
            fd = os.open(path, flags)
        try:
            return [os.fsencode(e) for e in os.listdir(fd)]
        finally:
            os.close(fd)

    def _save_tree(self, frame: _Frame) -> bytes:
        tree_id, new = self.repo.save_blob(BlobType.TREE, encode_tree(frame.nodes))
        if new:
            self.summary.tree_blobs_new += 1
        if frame.node is not None:
            if frame.parent_subtree is None:
                self.summary.dirs_new += 1
            elif frame.parent_subtree == tree_id:
                self.summary.dirs_unchanged += 1
            else:
                self.summary.dirs_changed += 1
        return tree_id

    # -- selection ----------------------------------------------------------

    def _excluded(self, path: bytes) -> bool:
        return self.opts.excludes.matches(path) or self.opts.iexcludes.matches(path)

    def _skip_contents(self, path: bytes, names: list[bytes]) -> bool:
        present = set(names)
        for marker in self.opts.exclude_if_present:
            if marker in present:
                return True
        if self.opts.exclude_caches and CACHEDIR_TAG in present:
            try:
                with open(path + b"/" + CACHEDIR_TAG, "rb") as f:
                    return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
            except OSError:
                return False
        return False

    # -- files --------------------------------------------------------------

    def _file(self, path: bytes, node: Node, st: os.stat_result, parent: Node | None) -> bool:
        self.summary.bytes_total += st.st_size
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._hardlinks:
            done = self._hardlinks[key]
            node.content, node.sizes, node.digest = done.content, done.sizes, done.digest
            node.size = done.size
            self.summary.files_unchanged += 1
            return True
        if not self.opts.force and self._unchanged(node, parent):
            assert parent is not None
            node.content, node.sizes, node.digest = parent.content, parent.sizes, parent.digest
            self.summary.files_unchanged += 1
            self.report.bytes_done(st.st_size)
        else:
            if not self._read_file(path, node, st):
                return False
            if parent is None or parent.type != "file":
                self.summary.files_new += 1
            else:
                self.summary.files_changed += 1
        if st.st_nlink > 1:
            self._hardlinks[key] = node
        return True

    def _unchanged(self, node: Node, parent: Node | None) -> bool:
        if parent is None or parent.type != "file" or parent.digest is None:
            return False
        same = (
            parent.size == node.size
            and parent.mtime_ns == node.mtime_ns
            and parent.ctime_ns == node.ctime_ns
            and parent.inode == node.inode
        )
        # A blob the parent used may have been pruned or lost since: then read again.
        return same and all(self.repo.has_blob(b) for b in parent.content)

    def _open_source(self, path: bytes) -> int:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        if self._noatime:
            try:
                return os.open(path, flags | os.O_NOATIME)
            except PermissionError:
                self._noatime = False  # not the owner and not root: atime may change
        return os.open(path, flags)

    def _read_file(self, path: bytes, node: Node, st: os.stat_result) -> bool:
        self.report.file_started(path, st.st_size)
        try:
            fd = self._open_source(path)
        except OSError as e:
            self._warn(f"{_fmt(path)}: {e.strerror}; skipped")
            return False
        try:
            with os.fdopen(fd, "rb", buffering=0, closefd=True) as f:
                total = self.save_content(node, f.read)
                after = os.fstat(f.fileno())
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            self._warn(f"{_fmt(path)}: read error: {e.strerror}; skipped")
            return False
        self.summary.bytes_read += total
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ) or total != st.st_size:
            # Keep the times seen before reading, so the next run reads it again.
            self._warn(f"{_fmt(path)}: file changed while it was read; saved as read")
        return True

    def save_content(self, node: Node, read: Callable[[int], bytes]) -> int:
        """Chunk, store and digest everything ``read`` returns into ``node``; returns the size."""
        node.content, node.sizes, node.size = [], [], 0
        digest = self.repo.file_digest()
        for chunk in self.chunker.iter_chunks(read):
            digest.update(chunk)
            blob_id, new = self.repo.save_blob(BlobType.DATA, chunk)
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
