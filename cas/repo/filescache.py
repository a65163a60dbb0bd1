"""The files cache of a write-only client: its last backup of a source set, kept locally.

A write-only key (spec §4.4) cannot open the snapshots and trees it wrote, so
it cannot compare a new backup with its parent as a full key does.  Instead
it keeps, in the client state (``$XDG_STATE_HOME/cas/files/<repository
ID>/<source set>``, mode 0600), the plaintext trees of its last backup of
each host and path set: every file's path (the trees' nesting), size, mtime,
ctime and inode with its content IDs and digest, which is what the archiver
needs to skip unchanged files.  Each tree is checked against its ID (the keyed
hash of its bytes) when loaded, so a damaged or foreign cache costs reading
files again, never a wrong backup.  It also keeps the figures of that
client's recent backups (``changes``, spec §12.1) for the anomaly check.

The cache holds only what the client already has (its own files' names and
metadata) and IDs keyed with a key it holds; it is never uploaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from cas import crypto
from cas.crypto import BlobType
from cas.errors import CasError
from cas.repo.clientstate import write_private

VERSION = 1
HISTORY = 30  # figures of this many recent unflagged backups are kept


@dataclass
class LastBackup:
    """What a write-only client remembers of its last backup of one source set."""

    snapshot: bytes
    time_ns: int
    tree: bytes  # the root tree
    files: int  # files in it: the anomaly check's ``parent_files``
    trees: dict[bytes, bytes] = field(default_factory=dict)  # tree ID -> plaintext
    history: list[dict[str, Any]] = field(default_factory=list)  # ``changes``, oldest first


class FilesCache:
    """The files cache of one repository, host and path set."""

    def __init__(self, root: Path, repo_id: bytes, hostname: str, paths: list[bytes]) -> None:
        source = b"\0".join([hostname.encode("utf-8", "surrogateescape"), *sorted(paths)])
        self.path = root / "files" / repo_id.hex() / hashlib.sha256(source).hexdigest()

    def load(self, keys: crypto.KeyBase) -> LastBackup | None:
        """The last backup, or None when there is none or it cannot be trusted (a tree
        that does not hash to its ID under ``keys``, a malformed file)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise CasError(f"cannot read the files cache {self.path}: {e.strerror}") from None
        try:
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if doc.get("v") != VERSION:
                return None
            last = LastBackup(
                bytes(doc["snapshot"]),
                int(doc["time_ns"]),
                bytes(doc["tree"]),
                int(doc["files"]),
                {bytes(k): bytes(v) for k, v in doc["trees"].items()},
                [dict(h) for h in doc["history"]],
            )
        except Exception:  # written by this program: anything else is damage
            return None
        if last.tree not in last.trees or any(
            keys.blob_id(BlobType.TREE, plain) != tid for tid, plain in last.trees.items()
        ):
            return None
        return last

    def save(self, last: LastBackup) -> None:
        """Replace the cache with ``last`` (atomically)."""
        doc = {
            "v": VERSION,
            "snapshot": last.snapshot,
            "time_ns": last.time_ns,
            "tree": last.tree,
            "files": last.files,
            "trees": last.trees,
            "history": last.history[-HISTORY:],
        }
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise CasError(f"cannot write the files cache {self.path}: {e.strerror}") from None
        write_private(self.path, msgpack.packb(doc, use_bin_type=True), "the files cache")
