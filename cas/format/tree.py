"""Tree blobs: one directory's entries with their full metadata (spec/format.md §11).

A tree blob's plaintext is canonical msgpack: ``{"v": 1, "nodes": [node, ...]}``
with nodes sorted by name bytes.  Names, symlink targets and xattr names are
raw bytes, so names that are not UTF-8 survive byte-exact.  Optional fields
are omitted when absent; readers ignore keys they do not know.
"""

from __future__ import annotations

import itertools
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cas.errors import FormatError
from cas.format.codec import field as get_field
from cas.format.codec import shown, sorted_keys, unpack_map

NODE_TYPES = ("file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket")


# The file type bits of st_mode for each node type (ls -l, stat through the mount).
TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "socket": stat.S_IFSOCK,
}


@dataclass
class Node:
    """One directory entry as recorded at backup time."""

    name: bytes
    type: str
    mode: int = 0  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    size: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0  # st_dev of the containing filesystem
    links: int = 1  # st_nlink
    rdev: int = 0  # device number of char/block devices
    target: bytes | None = None  # symlink target
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    flags: int = 0  # Linux inode flags (chattr)
    content: list[bytes] = field(default_factory=list)  # data blob IDs in order
    sizes: list[int] = field(default_factory=list)  # plaintext size of each content blob
    digest: bytes | None = None  # keyed whole-file digest
    subtree: bytes | None = None  # tree blob ID of a directory
    extra: dict[str, Any] = field(default_factory=dict)  # fields this version does not know

    def to_doc(self) -> dict[str, Any]:
        """The msgpack map of this node, keys in sorted order; defaults and empty
        lists are omitted."""
        # Keys are added in sorted order (canonical msgpack, spec §11.2), so
        # encode_tree need not sort or re-walk any node.
        d: dict[str, Any] = {"atime_ns": self.atime_ns}
        if self.content:
            d["content"] = list(self.content)
        d["ctime_ns"] = self.ctime_ns
        d["device"] = self.device
        if self.digest is not None:
            d["digest"] = self.digest
        if self.flags:
            d["flags"] = self.flags
        d["gid"] = self.gid
        if self.group is not None:
            d["group"] = self.group
        d["inode"] = self.inode
        if self.links != 1:
            d["links"] = self.links
        d["mode"] = self.mode
        d["mtime_ns"] = self.mtime_ns
        d["name"] = self.name
        if self.rdev:
            d["rdev"] = self.rdev
        d["size"] = self.size
        if self.content:
            d["sizes"] = list(self.sizes)
        if self.subtree is not None:
            d["subtree"] = self.subtree
        if self.target is not None:
            d["target"] = self.target
        d["type"] = self.type
        d["uid"] = self.uid
        if self.user is not None:
            d["user"] = self.user
        if self.xattrs:
            d["xattrs"] = [[k, v] for k, v in self.xattrs]
        if self.extra:
            for k, v in self.extra.items():
                d.setdefault(k, sorted_keys(v))
            d = {k: d[k] for k in sorted(d)}
        return d

    @classmethod
    def from_doc(cls, d: Any) -> Node:
        """Validate and build a node from its msgpack map."""
        what = "tree node"
        if not isinstance(d, dict):
            raise FormatError(what=what, detail="not a map")
        name = get_field(d, "name", bytes, what)
        typ = get_field(d, "type", str, what)
        if typ not in NODE_TYPES:
            raise FormatError(what=what, detail=f"unknown type {shown(typ)}")
        if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
            raise FormatError(what=what, detail=f"unsafe name {shown(name)}")
        ints: list[Any] = [d.get(k) for k in _REQUIRED_INTS]
        for k, v in zip(_REQUIRED_INTS, ints, strict=True):
            if type(v) is not int:  # the common case in one test; get_field judges the rest
                get_field(d, k, int, what)
        mode, uid, gid, size, mtime_ns, atime_ns, ctime_ns, inode, device = ints
        n = cls(name, typ, mode, uid, gid, None, None, size, mtime_ns, atime_ns, ctime_ns)
        n.inode, n.device = inode, device
        if "user" in d:
            n.user = get_field(d, "user", str, what)
        if "group" in d:
            n.group = get_field(d, "group", str, what)
        if "digest" in d:
            n.digest = _id_field(d, "digest", what)
        if "content" in d:
            n.content, n.sizes = _content(d, what)
        if d.keys() <= _PLAIN and typ == "file":  # most file nodes: nothing more to look at
            _check_file(n, d, what)
            return n
        for k, typ_ in (("links", int), ("rdev", int), ("flags", int), ("target", bytes)):
            if k in d:
                setattr(n, k, get_field(d, k, typ_, what))
        if "subtree" in d:
            n.subtree = _id_field(d, "subtree", what)
        if n.target is not None and (not n.target or b"\0" in n.target):
            raise FormatError(what=what, detail="symlink target empty or holding NUL")
        if "xattrs" in d:
            xs = get_field(d, "xattrs", list, what)
            if not all(
                isinstance(x, list) and len(x) == 2 and all(isinstance(y, bytes) for y in x)
                for x in xs
            ):
                raise FormatError(what=what, detail="malformed xattrs")
            n.xattrs = [(x[0], x[1]) for x in xs]
        if not d.keys() <= _KNOWN:
            n.extra = {k: v for k, v in d.items() if k not in _KNOWN and isinstance(k, str)}
        _check_kind(n, d, what)
        return n


_REQUIRED_INTS = (
    "mode",
    "uid",
    "gid",
    "size",
    "mtime_ns",
    "atime_ns",
    "ctime_ns",
    "inode",
    "device",
)
_KNOWN = frozenset(f for f in Node.__dataclass_fields__ if f != "extra")
# The keys of most file nodes: the required ones and user, group, digest, content
# (no links, rdev, flags, target, subtree, xattrs or unknown keys).
_PLAIN = frozenset({"name", "type", *_REQUIRED_INTS, "user", "group", "digest", "content", "sizes"})


# The fields that only some node types may carry (spec §11.3, "Per-type rules"):
# each present on a node of another type is refused.
_ONLY_FOR = {
    "content": ("file",),
    "sizes": ("file",),
    "digest": ("file",),
    "subtree": ("dir",),
    "target": ("symlink",),
    "rdev": ("chardev", "blockdev"),
}


def _check_kind(n: Node, d: dict[Any, Any], what: str) -> None:
    """The per-type rules of spec §11.3: what each type must have and must not have."""
    for key, types in _ONLY_FOR.items():
        if key in d and n.type not in types:
            raise FormatError(what=what, detail=f"a {n.type} node with {key}")
    if n.type == "file":
        _check_file(n, d, what)
    elif n.type == "dir":
        if n.subtree is None:
            raise FormatError(what=what, detail="a dir node without subtree")
    elif n.type == "symlink":
        if n.target is None:
            raise FormatError(what=what, detail="a symlink node without target")
        if n.size != len(n.target):
            raise FormatError(what=what, detail="a symlink's size is not its target's length")
    if n.type not in ("file", "symlink") and n.size != 0:
        raise FormatError(what=what, detail=f"a {n.type} node with a size")


def _check_file(n: Node, d: dict[Any, Any], what: str) -> None:
    """A file has a content list exactly when it has a size, and the list adds up to it."""
    if "sizes" in d and "content" not in d:
        raise FormatError(what=what, detail="sizes without content")
    if n.size != sum(n.sizes) or (n.size == 0) != (not n.content):
        raise FormatError(what=what, detail="a file's content list does not add up to its size")


def _id_field(d: dict[Any, Any], key: str, what: str) -> bytes:
    v: bytes = get_field(d, key, bytes, what)
    if len(v) != 32:
        raise FormatError(what=what, detail=f"{key} is not a 32-byte ID")
    return v


def _content(d: dict[Any, Any], what: str) -> tuple[list[bytes], list[int]]:
    content = get_field(d, "content", list, what)
    sizes = get_field(d, "sizes", list, what)
    if (
        len(content) != len(sizes)
        or not all(isinstance(c, bytes) and len(c) == 32 for c in content)
        or not all(isinstance(s, int) and s >= 0 for s in sizes)
    ):
        raise FormatError(what=what, detail="malformed content list")
    return content, sizes


class EncodedNode:
    """A node already encoded (``encode_node``), for ``encode_tree`` to splice in as it
    is: the backup's worker processes build and encode the nodes of new files, and the
    main process keeps only these bytes, the name and the type."""

    __slots__ = ("name", "raw", "type")

    def __init__(self, name: bytes, node_type: str, raw: bytes) -> None:
        self.name = name
        self.type = node_type
        self.raw = raw


_local = threading.local()  # one msgpack Packer per thread, for encode_node


def encode_node(node: Node) -> bytes:
    """One node's canonical msgpack, as it stands in a tree blob."""
    # A Packer kept per thread (packb makes one per call, a third of the cost for a
    # small file's node; a Packer is not safe to share between threads).  Its buffer
    # is reset after each pack, also when packing fails.
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    raw: bytes = packer.pack(node.to_doc())
    return raw


# A tree blob is the map {"nodes": [...], "v": 1}: a 2-entry map header and the key
# "nodes", the array header, the nodes one after another, then "v" and 1.
_TREE_HEAD = msgpack.packb("nodes")
_TREE_TAIL = msgpack.packb("v") + msgpack.packb(1)


def encode_tree(nodes: Sequence[Node | EncodedNode]) -> bytes:
    """Tree blob plaintext (canonical msgpack); nodes sorted by name.  Nodes given
    encoded are spliced in: the bytes are the same as for the nodes they encode."""
    ordered = sorted(nodes, key=lambda n: n.name)
    raw: bytes
    if not any(type(n) is EncodedNode for n in ordered):
        docs = [n.to_doc() for n in ordered if isinstance(n, Node)]  # all of them
        # to_doc returns canonical maps already: skip pack_canonical's deep re-sort.
        raw = msgpack.packb({"nodes": docs, "v": 1}, use_bin_type=True)
        return raw
    packer = msgpack.Packer(use_bin_type=True)
    parts = [b"\x82", _TREE_HEAD, packer.pack_array_header(len(ordered))]
    for n in ordered:
        parts.append(n.raw if isinstance(n, EncodedNode) else packer.pack(n.to_doc()))
    parts.append(_TREE_TAIL)
    return b"".join(parts)


def decode_tree_docs(raw: bytes) -> list[dict[Any, Any]]:
    """A tree blob's node maps, each checked only for a name (bytes, strictly sorted):
    for a reader that validates a node with ``Node.from_doc`` where it uses it."""
    doc = unpack_map(raw, "tree")
    docs: list[Any] = get_field(doc, "nodes", list, "tree")
    prev = None
    for d in docs:
        name = d.get("name") if type(d) is dict else None
        if type(name) is not bytes:
            raise FormatError(what="tree node", detail="not a map with a name")
        if prev is not None and name <= prev:
            raise FormatError(what="tree", detail="names not strictly sorted")
        prev = name
    return docs


def decode_tree(raw: bytes) -> list[Node]:
    """Parse a tree blob's plaintext; rejects duplicate or unsorted names."""
    doc = unpack_map(raw, "tree")
    nodes = [Node.from_doc(d) for d in get_field(doc, "nodes", list, "tree")]
    for a, b in itertools.pairwise(nodes):
        if a.name >= b.name:
            raise FormatError(what="tree", detail="names not strictly sorted")
    return nodes
