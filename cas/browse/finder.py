"""``cas find``: entries of snapshots by name pattern and mtime, or the files and
directories that use given blobs and trees (what a ``check`` finding points at).

Each snapshot is walked depth first with an explicit stack.  When what is
looked for does not depend on where an entry is (a name pattern without a
slash, an mtime range, blob and tree IDs), a tree found to hold no match
anywhere below is remembered and skipped in every later directory and
snapshot that shares it, so tracing a blob through a thousand snapshots of
one slowly changing tree reads each distinct tree about once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

from cas.browse.nav import Entry, WalkError, join, of_node
from cas.errors import CasError, UsageError
from cas.format.tree import Node
from cas.fs.patterns import translate
from cas.protocols import BlobReader
from cas.walker import load_tree


@dataclass(frozen=True)
class Match:
    """One entry found, and for a blob or tree search the IDs it uses."""

    entry: Entry
    ids: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Query:
    """What ``cas find`` looks for; every criterion given must hold.

    A pattern without a slash matches an entry's name; one with a slash its
    whole path, anchored at the root when it starts with ``/``, else at any
    directory boundary.  ``*`` and ``?`` never cross a slash, ``**`` does
    (the syntax of --exclude, :mod:`cas.fs.patterns`).
    """

    patterns: Sequence[bytes] = ()
    ignore_case: bool = False
    newest_ns: int | None = None  # mtime at most this
    oldest_ns: int | None = None  # mtime at least this
    blobs: Collection[bytes] = ()  # data or tree blob IDs used by the entry
    trees: Collection[bytes] = ()  # the entry is a directory with this tree
    _names: re.Pattern[bytes] | None = field(init=False, default=None, repr=False)
    _paths: re.Pattern[bytes] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        names, paths = [], []
        for p in self.patterns:
            p = p.rstrip(b"/") or b"/"
            body = translate(p)
            if b"/" not in p:
                names.append(body)
            else:
                paths.append((b"^" if p.startswith(b"/") else b"(?:^|/)") + body)
        flags = (re.IGNORECASE if self.ignore_case else 0) | re.DOTALL
        try:
            if names:
                object.__setattr__(self, "_names", re.compile(_any(names), flags))
            if paths:
                object.__setattr__(self, "_paths", re.compile(_any(paths), flags))
        except re.error as e:
            raise UsageError(f"invalid pattern: {e.msg}") from None

    @property
    def by_path(self) -> bool:
        """Whether a match depends on the entry's path (then no tree can be skipped)."""
        return self._paths is not None

    def matches(self, path: bytes, node: Node) -> tuple[bytes, ...] | None:
        """None if ``node`` at ``path`` does not match; else the searched IDs it uses."""
        if self.patterns and not (
            (self._names is not None and self._names.match(node.name))
            or (self._paths is not None and self._paths.search(path))
        ):
            return None
        if self.newest_ns is not None and node.mtime_ns > self.newest_ns:
            return None
        if self.oldest_ns is not None and node.mtime_ns < self.oldest_ns:
            return None
        ids: tuple[bytes, ...] = ()
        if self.blobs or self.trees:
            used = [c for c in node.content if c in self.blobs]
            if node.subtree is not None and (
                node.subtree in self.blobs or node.subtree in self.trees
            ):
                used.append(node.subtree)
            if not used:
                return None
            ids = tuple(dict.fromkeys(used))
        return ids


def _any(bodies: list[bytes]) -> bytes:
    """One expression matching any of ``bodies`` up to the end of the subject."""
    return b"(?:" + b"|".join(bodies) + b")\\Z"


@dataclass
class Finder:
    """Runs one query over any number of snapshot trees read through ``reader``."""

    reader: BlobReader
    query: Query
    on_error: WalkError | None = None
    clean: set[bytes] = field(default_factory=set)  # trees with no match below
    _events: int = field(default=0, init=False, repr=False)

    def find(self, root_tree: bytes) -> Iterator[Match]:
        """Matches below the snapshot root ``root_tree``, in path order."""
        q = self.query
        if root_tree in q.trees or root_tree in q.blobs:
            yield Match(Entry(b"/", None, root_tree), (root_tree,))
        memo = not q.by_path
        if memo and root_tree in self.clean:
            return
        # Matches and unreadable trees seen so far: a tree is known to hold no
        # match below only when neither grew while it was walked.
        self._events = 0
        # (entry, events before it) to visit; a tree ID marks the end of a
        # directory: (tree, events when it was entered)
        stack: list[tuple[Entry, int] | tuple[bytes, int]] = []
        self._push(Entry(b"/", None, root_tree), stack)
        while stack:
            item, before = stack.pop()
            if isinstance(item, bytes):  # a directory is done
                if memo and self._events == before:
                    self.clean.add(item)
                continue
            node = item.node
            assert node is not None
            ids = q.matches(item.path, node)
            if ids is not None:
                self._events += 1
                yield Match(item, ids)
            if item.tree is not None and not (memo and item.tree in self.clean):
                self._push(item, stack)

    def _push(self, d: Entry, stack: list[tuple[Entry, int] | tuple[bytes, int]]) -> None:
        assert d.tree is not None
        try:
            nodes = load_tree(self.reader, d.tree)
        except CasError as e:
            self._events += 1  # nothing below it is known: it and its parents stay unknown
            if self.on_error is None:
                raise
            self.on_error(d.path, e)
            return
        events = self._events
        stack.append((d.tree, events))
        stack.extend((of_node(join(d.path, n.name), n), events) for n in reversed(nodes))


def resolve_ids(
    prefixes: Sequence[str], known: Callable[[], Collection[bytes]], what: str
) -> list[bytes]:
    """Full IDs of ``prefixes``: a whole ID as given (found or not: a missing blob is
    still worth tracing), a shorter one when exactly one of ``known()`` starts with it."""
    out: list[bytes] = []
    pool: Collection[bytes] | None = None
    for text in prefixes:
        t = text.lower()
        if not t or any(c not in "0123456789abcdef" for c in t) or len(t) > 64:
            raise CasError(f"{text!r} is not a {what} ID (hex digits)")
        if len(t) == 64:
            out.append(bytes.fromhex(t))
            continue
        if pool is None:
            pool = known()
        hits = [i for i in pool if i.hex().startswith(t)]
        if not hits:
            raise CasError(f"no {what} matches {text!r}")
        if len(hits) > 1:
            shown = ", ".join(sorted(h.hex()[: len(t) + 4] for h in hits)[:10])
            raise CasError(f"{what} prefix {text!r} is ambiguous: {len(hits)} match ({shown})")
        out.append(hits[0])
    return out
