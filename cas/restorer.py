"""Restore: recreate a snapshot's tree (or part of it) under a target directory.

Files are written to a temporary name beside their destination and renamed
into place only when complete, so an interrupted or failed restore never
leaves a partial file under a real name.  Every all-zero 4 KiB block at an
aligned file offset is left as a hole, so sparse files come back sparse.
Directory metadata (times, then flags such as immutable) is applied after
the directory's contents, deepest first.  Hardlinked entries of any type are
recreated as hardlinks; an immutable or append-only inode with more names
gets its flags at the end, since nothing can be linked to it after.  An
existing entry that is immutable or append-only is unlocked before it is
changed or replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import posixmeta
from .blobstream import BlobStream, PackReader
from .crypto import BlobType
from .errors import CasError
from .format.tree import Node, decode_tree
from .patterns import PatternSet
from .protocols import BlobReader, Digest

SPARSE_BLOCK = 4096
PREFETCH_THREADS = 4
_ZERO_BLOCK = bytes(SPARSE_BLOCK)
_ZERO_RUN = 1 << 20  # the longest step when extending a hole
# Flags that stop changes to an inode: set last, cleared before changing an existing entry.
_LOCKING_FLAGS = posixmeta.FLAG_IMMUTABLE | posixmeta.FLAG_APPEND


class RestoreAborted(CasError):
    """restore stopped: {detail}"""


@dataclass
class RestoreOptions:
    """What to restore and how."""

    includes: PatternSet = field(default_factory=lambda: PatternSet([]))
    excludes: PatternSet = field(default_factory=lambda: PatternSet([]))
    numeric_owner: bool = False
    dry_run: bool = False
    delete: bool = False
    verify: bool = False


@dataclass
class RestoreSummary:
    """What a restore did."""

    files_restored: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    symlinks: int = 0
    special: int = 0
    hardlinks: int = 0
    bytes_written: int = 0
    deleted: int = 0
    verified: int = 0
    failed: list[str] = field(default_factory=list)
    warnings: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return dict(self.__dict__)


class RestoreReporter:
    """Progress and warning callbacks; the CLI overrides what it shows."""

    def action(self, what: str, path: bytes) -> None:
        """An entry was (or, with --dry-run, would be) created, skipped or deleted."""

    def bytes_done(self, n: int) -> None:
        """``n`` more content bytes were written."""

    def warning(self, message: str) -> None:
        """Something could not be restored exactly."""


def _fmt(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


@dataclass
class _Dir:
    target: bytes  # where this directory goes on disk
    snap_path: bytes  # its path inside the snapshot
    node: Node | None
    todo: list[Node]
    parent: _Dir | None
    selected: bool  # wholly selected by include patterns (or no includes given)
    created: bool = False
    names: set[bytes] = field(default_factory=set)  # entry names of the snapshot tree

    def __post_init__(self) -> None:
        self.names = {n.name for n in self.todo}


class Restorer:
    """Writes snapshot trees to the filesystem, reading blobs through BlobReader."""

    def __init__(
        self,
        repo: BlobReader,
        new_digest: Callable[[], Digest],
        options: RestoreOptions | None = None,
        reporter: RestoreReporter | None = None,
        connections: int = PREFETCH_THREADS,
    ) -> None:
        self.repo = repo
        self.connections = max(1, connections)
        self.new_digest = new_digest
        self.opts = options or RestoreOptions()
        self.report = reporter or RestoreReporter()
        self.summary = RestoreSummary()
        self.names = posixmeta.NameCache()
        self.is_root = os.geteuid() == 0
        self._links: dict[tuple[int, int], bytes] = {}
        self._dirs_done: list[tuple[bytes, Node]] = []
        self._flags_later: list[tuple[bytes, Node]] = []  # hardlinked immutable/append-only
        # Data blobs are loaded ahead through a BlobStream when the repository
        # can read pack ranges: the files of a directory, planned together,
        # cost a few ranged reads on worker threads instead of one read each.
        self._stream = (
            BlobStream(repo, self.connections)
            if isinstance(repo, PackReader) and not self.opts.dry_run
            else None
        )
        self._planned: set[int] = set()  # id() of file nodes whose blobs are planned
        self._taken = 0  # blobs of the current file taken from the stream

    # -- walking ------------------------------------------------------------

    def restore(self, tree_id: bytes, target: bytes, snap_path: bytes = b"") -> RestoreSummary:
        """Restore the entries of tree ``tree_id`` into directory ``target``."""
        target = target.rstrip(b"/") or b"/"
        if not self.opts.dry_run:
            _check_target(target)
        root = _Dir(
            target,
            snap_path,
            None,
            self._load_tree(tree_id),
            None,
            selected=not self.opts.includes,
            created=True,
        )
        stack = [root]
        try:
            while stack:
                d = stack[-1]
                if not d.todo:
                    stack.pop()
                    if d.created and self.opts.delete:
                        self._delete_extras(d)
                    if d.node is not None and d.created:
                        self._dirs_done.append((d.target, d.node))
                    continue
                node = d.todo.pop()
                child = self._entry(d, node)
                if child is not None:
                    stack.append(child)
        finally:
            self.close()
        self._finish_dirs()
        return self.summary

    def _load_tree(self, tree_id: bytes) -> list[Node]:
        nodes = decode_tree(self.repo.load_blob(BlobType.TREE, tree_id))
        nodes.reverse()  # pop() yields them in name order
        return nodes

    def _entry(self, d: _Dir, node: Node) -> _Dir | None:
        snap_path = d.snap_path + b"/" + node.name
        path = d.target + b"/" + node.name
        if self.opts.excludes.matches(snap_path):
            return None
        selected = d.selected or self.opts.includes.matches(snap_path)
        if node.type == "dir":
            try:
                todo = self._load_tree(node.subtree) if node.subtree else []
            except CasError as e:
                self._fail(path, f"cannot read its tree: {e}")
                return None
            child = _Dir(path, snap_path, node, todo, d, selected)
            if selected:
                try:
                    self._make_dir(child)
                except OSError as e:
                    self._os_failure(path, e)
                    return None
            return child
        if not selected:
            return None
        planned = node.type == "file" and self._plan(d, node)
        self._taken = 0
        try:
            self._make_dir(d)
            self._restore_leaf(path, node)
        except OSError as e:
            self._os_failure(path, e)
        except RestoreAborted:
            raise
        except CasError as e:
            # Damaged, missing or unreadable data (a lost pack, a storage error
            # after retries): this file is named as not restored, the rest go on.
            self._fail(path, str(e))
        finally:
            if planned and self._stream is not None:
                # Skipped (identical, a hardlink) or failed part-way: not needed.
                pairs = list(zip(node.content, node.sizes, strict=True))
                self._stream.discard(pairs[self._taken :])
        return None

    def _plan(self, d: _Dir, node: Node) -> bool:
        """Plan the blobs of ``node`` and of the files right after it (up to the next
        directory, which is restored in between); whether ``node``'s are planned."""
        if self._stream is None:
            return False
        if id(node) in self._planned:
            self._planned.discard(id(node))
            return True
        run = [node]
        for n in reversed(d.todo):
            if n.type == "dir":
                break
            snap_path = d.snap_path + b"/" + n.name
            if n.type != "file" or self.opts.excludes.matches(snap_path):
                continue
            if d.selected or self.opts.includes.matches(snap_path):
                run.append(n)
                self._planned.add(id(n))
        self._stream.plan(
            (b, size) for n in run for b, size in zip(n.content, n.sizes, strict=True)
        )
        return True

    def _os_failure(self, path: bytes, e: OSError) -> None:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise RestoreAborted(f"{_fmt(path)}: {e.strerror}") from None
        self._fail(path, e.strerror or str(e))

    def _make_dir(self, d: _Dir) -> None:
        """Create ``d`` and any ancestors not yet created (lazily, for --include)."""
        if d.created:
            return
        if d.parent is not None:
            self._make_dir(d.parent)
        d.created = True
        self.summary.dirs += 1
        self.report.action("dir", d.target)
        if self.opts.dry_run:
            return
        try:
            st = os.lstat(d.target)
        except FileNotFoundError:
            os.mkdir(d.target, 0o700)
            return
        if stat.S_ISDIR(st.st_mode):
            _unlock(d.target)  # its flags come back with the rest of its metadata
        else:
            self._clear(d.target)
            os.mkdir(d.target, 0o700)

    # -- leaves -------------------------------------------------------------

    def _restore_leaf(self, path: bytes, node: Node) -> None:
        key = (node.device, node.inode)
        if node.links > 1 and key in self._links:
            self.summary.hardlinks += 1
            self.report.action("hardlink", path)
            if not self.opts.dry_run:
                self._clear(path)
                os.link(self._links[key], path, follow_symlinks=False)
            return
        if node.type == "file":
            if self._identical(path, node):
                self.summary.files_unchanged += 1
                self.report.action("unchanged", path)
                if self.opts.verify:
                    self.summary.verified += 1  # just hashed and compared
                if not self.opts.dry_run:
                    _unlock(path)
            else:
                self.report.action("file", path)
                if not self.opts.dry_run:
                    self._write_file(path, node)
                    if self.opts.verify:
                        self._verify(path, node)
                self.summary.files_restored += 1
        else:
            self.report.action(node.type, path)
            if node.type == "symlink":
                self.summary.symlinks += 1
            else:
                self.summary.special += 1
            if not self.opts.dry_run:
                self._clear(path)
                posixmeta.create_special(path, node)
        if not self.opts.dry_run:
            # A hardlink cannot be made to an immutable or append-only inode.
            later = node.links > 1 and bool(node.flags & _LOCKING_FLAGS)
            self._apply(path, node, restore_flags=not later)
            if later:
                self._flags_later.append((path, node))
        if node.links > 1:
            self._links[key] = path

    def _clear(self, path: bytes) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not self.opts.delete:
                raise OSError(errno.EISDIR, "a directory is in the way (use --delete)")
            _remove_tree(path)
        else:
            _unlock(path)
            os.unlink(path)

    def _identical(self, path: bytes, node: Node) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_size != node.size or node.digest is None:
            return False
        if st.st_nlink > 1 and node.links == 1:
            return False  # linked to another name here but not in the snapshot: rewrite
        return self._digest_of(path) == node.digest

    def _digest_of(self, path: bytes) -> bytes:
        h = self.new_digest()
        fd = _open_noatime(path)
        try:
            while block := os.read(fd, 4 << 20):
                h.update(block)
        finally:
            os.close(fd)
        return h.digest()

    def close(self) -> None:
        """Stop the loading threads."""
        if self._stream is not None:
            self._stream.close()

    def _blob(self, blob_id: bytes, size: int) -> bytes:
        if self._stream is None:
            return self.repo.load_blob(BlobType.DATA, blob_id, size)
        self._taken += 1  # taken even if loading it fails: the stream let go of it
        return self._stream.get(blob_id, size)

    def _write_file(self, path: bytes, node: Node) -> None:
        head, _, name = path.rpartition(b"/")
        tmp = head + b"/.cas-restore-" + os.urandom(6).hex().encode() + b"-" + name[:100]
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            out = SparseWriter(fd)
            for blob_id, size in zip(node.content, node.sizes, strict=True):
                out.write(self._blob(blob_id, size))
                self.summary.bytes_written += size
                self.report.bytes_done(size)
            out.finish()
            os.close(fd)
            fd = -1
            self._clear(path)
            os.rename(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _verify(self, path: bytes, node: Node) -> None:
        if self._digest_of(path) != node.digest:
            self._fail(path, "content differs from the snapshot after writing")
        else:
            self.summary.verified += 1

    def _apply(self, path: bytes, node: Node, *, restore_flags: bool = True) -> None:
        for w in posixmeta.apply_metadata(
            path,
            node,
            names=self.names,
            numeric_owner=self.opts.numeric_owner,
            is_root=self.is_root,
            restore_flags=restore_flags,
        ):
            self._warn(w)

    def _finish_dirs(self) -> None:
        """Inode flags held back for hardlinks, then directories deepest first."""
        if self.opts.dry_run:
            return
        for path, node in self._flags_later:
            try:
                current = posixmeta.get_flags(path)
                wanted = (current & ~posixmeta.RESTORABLE_FLAGS) | (
                    node.flags & posixmeta.RESTORABLE_FLAGS
                )
                if wanted != current:
                    posixmeta.set_flags(path, wanted)
            except OSError as e:
                self._warn(f"could not restore inode flags of {_fmt(path)}: {e.strerror}")
        for path, node in reversed(self._dirs_done):
            self._apply(path, node)

    def _delete_extras(self, d: _Dir) -> None:
        """Remove what is in a restored directory but not in its snapshot tree."""
        try:
            present = os.listdir(d.target)
        except OSError:
            return  # with --dry-run the directory may not exist yet
        for name in present:
            if name in d.names or name.startswith(b".cas-restore-"):
                continue
            path = d.target + b"/" + name
            self.summary.deleted += 1
            self.report.action("delete", path)
            if not self.opts.dry_run:
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        _remove_tree(path)
                    else:
                        _unlock(path)
                        os.unlink(path)
                except OSError as e:
                    self._fail(path, f"could not delete: {e.strerror}")

    def _fail(self, path: bytes, why: str) -> None:
        self.summary.failed.append(_fmt(path))
        self.report.warning(f"{_fmt(path)}: not restored: {why}")

    def _warn(self, message: str) -> None:
        self.summary.warnings += 1
        self.report.warning(message)


class SparseWriter:
    """Writes a file's content in order, leaving every all-zero aligned 4 KiB block a hole.

    The file must be new and empty.  Blocks are aligned to file offsets, not
    to chunks: a block that spans two chunks is judged as a whole, so a file
    restores with the same holes whatever its chunk boundaries were.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0  # file offset of ``tail``; always a multiple of SPARSE_BLOCK
        self.tail = b""  # the start of a block not yet complete

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        lo = 0
        if self.tail:
            lo = SPARSE_BLOCK - len(self.tail)
            if len(data) < lo:
                self.tail += data
                return
            self._blocks(self.tail + data[:lo], 0, SPARSE_BLOCK)
        hi = lo + (len(data) - lo) // SPARSE_BLOCK * SPARSE_BLOCK
        self._blocks(data, lo, hi)
        self.tail = data[hi:]

    def finish(self) -> int:
        """Write what is left and set the file's size (a trailing hole included)."""
        if self.tail.count(0) != len(self.tail):
            self._pwrite(self.tail, 0, len(self.tail), self.pos)
        size = self.pos + len(self.tail)
        os.ftruncate(self.fd, size)
        return size

    def _blocks(self, data: bytes, lo: int, hi: int) -> None:
        """Write whole blocks ``data[lo:hi]`` at ``pos``, skipping all-zero ones."""
        base = self.pos - lo  # file offset of data[0]
        start = lo  # first byte not yet written
        i = lo
        while (k := data.find(_ZERO_BLOCK, i, hi)) >= 0:
            a = k + (lo - k) % SPARSE_BLOCK  # first block boundary at or after k
            if a + SPARSE_BLOCK > hi:
                break
            if data.count(0, a, a + SPARSE_BLOCK) != SPARSE_BLOCK:
                i = a + 1  # a zero run starting before ``a`` covers no whole block
                continue
            # Extend the hole, galloping: steps double while zero, halve on data,
            # so finding where a run ends costs about twice its length.
            end, step = a + SPARSE_BLOCK, SPARSE_BLOCK
            while end < hi:
                n = min(step, hi - end)
                if data.count(0, end, end + n) == n:
                    end += n
                    step = min(2 * step, _ZERO_RUN)
                elif step > SPARSE_BLOCK:
                    step //= 2
                else:
                    break
            self._pwrite(data, start, a, base + start)
            start = i = end
        self._pwrite(data, start, hi, base + start)
        self.pos += hi - lo

    def _pwrite(self, data: bytes, lo: int, hi: int, offset: int) -> None:
        view = memoryview(data)[lo:hi]
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n


def _check_target(target: bytes) -> None:
    """Create ``target`` and make sure entries can be created in it, or stop cleanly."""
    try:
        os.makedirs(target, exist_ok=True)
        probe = target + b"/.cas-restore-probe-" + os.urandom(6).hex().encode()
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise RestoreAborted(f"cannot write into {_fmt(target)}: {e.strerror}") from None


def _open_noatime(path: bytes) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError as e:
        if e.errno != errno.EPERM:  # EPERM: not the owner, so no O_NOATIME
            raise
    return os.open(path, flags)


def _unlock(path: bytes) -> None:
    """Clear immutable/append-only on an existing file or directory so it can be changed."""
    try:
        # Only these carry flags; opening a device node could have side effects.
        if not stat.S_ISREG(mode := os.lstat(path).st_mode) and not stat.S_ISDIR(mode):
            return
        flags = posixmeta.get_flags(path)
        if flags & _LOCKING_FLAGS:
            posixmeta.set_flags(path, flags & ~_LOCKING_FLAGS)
    except OSError:
        pass  # the change that follows reports the real problem


def _remove_tree(path: bytes) -> None:
    """``rm -rf`` that first clears immutable/append-only flags below ``path``."""
    try:
        shutil.rmtree(path)
        return
    except PermissionError:
        pass
    _unlock(path)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            _unlock(os.path.join(top, name))
    shutil.rmtree(path)


def find_subtree(repo: BlobReader, tree_id: bytes, subpath: bytes) -> tuple[bytes, Node | None]:
    """Follow ``subpath`` (e.g. b"/home/me") from the root tree; returns (tree ID, last node)."""
    node: Node | None = None
    for part in [p for p in subpath.split(b"/") if p]:
        nodes = {n.name: n for n in decode_tree(repo.load_blob(BlobType.TREE, tree_id))}
        node = nodes.get(part)
        if node is None:
            raise CasError(f"{_fmt(subpath)} is not in the snapshot")
        if node.type != "dir" or node.subtree is None:
            raise CasError(f"{_fmt(subpath)} is not a directory in the snapshot")
        tree_id = node.subtree
    return tree_id, node
