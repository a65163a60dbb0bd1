"""What ``check`` finds, as data: the library never prints, the CLI formats these.

Each finding has a kind (a fixed vocabulary, :data:`KINDS`, each with a fixed
severity), the object it concerns, a one-line message and, for damaged or
missing objects, the snapshot paths that need them.  Human output and
``--json`` are both made from these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How bad a finding is: errors fail the check, warnings do not."""

    ERROR = "error"
    WARNING = "warning"


E, W = Severity.ERROR, Severity.WARNING

# Every kind of finding, its fixed severity and what it means.
KINDS: dict[str, tuple[Severity, str]] = {
    "name_mismatch": (E, "an index, snapshot or key file does not hash to its name"),
    "key_damaged": (E, "a key file is not a valid key file"),
    "index_damaged": (E, "an index file cannot be read, opened or parsed"),
    "index_conflict": (E, "two index files list different blobs for one pack"),
    "index_entry_invalid": (E, "the index's entries for a pack overlap or leave gaps"),
    "pack_missing": (E, "the index names a pack that is not stored"),
    "pack_size_mismatch": (E, "a pack's size is not what its index entries need"),
    "pack_header_damaged": (E, "a pack's header cannot be read or opened"),
    "pack_header_mismatch": (E, "a pack's header and the index disagree"),
    "pack_damaged": (E, "read-data: a pack does not hash to its name or does not parse"),
    "pack_unreadable": (E, "read-data: the storage failed to return a pack"),
    "blob_damaged": (E, "read-data: a blob does not open or does not hash to its ID"),
    "blob_missing": (E, "a snapshot needs a data blob that no index file names"),
    "tree_missing": (E, "a snapshot needs a tree blob that no index file names"),
    "tree_damaged": (E, "a tree blob cannot be read, opened or parsed"),
    "node_invalid": (E, "a tree entry is inconsistent (sizes, missing subtree)"),
    "snapshot_damaged": (E, "a snapshot file cannot be read, opened or parsed"),
    "pack_unreferenced": (W, "a stored pack that no index file names (orphan)"),
    "pack_indexed_twice": (W, "a pack is listed by more than one index file"),
    "blob_duplicate": (W, "a pack holds blobs that are also stored in other packs"),
    "blob_copy_damaged": (W, "read-data: a damaged copy of a blob another pack holds intact"),
    "lock_unreadable": (W, "a lock file cannot be opened (foreign or damaged)"),
    "leftover_upload": (W, "an unfinished upload (temporary file or multipart upload)"),
    "unexpected_object": (W, "an object whose name is not part of the repository layout"),
    "check_incomplete": (W, "part of the check could not run"),
    "generation_damaged": (E, "a generation record does not open or does not chain (§13.6)"),
    "snapshot_hidden": (E, "a snapshot this client saw is gone without a tombstone (§13.6)"),
    "generation_rollback": (E, "the repository is older than a generation this client saw"),
    "index_replayed": (E, "an index file a generation retired is back in use"),
    "repository_swapped": (E, "another repository is at a location this client knows"),
}


# The way back from each kind: the next command to run (docs/recovery.md walks through
# each).  "{id}" is the object's ID, "{short}" its first 8 hex digits, "{pack}" those of
# the pack that holds it (of the object itself when it is a pack).
_REINDEX = "cas repair index"
_SALVAGE = "cas repair packs {pack}, then back up the same paths again"
_TRUST = (
    "find out who changed the storage; nothing is deleted meanwhile; cas trust --accept "
    "if the change is legitimate (a restored bucket)"
)
NEXT: dict[str, str] = {
    "name_mismatch": "see docs/recovery.md: cas repair index (index file), "
    "cas forget {short} (snapshot), cas key remove {short} (key file)",
    "key_damaged": "cas key remove {short} (another key file opens the repository)",
    "index_damaged": _REINDEX,
    "index_conflict": _REINDEX,
    "index_entry_invalid": _REINDEX,
    "pack_missing": f"{_REINDEX}, back up the same paths again, then cas repair snapshots",
    "pack_size_mismatch": _SALVAGE,
    "pack_header_damaged": _SALVAGE,
    "pack_header_mismatch": _REINDEX,
    "pack_damaged": _SALVAGE,
    "pack_unreadable": "cas check --read-data again (a storage failure); if it stays, " + _SALVAGE,
    "blob_damaged": _SALVAGE,
    "blob_missing": "back up the same paths again (stores what the source still has), "
    "then cas repair snapshots",
    "tree_missing": "back up the same paths again, then cas repair snapshots",
    "tree_damaged": _SALVAGE + ", then cas repair snapshots",
    "node_invalid": "cas repair snapshots",
    "snapshot_damaged": "cas forget {short} (or cas repair snapshots)",
    "pack_unreferenced": "cas prune (removes it once no backup is running)",
    "pack_indexed_twice": "cas prune",
    "blob_duplicate": "cas prune",
    "blob_copy_damaged": "cas repair packs {pack} (drops the damaged copy; nothing is lost)",
    "lock_unreadable": "cas unlock --remove-all, once no other process uses the repository "
    "(locking ignores the file)",
    "leftover_upload": "cas prune (aborts uploads older than an hour)",
    "unexpected_object": "nothing: it is ignored; remove it by hand if it is yours",
    "check_incomplete": "cas check again",
    "generation_damaged": "cas trust --accept records a new generation above it",
    "snapshot_hidden": _TRUST,
    "generation_rollback": _TRUST,
    "index_replayed": _TRUST,
    "repository_swapped": _TRUST,
}


@dataclass(frozen=True, order=True)
class Affected:
    """A snapshot path that needs a damaged or missing object."""

    snapshot: bytes
    path: bytes


@dataclass
class Finding:
    """One problem: its kind (see KINDS), the object it concerns and a one-line message.

    ``object`` names a stored object by its name (``data/ab/<id>``,
    ``index/<id>``, ...), or a blob as ``tree:<id>`` / ``blob:<id>``.
    ``affected`` lists what depends on a damaged or missing object; ``pack`` is
    the pack holding a damaged blob (its ID goes into the next command).
    """

    kind: str
    object: str
    message: str
    affected: list[Affected] = field(default_factory=list)
    pack: bytes | None = None

    @property
    def severity(self) -> Severity:
        """Fixed by the kind."""
        return KINDS[self.kind][0]

    @property
    def next_step(self) -> str:
        """The command to run next (docs/recovery.md)."""
        oid = self.object.rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        pack = self.pack.hex()[:8] if self.pack is not None else oid[:8]
        return NEXT[self.kind].format(id=oid, short=oid[:8], pack=pack)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; paths with undecodable bytes get backslash escapes."""
        return {
            "kind": self.kind,
            "severity": str(self.severity),
            "object": self.object,
            "message": self.message,
            "next": self.next_step,
            "affected": [
                {"id": a.snapshot.hex(), "path": a.path.decode("utf-8", "backslashreplace")}
                for a in self.affected
            ],
        }


@dataclass
class CheckSummary:
    """What was looked at.  Trees, files and dirs count distinct trees and their
    entries: a tree shared by many snapshots is read and counted once."""

    snapshots: int = 0
    index_files: int = 0
    packs_indexed: int = 0
    packs_marked: int = 0
    packs_stored: int = 0
    trees: int = 0
    files: int = 0
    dirs: int = 0
    packs_selected: int = 0
    packs_read: int = 0
    bytes_read: int = 0


@dataclass
class CheckResult:
    """The findings, errors first, and the summary."""

    findings: list[Finding]
    summary: CheckSummary

    @property
    def errors(self) -> int:
        """Number of error findings."""
        return sum(f.severity is Severity.ERROR for f in self.findings)

    @property
    def warnings(self) -> int:
        """Number of warning findings."""
        return sum(f.severity is Severity.WARNING for f in self.findings)
