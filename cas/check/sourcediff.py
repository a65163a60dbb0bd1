"""Is my backup identical to my files?  Compare a snapshot with the live source tree.

Only tree blobs are read from the repository: file content is compared
through the whole-file digest stored in each file node (spec §6.2), so the
live file is read and hashed, never the backed-up data.  Compared: type,
permission bits, uid and gid, size, mtime, symlink target, device number,
extended attributes and content.  Not compared: atime (reading changes it),
ctime and inode numbers (no restore or copy can keep them), link counts.

Written against the narrow BlobReader interface, like restore.  The live
tree is walked through directory descriptors (cas/fs/dirfd.py), so entries
deeper than PATH_MAX are compared like any other.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cas.errors import CasError
from cas.format.snapshot import Snapshot
from cas.format.tree import Node
from cas.fs import dirfd, posixmeta
from cas.protocols import BlobReader, Digest
from cas.walker import load_tree

MISSING_IN_SOURCE = "missing_in_source"
MISSING_IN_SNAPSHOT = "missing_in_snapshot"
CHANGED = "changed"
UNREADABLE = "unreadable"

_ORDER = {MISSING_IN_SOURCE: 0, MISSING_IN_SNAPSHOT: 1, CHANGED: 2, UNREADABLE: 3}
_READ_BLOCK = 4 << 20
# O_NOATIME is added by the opener where allowed: comparing must not change atimes.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Difference:
    """One way the source differs from the snapshot.

    ``field`` and the two values are set for CHANGED (``xattr:<name>`` for one
    extended attribute, None meaning absent on that side); ``snapshot`` holds
    the entry's type for the MISSING kinds and the reason for UNREADABLE.
    """

    path: bytes
    kind: str
    field: str | None = None
    snapshot: Any = None
    source: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: paths with undecodable bytes get backslash escapes."""
        return {
            "path": _text(self.path),
            "kind": self.kind,
            "field": self.field,
            "snapshot": self.snapshot,
            "source": self.source,
        }


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def covering_path(snapshot: Snapshot, path: bytes) -> bytes | None:
    """The snapshot path that ``path`` (absolute) is or lies inside, or None."""
    for top in sorted(snapshot.paths, key=len, reverse=True):
        base = top.rstrip(b"/")
        if path in (top, base) or path.startswith(base + b"/"):
            return top
    return None


def _components(path: bytes) -> list[bytes]:
    return [c for c in path.split(b"/") if c]


@dataclass
class _Level:
    """A live directory being compared: its descriptor and the snapshot entries left."""

    path: bytes
    fd: int
    todo: list[Node] = field(default_factory=list)  # reversed: pop() gives the next


class SourceComparer:
    """Compares the snapshot entry at an absolute path with the same path on disk."""

    def __init__(self, repo: BlobReader, new_digest: Callable[[], Digest]) -> None:
        self.repo = repo
        self.new_digest = new_digest
        self.names = posixmeta.NameCache()
        self.entries = 0  # entries compared, for the summary
        self._opener = dirfd.Opener()

    def compare(self, snapshot: Snapshot, path: bytes) -> list[Difference]:
        """Every difference under ``path`` (absolute, normalised), sorted by path."""
        if covering_path(snapshot, path) is None:
            raise CasError(f"{_text(path)} is not among the snapshot's paths or inside one")
        parts = _components(path)
        out: list[Difference] = []
        if not parts:
            try:
                root = _Level(b"", self._opener.open_dir(b"/"))
            except OSError as e:
                return [Difference(b"/", UNREADABLE, snapshot=f"cannot list: {_reason(e)}")]
            out += self._children(root, snapshot.tree)
            self._walk([root], out)
        else:
            node = self._find(snapshot.tree, parts)
            if node is None:
                if os.path.lexists(path):
                    out.append(Difference(path, MISSING_IN_SNAPSHOT, snapshot=_live_type(path)))
            else:
                top = b"/" + b"/".join(parts[:-1])
                try:  # the user's path: symlinks above the entry are followed
                    top_fd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as e:
                    kind = MISSING_IN_SOURCE if isinstance(e, FileNotFoundError) else UNREADABLE
                    detail = node.type if kind == MISSING_IN_SOURCE else _reason(e)
                    return [Difference(path, kind, snapshot=detail)]
                try:
                    child = self._compare_one(top_fd, path, node, out)
                finally:
                    os.close(top_fd)
                if child is not None:
                    self._walk([child], out)
        out.sort(key=lambda d: (d.path, _ORDER[d.kind], d.field or ""))
        return out

    def _tree(self, tree_id: bytes) -> list[Node]:
        # Trees are read one directory at a time, as the live walk reaches them.
        return load_tree(self.repo, tree_id)

    def _find(self, tree_id: bytes, parts: list[bytes]) -> Node | None:
        node: Node | None = None
        for i, part in enumerate(parts):
            node = next((n for n in self._tree(tree_id) if n.name == part), None)
            if node is None:
                return None
            if i < len(parts) - 1:
                if node.type != "dir" or node.subtree is None:
                    return None
                tree_id = node.subtree
        return node

    def _walk(self, stack: list[_Level], out: list[Difference]) -> None:
        """Iterative depth-first walk: each directory stays open while its entries are compared."""
        try:
            while stack:
                level = stack[-1]
                if not level.todo:
                    self._opener.close_dir(stack.pop().fd)
                    continue
                node = level.todo.pop()
                child = self._compare_one(level.fd, level.path + b"/" + node.name, node, out)
                if child is not None:
                    stack.append(child)
        finally:
            for level in stack:
                self._opener.close_dir(level.fd)

    def _compare_one(
        self, dir_fd: int, path: bytes, node: Node, out: list[Difference]
    ) -> _Level | None:
        """Compare ``node`` with ``node.name`` in ``dir_fd``; a directory to go into, or None."""
        self.entries += 1
        name = node.name
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            out.append(Difference(path, MISSING_IN_SOURCE, snapshot=node.type))
            return None
        except OSError as e:
            out.append(Difference(path, UNREADABLE, snapshot=_reason(e)))
            return None
        if node.type == "dir" and stat.S_ISDIR(st.st_mode):
            return self._compare_dir(dir_fd, path, node, st, out)
        # One descriptor serves a file's xattrs and its content.
        fd, failure = -1, None
        if node.type == "file" and stat.S_ISREG(st.st_mode):
            try:
                fd = self._opener.open(name, _FILE_FLAGS, dir_fd)
            except OSError as e:
                failure = e
        try:
            live = self._live_node(dir_fd, path, node, st, fd, out)
            if live is not None and node.type == live.type == "file" and node.size == live.size:
                out += self._content(fd, failure, path, node.digest)
        finally:
            if fd >= 0:
                os.close(fd)
        return None

    def _compare_dir(
        self, dir_fd: int, path: bytes, node: Node, st: os.stat_result, out: list[Difference]
    ) -> _Level | None:
        try:
            level = _Level(path, self._opener.open_dir(node.name, dir_fd))
        except OSError as e:
            if self._live_node(dir_fd, path, node, st, -1, out) is not None:
                out.append(Difference(path, UNREADABLE, snapshot=f"cannot list: {_reason(e)}"))
            return None
        if self._live_node(dir_fd, path, node, st, level.fd, out) is None or node.subtree is None:
            self._opener.close_dir(level.fd)
            return None
        out += self._children(level, node.subtree)
        return level

    def _live_node(
        self,
        dir_fd: int,
        path: bytes,
        node: Node,
        st: os.stat_result,
        fd: int,
        out: list[Difference],
    ) -> Node | None:
        """The live entry's node (through ``fd`` if open), its metadata compared into ``out``."""
        try:
            live, warnings = posixmeta.node_from_stat(
                node.name,
                st,
                path=path,
                names=self.names,
                read_flags=False,
                fd=fd if fd >= 0 else None,
                dir_fd=dir_fd,
            )
        except (OSError, ValueError) as e:
            out.append(Difference(path, UNREADABLE, snapshot=_reason(e)))
            return None
        out += [Difference(path, UNREADABLE, snapshot=w) for w in warnings]
        out += _metadata(path, node, live)
        return live

    def _children(self, level: _Level, tree_id: bytes) -> list[Difference]:
        """Entries missing on either side; those on both go into ``level.todo``."""
        try:
            live_names = {os.fsencode(n) for n in os.listdir(level.fd)}
        except OSError as e:
            shown = level.path or b"/"
            return [Difference(shown, UNREADABLE, snapshot=f"cannot list: {_reason(e)}")]
        out: list[Difference] = []
        nodes = self._tree(tree_id)
        for n in reversed(nodes):  # todo.pop() then visits them in name order
            if n.name in live_names:
                level.todo.append(n)
            else:
                self.entries += 1
                path = level.path + b"/" + n.name
                out.append(Difference(path, MISSING_IN_SOURCE, snapshot=n.type))
        for name in sorted(live_names - {n.name for n in nodes}):
            kind = _live_type(name, level.fd)
            out.append(Difference(level.path + b"/" + name, MISSING_IN_SNAPSHOT, snapshot=kind))
        return out

    def _content(
        self, fd: int, failure: OSError | None, path: bytes, digest: bytes | None
    ) -> list[Difference]:
        if not digest:
            return []
        try:
            if failure is not None:
                raise failure
            live = self._digest_of(fd)
        except OSError as e:
            return [Difference(path, UNREADABLE, snapshot=f"cannot read: {_reason(e)}")]
        if live == digest:
            return []
        return [Difference(path, CHANGED, "content", digest.hex(), live.hex())]

    def _digest_of(self, fd: int) -> bytes:
        h = self.new_digest()
        offset = 0
        while block := os.pread(fd, _READ_BLOCK, offset):
            h.update(block)
            offset += len(block)
        return h.digest()


def _metadata(path: bytes, snap: Node, live: Node) -> Iterator[Difference]:
    def changed(name: str, a: Any, b: Any) -> Iterator[Difference]:
        if a != b:
            yield Difference(path, CHANGED, name, a, b)

    yield from changed("type", snap.type, live.type)
    yield from changed("mode", snap.mode, live.mode)
    yield from changed("uid", snap.uid, live.uid)
    yield from changed("gid", snap.gid, live.gid)
    yield from changed("mtime_ns", snap.mtime_ns, live.mtime_ns)
    if snap.type != live.type:
        return
    if snap.type in ("file", "symlink"):
        yield from changed("size", snap.size, live.size)
    if snap.type == "symlink":
        yield from changed("target", _text(snap.target or b""), _text(live.target or b""))
    if snap.type in ("chardev", "blockdev"):
        yield from changed("rdev", snap.rdev, live.rdev)
    a, b = dict(snap.xattrs), dict(live.xattrs)
    for name in sorted(a.keys() | b.keys()):
        va, vb = a.get(name), b.get(name)
        if va != vb:
            yield Difference(
                path,
                CHANGED,
                f"xattr:{_text(name)}",
                None if va is None else _text(va),
                None if vb is None else _text(vb),
            )


def _live_type(path: bytes, dir_fd: int | None = None) -> str:
    try:
        mode = os.lstat(path, dir_fd=dir_fd).st_mode
    except OSError:
        return "unknown"
    return posixmeta.type_name(mode)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)
