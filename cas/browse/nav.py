"""Paths inside a snapshot: finding the entry at a path, and walking below it.

Every walk keeps an explicit stack (trees may be deeper than Python's recursion
limit) and yields entries in name order, depth first, parents before children.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cas.errors import CasError
from cas.format.tree import Node
from cas.protocols import BlobReader
from cas.walker import load_tree

WalkError = Callable[[bytes, CasError], None]
"""``on_error(path, error)``: the directory at ``path`` could not be read."""


class PathNotFound(CasError):
    """{path} is not in the snapshot"""


@dataclass(frozen=True)
class Entry:
    """An entry of a snapshot at ``path`` (absolute, ``b"/"`` for the root).

    ``node`` is None for the snapshot's root, which has a tree but no node.
    """

    path: bytes
    node: Node | None
    tree: bytes | None  # the directory's tree, None for anything else

    @property
    def is_dir(self) -> bool:
        """Whether the entry is a directory (or the root)."""
        return self.tree is not None


def split_path(path: bytes) -> list[bytes]:
    """The names of a snapshot path ("/a//b/./c" -> [a, b, c]); ``..`` is refused."""
    parts = [p for p in path.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise CasError(f"{shown(path)}: '..' is not allowed in a snapshot path")
    return parts


def join(parent: bytes, name: bytes) -> bytes:
    """``parent``/``name`` for snapshot paths (the root is ``b"/"``)."""
    return (parent if parent != b"/" else b"") + b"/" + name


def shown(path: bytes) -> str:
    """A path in a one-line message: undecodable bytes and control characters escaped."""
    text = path.decode("utf-8", "backslashreplace")
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def lookup(reader: BlobReader, root_tree: bytes, path: bytes) -> Entry:
    """The entry at ``path`` under the tree ``root_tree``; PathNotFound if there is none."""
    entry = Entry(b"/", None, root_tree)
    for name in split_path(path):
        if entry.tree is None:
            raise PathNotFound(path=shown(path))
        found = _named(load_tree(reader, entry.tree), name)
        if found is None:
            raise PathNotFound(path=shown(path))
        entry = of_node(join(entry.path, name), found)
    return entry


def of_node(path: bytes, node: Node) -> Entry:
    """The entry of ``node`` at ``path``."""
    return Entry(path, node, node.subtree if node.type == "dir" else None)


def _named(nodes: list[Node], name: bytes) -> Node | None:
    lo, hi = 0, len(nodes)
    while lo < hi:  # nodes are sorted by name
        mid = (lo + hi) // 2
        if nodes[mid].name < name:
            lo = mid + 1
        else:
            hi = mid
    return nodes[lo] if lo < len(nodes) and nodes[lo].name == name else None


def walk(
    reader: BlobReader,
    top: Entry,
    *,
    recursive: bool = True,
    on_error: WalkError | None = None,
) -> Iterator[Entry]:
    """Every entry below ``top`` (not ``top`` itself), parents first, names in order.

    Without ``recursive`` only ``top``'s own entries.  A directory whose tree
    cannot be read is passed to ``on_error(path, error)`` and yields nothing
    below it; without ``on_error`` the CasError propagates.
    """
    if top.tree is None:
        return
    stack: list[Entry] = []
    _push(reader, top, stack, on_error)
    while stack:
        entry = stack.pop()
        yield entry
        if recursive and entry.tree is not None:
            _push(reader, entry, stack, on_error)


def _push(reader: BlobReader, d: Entry, stack: list[Entry], on_error: WalkError | None) -> None:
    assert d.tree is not None
    try:
        nodes = load_tree(reader, d.tree)
    except CasError as e:
        if on_error is None:
            raise
        on_error(d.path, e)
        return
    stack.extend(of_node(join(d.path, n.name), n) for n in reversed(nodes))
