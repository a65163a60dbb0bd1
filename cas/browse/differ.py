"""``cas diff``: what changed between two snapshot trees, without reading file data.

Content is compared by blob ID lists (two files with the same blobs hold the same
bytes), and a directory whose tree ID is the same on both sides is skipped
without being loaded: trees are content-addressed, so equal IDs mean equal
subtrees.  Changes come out in path order (names sorted, depth first), each
with restic's letter:

``+`` added, ``-`` removed, ``M`` content modified (a file's blobs, a symlink's
target, a device's number), ``T`` type changed, ``U`` metadata only (mode,
owner, mtime, xattrs, inode flags).  Everything below an added or removed
directory is listed too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cas.browse.nav import Entry, WalkError, join
from cas.errors import CasError
from cas.format.tree import Node
from cas.protocols import BlobReader
from cas.walker import load_tree

ADDED, REMOVED, MODIFIED, TYPE_CHANGED, METADATA = "+", "-", "M", "T", "U"

_META_FIELDS = ("mode", "uid", "gid", "user", "group", "mtime_ns", "xattrs", "flags")


@dataclass(frozen=True)
class Change:
    """One changed path: its letter, the node before (``old``) and after (``new``),
    and for M and U which fields differ."""

    path: bytes
    kind: str
    old: Node | None
    new: Node | None
    fields: tuple[str, ...] = ()

    @property
    def is_dir(self) -> bool:
        """Whether the path is a directory (on the side that has it, the new one first)."""
        node = self.new or self.old
        return node is not None and node.type == "dir"


@dataclass
class Side:
    """Counts of one direction: what was added, or what was removed."""

    files: int = 0
    dirs: int = 0
    others: int = 0
    blobs: dict[bytes, int] = field(default_factory=dict)  # data blob ID -> size

    def count(self, node: Node) -> None:
        if node.type == "file":
            self.files += 1
            self.blobs.update(zip(node.content, node.sizes, strict=False))
        elif node.type == "dir":
            self.dirs += 1
        else:
            self.others += 1


@dataclass
class DiffStats:
    """The summary: entries and bytes added and removed, and the changes by letter.

    ``bytes_added`` sums the data blobs that the changed entries of the second
    snapshot use and those of the first do not (``bytes_removed`` the other
    way), so content that only moved counts for neither.
    """

    added: Side = field(default_factory=Side)
    removed: Side = field(default_factory=Side)
    modified: int = 0
    type_changed: int = 0
    metadata_changed: int = 0

    @property
    def bytes_added(self) -> int:
        """Bytes of blobs new on the second side."""
        old = self.removed.blobs
        return sum(n for b, n in self.added.blobs.items() if b not in old)

    @property
    def bytes_removed(self) -> int:
        """Bytes of blobs gone from the first side."""
        new = self.added.blobs
        return sum(n for b, n in self.removed.blobs.items() if b not in new)


class Differ:
    """Compares two entries of snapshots read through ``reader``."""

    def __init__(self, reader: BlobReader, on_error: WalkError | None = None) -> None:
        self.reader = reader
        self.on_error = on_error
        self.stats = DiffStats()

    def changes(self, old: Entry, new: Entry) -> Iterator[Change]:
        """Every change from ``old`` to ``new`` (their own paths may differ: the
        paths reported are ``new``'s).  A snapshot's root has no node: compared with
        it, only the contents of the other directory are."""
        if old.node is not None and new.node is not None:
            stack: list[tuple[bytes, Node | None, Node | None]] = [(new.path, old.node, new.node)]
            yield from self._run(stack, [])
        elif old.tree is not None and new.tree is not None:
            yield from self._run([], [(new.path, old.tree, new.tree)])
        else:
            raise CasError("a snapshot's root can only be compared with a directory")

    def _run(
        self,
        stack: list[tuple[bytes, Node | None, Node | None]],
        trees: list[tuple[bytes, bytes | None, bytes | None]],
    ) -> Iterator[Change]:
        # ``trees``: directories whose contents are still to be compared (the top
        # ones); ``stack``: entries to compare, the next one last.
        while stack or trees:
            if trees:
                path, ta, tb = trees.pop()
            else:
                path, a, b = stack.pop()
                change = self._compare(path, a, b)
                if change is not None:
                    yield change
                ta = a.subtree if a is not None and a.type == "dir" else None
                tb = b.subtree if b is not None and b.type == "dir" else None
            if ta == tb:  # the same subtree (or none on either side): nothing below
                continue
            olds = self._load(path, ta)
            news = self._load(path, tb)
            names = sorted(olds.keys() | news.keys(), reverse=True)
            stack.extend((join(path, n), olds.get(n), news.get(n)) for n in names)

    def _load(self, path: bytes, tree: bytes | None) -> dict[bytes, Node]:
        if tree is None:
            return {}
        try:
            return {n.name: n for n in load_tree(self.reader, tree)}
        except CasError as e:
            if self.on_error is None:
                raise
            self.on_error(path, e)
            return {}

    def _compare(self, path: bytes, a: Node | None, b: Node | None) -> Change | None:
        s = self.stats
        if a is None and b is None:
            return None
        if a is None:
            assert b is not None
            s.added.count(b)
            return Change(path, ADDED, None, b)
        if b is None:
            s.removed.count(a)
            return Change(path, REMOVED, a, None)
        if a.type != b.type:
            s.type_changed += 1
            s.removed.count(a)
            s.added.count(b)
            return Change(path, TYPE_CHANGED, a, b)
        content = _content_fields(a, b)
        meta = tuple(f for f in _META_FIELDS if getattr(a, f) != getattr(b, f))
        if content:
            s.modified += 1
            if a.type == "file":
                s.removed.blobs.update(zip(a.content, a.sizes, strict=False))
                s.added.blobs.update(zip(b.content, b.sizes, strict=False))
            return Change(path, MODIFIED, a, b, content + meta)
        if meta:
            s.metadata_changed += 1
            return Change(path, METADATA, a, b, meta)
        return None


def _content_fields(a: Node, b: Node) -> tuple[str, ...]:
    if a.type == "file":
        return ("content",) if a.content != b.content or a.size != b.size else ()
    if a.type == "symlink":
        return ("target",) if a.target != b.target else ()
    if a.type in ("chardev", "blockdev"):
        return ("rdev",) if a.rdev != b.rdev else ()
    return ()
