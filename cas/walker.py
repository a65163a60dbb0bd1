"""Reading snapshot trees: the one place a stored tree is decoded, and the walks over them.

Modelled on restic's ``internal/walker`` and ``FindUsedBlobs``.  Trees are
content-addressed, so a directory that did not change between snapshots is
the same tree everywhere: every walk here visits each distinct tree once and
lets the caller carry what it learnt about it (a set of seen trees, a memo of
per-tree results) from one snapshot to the next.

- :func:`load_tree`: a tree blob's nodes.
- :func:`trees`: top down (a tree before the trees below it), for what needs
  every reachable tree once, in any order: copying, finding used blobs.
- :func:`used_blobs`: every tree and data blob some roots reach (prune).
- :func:`bottom_up`: each tree after all its subdirectories, for results
  folded from the leaves up (sizes, the trees that need a damaged blob).

All walks keep an explicit stack: directory depth is not bounded by Python's
recursion limit.  Walks that serve lazily or alongside something else (a
mount's directories, restore, comparing with the live files, rewriting trees)
call :func:`load_tree` themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from typing import TypeVar

from cas.crypto import BlobType
from cas.errors import CasError, IntegrityError
from cas.format.tree import Node, decode_tree
from cas.protocols import BlobReader

TreeError = Callable[[bytes, bytes, CasError], None]
"""``on_error(root, tree_id, error)``: a tree under ``root`` could not be loaded."""

_Nodes = TypeVar("_Nodes", bound="list[Node] | None")


def load_tree(reader: BlobReader, tree_id: bytes) -> list[Node]:
    """The nodes of tree ``tree_id``, sorted by name; CasError if it cannot be read or decoded."""
    return decode_tree(reader.load_blob(BlobType.TREE, tree_id))


def trees(
    reader: BlobReader,
    root: bytes,
    seen: set[bytes],
    *,
    on_error: Callable[[bytes, CasError], None] | None = None,
) -> Iterator[tuple[bytes, list[Node]]]:
    """``(tree ID, nodes)`` of every tree reachable from ``root`` that is not in ``seen``.

    Depth-first, each tree before the trees below it; of a tree's subtrees the
    last is visited first.  Every node's ``subtree`` is followed, whatever its
    type.  Each tree is added to ``seen`` before it is loaded, so a tree shared
    by several directories (or by roots walked with the same ``seen``) is
    visited once.  A tree that cannot be loaded is passed to
    ``on_error(tree_id, error)`` and skipped; without ``on_error`` the
    CasError propagates.
    """
    stack = [root]
    while stack:
        tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        try:
            nodes = load_tree(reader, tree_id)
        except CasError as e:
            if on_error is None:
                raise
            on_error(tree_id, e)
            continue
        stack.extend(n.subtree for n in nodes if n.subtree is not None)
        yield tree_id, nodes


def used_blobs(
    reader: BlobReader,
    roots: Iterable[bytes],
    *,
    used: set[bytes] | None = None,
    on_error: TreeError | None = None,
) -> set[bytes]:
    """Every tree and data blob reachable from ``roots`` (restic's FindUsedBlobs).

    ``roots`` are walked in the order given (it may be a lazy iterable), each
    as :func:`trees` walks it.  ``used`` (returned, updated in place) holds
    what is already known: a tree in it is not walked again, so calling this
    once per snapshot with one set costs the same as one call.  (Tree and
    data blob IDs hash the blob type, so they never collide.)  A tree that
    cannot be loaded is reported as ``on_error(root, tree_id, error)``, which
    may raise; without ``on_error`` the CasError propagates.  Either way the
    failed tree counts as used.
    """
    used = set() if used is None else used
    for root in roots:
        handler = None if on_error is None else _bind(on_error, root)
        for _, nodes in trees(reader, root, used, on_error=handler):
            for n in nodes:
                used.update(n.content)
    return used


def _bind(on_error: TreeError, root: bytes) -> Callable[[bytes, CasError], None]:
    def handler(tree_id: bytes, error: CasError) -> None:
        on_error(root, tree_id, error)

    return handler


def bottom_up(
    load: Callable[[bytes], _Nodes], root: bytes, done: Container[bytes]
) -> Iterator[tuple[bytes, _Nodes]]:
    """``(tree ID, nodes)`` of each tree under ``root`` (itself included) not in ``done``,
    every tree after the trees of its subdirectories (post-order).

    For results folded from the leaves up: when a tree is yielded, the result
    of each of its subdirectories is in the caller's memo.  The caller records
    every yielded tree in ``done`` (typically that memo) before it resumes the
    walk; a tree in ``done`` is neither loaded nor yielded, so a tree shared by
    several directories or snapshots is folded once.

    ``load`` returns a tree's nodes (:func:`load_tree`, or the caller's own
    reading with its error handling); when it returns None (cannot be read,
    the caller has noted why) the tree is yielded as a leaf with None.  Only
    directory nodes' subtrees are followed, in name order.  A tree that
    contains itself raises IntegrityError.
    """
    opened: dict[bytes, _Nodes] = {}  # the trees on the path to the top of the stack
    stack = [root]
    while stack:
        tree_id = stack[-1]
        if tree_id in done:
            stack.pop()
            continue
        nodes = opened.pop(tree_id, None)
        if nodes is None:
            nodes = load(tree_id)
            if nodes is not None:
                todo = [
                    n.subtree
                    for n in nodes
                    if n.subtree is not None and n.type == "dir" and n.subtree not in done
                ]
                if todo:
                    opened[tree_id] = nodes
                    if any(s in opened for s in todo):
                        raise IntegrityError(what=f"tree {tree_id.hex()}", detail="contains itself")
                    todo.reverse()  # the first directory on top
                    stack.extend(todo)
                    continue
        stack.pop()
        yield tree_id, nodes
