"""Sizes of snapshots and of what they keep stored, for ``cas stats``.

Four numbers describe a set of snapshots:

- restore size: the bytes a full restore of each snapshot would write (file
  contents; a hardlinked file counts once per snapshot), summed over them;
- raw data: the plaintext of the distinct blobs they reference (file chunks
  and tree blobs), each counted once however many files and snapshots share it;
- stored size: the sealed (compressed, encrypted) length of those blobs as
  the index records it;
- the ratios: dedup = restore size / raw data, compression = raw / stored.

Trees are content-addressed, so an unchanged directory has the same tree ID
in every snapshot: its totals are computed once and reused, which keeps a
repository of many similar snapshots quick to measure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cas.crypto import BlobType
from cas.errors import CasError
from cas.format.tree import Node
from cas.walker import bottom_up, load_tree

# A hardlinked file is known by the filesystem and inode it was backed up from.
LinkKey = tuple[int, int]


@dataclass
class _TreeTotals:
    """Everything below one tree; hardlinked files are kept apart to count them once."""

    file_bytes: int = 0  # files that are not hardlinked
    files: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, devices, fifos, sockets
    links: dict[LinkKey, int] = field(default_factory=dict)  # (device, inode) -> size

    def add(self, other: _TreeTotals) -> None:
        self.file_bytes += other.file_bytes
        self.files += other.files
        self.dirs += other.dirs
        self.others += other.others
        self.links.update(other.links)


@dataclass(frozen=True)
class SnapshotSize:
    """What restoring one snapshot would produce."""

    snapshot_id: bytes
    restore_size: int
    files: int  # a hardlinked file counts once
    dirs: int
    others: int


@dataclass
class Stats:
    """Sizes over a set of snapshots; see the module docstring for what each means."""

    snapshots: list[SnapshotSize] = field(default_factory=list)
    data_blobs: int = 0
    tree_blobs: int = 0
    raw_data: int = 0  # data and tree blob plaintext
    raw_tree: int = 0  # the tree blobs' share of raw_data
    stored_size: int = 0
    missing_blobs: int = 0  # referenced but not in the index (stored size unknown)
    # Trees that could not be read (damaged, or in no readable pack): counted as empty.
    unreadable_trees: dict[bytes, str] = field(default_factory=dict)

    @property
    def restore_size(self) -> int:
        """Sum of the snapshots' restore sizes."""
        return sum(s.restore_size for s in self.snapshots)

    @property
    def files(self) -> int:
        """Sum of the snapshots' file counts."""
        return sum(s.files for s in self.snapshots)

    @property
    def dedup_ratio(self) -> float | None:
        """restore size / raw data (None when nothing is stored)."""
        return self.restore_size / self.raw_data if self.raw_data else None

    @property
    def compression_ratio(self) -> float | None:
        """raw data / stored size (None when nothing is stored)."""
        return self.raw_data / self.stored_size if self.stored_size else None

    def as_dict(self) -> dict[str, Any]:
        """The numbers as a JSON-ready map (IDs in hex)."""
        return {
            "snapshots": [
                {
                    "id": s.snapshot_id.hex(),
                    "restore_size": s.restore_size,
                    "files": s.files,
                    "dirs": s.dirs,
                    "others": s.others,
                }
                for s in self.snapshots
            ],
            "snapshot_count": len(self.snapshots),
            "restore_size": self.restore_size,
            "files": self.files,
            "data_blobs": self.data_blobs,
            "tree_blobs": self.tree_blobs,
            "raw_data": self.raw_data,
            "raw_tree": self.raw_tree,
            "stored_size": self.stored_size,
            "missing_blobs": self.missing_blobs,
            "unreadable_trees": {t.hex(): why for t, why in sorted(self.unreadable_trees.items())},
            "dedup_ratio": self.dedup_ratio,
            "compression_ratio": self.compression_ratio,
        }


class StatsCollector:
    """Walks snapshot trees once each and adds up sizes.

    ``load_tree`` returns a tree blob's plaintext; ``stored_length`` the
    sealed length the index records for a blob, or None if it has none.  A tree
    that cannot be read is counted as an empty directory and noted in the result
    (one damaged tree never stops the measurement of the rest).
    """

    def __init__(
        self,
        load_tree: Callable[[bytes], bytes],
        stored_length: Callable[[bytes], int | None],
    ) -> None:
        self._stored_length = stored_length
        self._totals: dict[bytes, _TreeTotals] = {}
        self._data: dict[bytes, int] = {}  # data blob -> plaintext size
        self._trees: dict[bytes, int] = {}  # tree blob -> plaintext size
        self._reader = _SizedTrees(load_tree, self._trees)
        self._snapshots: list[SnapshotSize] = []
        self._unreadable: dict[bytes, str] = {}

    def add_snapshot(self, snapshot_id: bytes, tree_id: bytes) -> SnapshotSize:
        """Measure one snapshot given its root tree."""
        t = self._tree_totals(tree_id)
        size = SnapshotSize(
            snapshot_id,
            restore_size=t.file_bytes + sum(t.links.values()),
            files=t.files + len(t.links),
            dirs=t.dirs,
            others=t.others,
        )
        self._snapshots.append(size)
        return size

    def result(self) -> Stats:
        """The totals over every snapshot added so far."""
        s = Stats(snapshots=list(self._snapshots), unreadable_trees=dict(self._unreadable))
        s.data_blobs, s.tree_blobs = len(self._data), len(self._trees)
        s.raw_tree = sum(self._trees.values())
        s.raw_data = sum(self._data.values()) + s.raw_tree
        for blob_id in (*self._data, *self._trees):
            n = self._stored_length(blob_id)
            if n is None:
                s.missing_blobs += 1
            else:
                s.stored_size += n
        return s

    def _tree_totals(self, root: bytes) -> _TreeTotals:
        for tree_id, nodes in bottom_up(self._read, root, self._totals):
            self._totals[tree_id] = self._sum(nodes)
        return self._totals[root]

    def _read(self, tree_id: bytes) -> list[Node] | None:
        try:
            return load_tree(self._reader, tree_id)
        except CasError as err:
            self._unreadable[tree_id] = str(err)
            return None

    def _sum(self, nodes: list[Node] | None) -> _TreeTotals:
        t = _TreeTotals()
        if nodes is None:
            return t
        for n in nodes:
            if n.type == "dir":
                t.dirs += 1
                if n.subtree is not None:
                    t.add(self._totals[n.subtree])
                continue
            if n.type != "file":
                t.others += 1
                continue
            for blob_id, size in zip(n.content, n.sizes, strict=True):
                self._data[blob_id] = size
            if n.links > 1:
                t.links[(n.device, n.inode)] = n.size
            else:
                t.file_bytes += n.size
                t.files += 1
        return t


class _SizedTrees:
    """``load_tree`` as a BlobReader for the walker, noting each tree's plaintext size."""

    def __init__(self, load_tree: Callable[[bytes], bytes], sizes: dict[bytes, int]) -> None:
        self._load_tree = load_tree
        self._sizes = sizes

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        raw = self._load_tree(blob_id)
        self._sizes[blob_id] = len(raw)
        return raw


@dataclass(frozen=True)
class PackTotals:
    """What the repository's data directory holds."""

    packs: int
    bytes: int


class PackSizes(Protocol):
    """Where the pack files are listed (a Repository)."""

    def pack_sizes(self) -> dict[bytes, int]: ...


def pack_totals(repo: PackSizes) -> PackTotals:
    """Count the pack files and their bytes (referenced or not) from one listing."""
    sizes = repo.pack_sizes()
    return PackTotals(len(sizes), sum(sizes.values()))
