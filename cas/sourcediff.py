"""Is my backup identical to my files?  Compare a snapshot with the live source tree.

Only tree blobs are read from the repository: file content is compared
through the whole-file digest stored in each file node (spec §6.2), so the
live file is read and hashed, never the backed-up data.  Compared: type,
permission bits, uid and gid, size, mtime, symlink target, device number,
extended attributes and content.  Not compared: atime (reading changes it),
ctime and inode numbers (no restore or copy can keep them), link counts.

Written against the narrow BlobReader interface, like restore.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import posixmeta
from .crypto import BlobType
from .errors import CasError
from .format.snapshot import Snapshot
from .format.tree import Node, decode_tree
from .protocols import BlobReader, Digest

MISSING_IN_SOURCE = "missing_in_source"
MISSING_IN_SNAPSHOT = "missing_in_snapshot"
CHANGED = "changed"
UNREADABLE = "unreadable"

_ORDER = {MISSING_IN_SOURCE: 0, MISSING_IN_SNAPSHOT: 1, CHANGED: 2, UNREADABLE: 3}
_READ_BLOCK = 4 << 20


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


class SourceComparer:
    """Compares the snapshot entry at an absolute path with the same path on disk."""

    def __init__(self, repo: BlobReader, new_digest: Callable[[], Digest]) -> None:
        self.repo = repo
        self.new_digest = new_digest
        self.names = posixmeta.NameCache()
        self.entries = 0  # entries compared, for the summary

    def compare(self, snapshot: Snapshot, path: bytes) -> list[Difference]:
        """Every difference under ``path`` (absolute, normalised), sorted by path."""
        if covering_path(snapshot, path) is None:
            raise CasError(f"{_text(path)} is not among the snapshot's paths or inside one")
        parts = _components(path)
        out: list[Difference] = []
        if not parts:
            out += self._compare_dir(b"", snapshot.tree)
        else:
            node = self._find(snapshot.tree, parts)
            if node is None:
                if os.path.lexists(path):
                    out.append(Difference(path, MISSING_IN_SNAPSHOT, snapshot=_live_type(path)))
            else:
                out += self._compare_entry(path, node)
        out.sort(key=lambda d: (d.path, _ORDER[d.kind], d.field or ""))
        return out

    def _tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.repo.load_blob(BlobType.TREE, tree_id))

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

    def _compare_entry(self, path: bytes, node: Node) -> list[Difference]:
        """Iterative walk: the entry, then (for directories) everything below it."""
        out: list[Difference] = []
        todo: list[tuple[bytes, Node]] = [(path, node)]
        while todo:
            p, n = todo.pop()
            out += self._compare_one(p, n, todo)
        return out

    def _compare_one(
        self, path: bytes, node: Node, todo: list[tuple[bytes, Node]]
    ) -> list[Difference]:
        self.entries += 1
        try:
            st = os.lstat(path)
            live, warnings = posixmeta.node_from_stat(
                node.name, st, path=path, names=self.names, read_flags=False
            )
        except FileNotFoundError:
            return [Difference(path, MISSING_IN_SOURCE, snapshot=node.type)]
        except (OSError, ValueError) as e:
            return [Difference(path, UNREADABLE, snapshot=_reason(e))]
        out = [Difference(path, UNREADABLE, snapshot=w) for w in warnings]
        out += _metadata(path, node, live)
        if node.type != live.type:
            return out
        if node.type == "file" and node.size == live.size and node.digest is not None:
            out += self._content(path, node.digest)
        elif node.type == "dir" and node.subtree is not None:
            out += self._children(path, node.subtree, todo)
        return out

    def _compare_dir(self, path: bytes, tree_id: bytes) -> list[Difference]:
        todo: list[tuple[bytes, Node]] = []
        out = self._children(path, tree_id, todo)
        while todo:
            p, n = todo.pop()
            out += self._compare_one(p, n, todo)
        return out

    def _children(
        self, path: bytes, tree_id: bytes, todo: list[tuple[bytes, Node]]
    ) -> list[Difference]:
        shown = path or b"/"
        try:
            live_names = set(os.listdir(shown))
        except OSError as e:
            return [Difference(shown, UNREADABLE, snapshot=f"cannot list: {_reason(e)}")]
        out: list[Difference] = []
        nodes = self._tree(tree_id)
        for n in reversed(nodes):  # todo.pop() then visits them in name order
            if n.name in live_names:
                todo.append((path + b"/" + n.name, n))
            else:
                self.entries += 1
                out.append(Difference(path + b"/" + n.name, MISSING_IN_SOURCE, snapshot=n.type))
        for name in sorted(live_names - {n.name for n in nodes}):
            p = path + b"/" + name
            out.append(Difference(p, MISSING_IN_SNAPSHOT, snapshot=_live_type(p)))
        return out

    def _content(self, path: bytes, digest: bytes) -> list[Difference]:
        try:
            live = self._digest_of(path)
        except OSError as e:
            return [Difference(path, UNREADABLE, snapshot=f"cannot read: {_reason(e)}")]
        if live == digest:
            return []
        return [Difference(path, CHANGED, "content", digest.hex(), live.hex())]

    def _digest_of(self, path: bytes) -> bytes:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path, flags | os.O_NOATIME)  # comparing must not change atimes
        except PermissionError:
            fd = os.open(path, flags)
        h = self.new_digest()
        with os.fdopen(fd, "rb", buffering=0) as f:
            while block := f.read(_READ_BLOCK):
                h.update(block)
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


def _live_type(path: bytes) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "unknown"
    return posixmeta.type_name(mode)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)
