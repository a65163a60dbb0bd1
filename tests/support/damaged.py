"""Damaged repositories for the checker: each builder breaks a fresh repository one way.

Object IDs change with every build (keys and nonces are random), so the saved
expected findings in ``tests/fixtures/check/<name>.json`` name objects by
placeholders such as ``{data_pack}``; a builder returns what they stand for.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.backend.base import Backend
from cas.crypto import BlobType
from cas.format import index as indexfmt
from cas.format import pack as packfmt
from cas.format.snapshot import Snapshot
from cas.ids import storage_id
from cas.repo import Repository, layout, open_repository
from cas.repo.packer import Packer
from tests.support.repos import PASSWORD, flip_byte, new_repo, populate

FIXTURES = Path(__file__).parent.parent / "fixtures" / "check"


@dataclass
class Damaged:
    """A repository after damage, the placeholders of its expected findings, and how to check it."""

    backend: Backend
    snapshot: bytes
    files: dict[bytes, bytes]
    names: dict[str, str] = field(default_factory=dict)
    read_data: bool = False

    def open(self) -> Repository:
        """The repository opened afresh, as ``cas check`` would."""
        return open_repository(self.backend, PASSWORD)


def healthy(backend: Backend) -> Damaged:
    """Three files in one snapshot: one data pack, one tree pack, one index file."""
    repo = new_repo(backend)
    sid, files = populate(repo, n_files=3)
    (index_id,) = repo.index_files()
    idx = repo.read_index_file(index_id)
    snap = repo.load_snapshot(sid)
    d = Damaged(backend, sid, files)
    d.names.update(
        snapshot=layout.snapshot_name(sid),
        index=layout.index_name(index_id),
        tree=f"tree:{snap.tree.hex()}",
    )
    for pack_id, entries in idx.packs.items():
        kind = "tree_pack" if entries[0].type is BlobType.TREE else "data_pack"
        assert kind not in d.names, "populate made more packs than expected"
        d.names[kind] = layout.pack_name(pack_id)
        if kind == "data_pack":
            d.names["first_blob"] = f"blob:{entries[0].blob_id.hex()}"
    return d


def _pack_entries(d: Damaged, name: str) -> list[packfmt.PackEntry]:
    repo = d.open()
    pack_id = layout.id_from_name(name)
    assert pack_id is not None
    return repo.read_pack_header(pack_id)


def write_pack(repo: Repository, blob_type: BlobType, blobs: list[bytes]) -> bytes:
    packer = Packer(repo.keys, blob_type)
    for data in blobs:
        blob_id = repo.blob_id(blob_type, data)
        packer.add(blob_id, packfmt.seal_blob(repo.keys, blob_type, blob_id, data), len(data))
    pack = packer.finish()
    repo.backend.write(layout.pack_name(pack.pack_id), pack.data)
    return pack.pack_id


def write_index(repo: Repository, packs: dict[bytes, list[packfmt.PackEntry]]) -> bytes:
    raw = indexfmt.encode_index(indexfmt.IndexFile(packs), repo.keys.index_key)
    file_id = storage_id(raw)
    repo.backend.write(layout.index_name(file_id), raw)
    return file_id


# -- the damage ------------------------------------------------------------------


def pack_deleted(backend: Backend) -> Damaged:
    """The only data pack is gone: every file of the snapshot is lost."""
    d = healthy(backend)
    backend.delete(d.names["data_pack"])
    return d


def pack_byte_flipped(backend: Backend) -> Damaged:
    """One byte inside the first blob of the data pack is inverted (found by --read-data)."""
    d = healthy(backend)
    first = _pack_entries(d, d.names["data_pack"])[0]
    flip_byte(backend, d.names["data_pack"], first.offset + first.length // 2)
    d.read_data = True
    return d


def pack_header_flipped(backend: Backend) -> Damaged:
    """One byte of the tree pack's sealed header is inverted (found without --read-data)."""
    d = healthy(backend)
    size = backend.stat(d.names["tree_pack"]).size
    flip_byte(backend, d.names["tree_pack"], size - packfmt.TRAILER_SIZE - 20)
    return d


def pack_truncated(backend: Backend) -> Damaged:
    """The data pack lost its last 100 bytes (trailer and part of the header)."""
    d = healthy(backend)
    data = backend.read(d.names["data_pack"])
    backend.delete(d.names["data_pack"])
    backend.write(d.names["data_pack"], data[:-100])
    return d


def index_missing(backend: Backend) -> Damaged:
    """The only index file is gone: both packs are orphans, the root tree unknown."""
    d = healthy(backend)
    backend.delete(d.names["index"])
    return d


def index_byte_flipped(backend: Backend) -> Damaged:
    """The index file is altered: it no longer matches its name and is not used."""
    d = healthy(backend)
    flip_byte(backend, d.names["index"], 30)
    return d


def index_names_missing_pack(backend: Backend) -> Damaged:
    """A second index file names a pack that was never stored."""
    d = healthy(backend)
    repo = d.open()
    ghost = hashlib.sha256(b"never stored").digest()
    blob = packfmt.PackEntry(os.urandom(32), BlobType.DATA, 0, 100, 50)
    write_index(repo, {ghost: [blob]})
    d.names["ghost_pack"] = layout.pack_name(ghost)
    return d


def snapshot_tree_missing(backend: Backend) -> Damaged:
    """A second snapshot names a root tree that no index file knows."""
    d = healthy(backend)
    repo = d.open()
    ghost = os.urandom(32)
    sid = repo.save_snapshot(Snapshot(time.time_ns(), ghost, [b"/data"], "testhost", "tester"))
    d.names.update(ghost_tree=f"tree:{ghost.hex()}", ghost_snapshot=layout.snapshot_name(sid))
    return d


def snapshot_byte_flipped(backend: Backend) -> Damaged:
    """The snapshot file is altered."""
    d = healthy(backend)
    flip_byte(backend, d.names["snapshot"], 40)
    return d


def pack_unreferenced(backend: Backend) -> Damaged:
    """A valid pack that no index file names (an interrupted backup)."""
    d = healthy(backend)
    pack_id = write_pack(d.open(), BlobType.DATA, [b"orphaned content " * 100])
    d.names["orphan"] = layout.pack_name(pack_id)
    return d


def duplicates(backend: Backend) -> Damaged:
    """A second pack holds a blob the first one has, and two index files list one pack."""
    d = healthy(backend)
    repo = d.open()
    data = d.files[b"file0"][:1000]  # not a chunk of file0: a new blob plus a copy of one
    first = _pack_entries(d, d.names["data_pack"])[0]
    sealed = repo.backend.read(d.names["data_pack"], first.offset, first.length)
    packer = Packer(repo.keys, BlobType.DATA)
    new_id = repo.blob_id(BlobType.DATA, data)
    packer.add(new_id, packfmt.seal_blob(repo.keys, BlobType.DATA, new_id, data), len(data))
    packer.add(first.blob_id, sealed, first.raw_length)
    pack = packer.finish()
    backend.write(layout.pack_name(pack.pack_id), pack.data)
    # Listed by two more index files, both sorting after the original one so that
    # the original copy of the blob is the one the index uses.
    original = layout.id_from_name(d.names["index"])
    assert original is not None
    written = 0
    while written < 2:
        raw = indexfmt.encode_index(
            indexfmt.IndexFile({pack.pack_id: pack.entries}), repo.keys.index_key
        )
        if storage_id(raw) > original:
            backend.write(layout.index_name(storage_id(raw)), raw)
            written += 1
    d.names["dup_pack"] = layout.pack_name(pack.pack_id)
    return d


def clutter(backend: Backend) -> Damaged:
    """An undecodable lock file, a foreign object, a pack in the wrong fan-out directory."""
    d = healthy(backend)
    junk = b"not a lock file"
    lock = layout.lock_name(storage_id(junk))
    backend.write(lock, junk)
    backend.write("notes/readme", b"hello")
    data = backend.read(d.names["tree_pack"])
    misplaced = f"data/zz/{storage_id(data).hex()}"
    backend.write(misplaced, data)
    d.names.update(lock=lock, misplaced=misplaced)
    return d


def healthy_fixture(backend: Backend) -> Damaged:
    """No damage at all."""
    d = healthy(backend)
    d.read_data = True
    return d


BUILDERS: dict[str, Callable[[Backend], Damaged]] = {
    "healthy": healthy_fixture,
    "pack_deleted": pack_deleted,
    "pack_byte_flipped": pack_byte_flipped,
    "pack_header_flipped": pack_header_flipped,
    "pack_truncated": pack_truncated,
    "index_missing": index_missing,
    "index_byte_flipped": index_byte_flipped,
    "index_names_missing_pack": index_names_missing_pack,
    "snapshot_tree_missing": snapshot_tree_missing,
    "snapshot_byte_flipped": snapshot_byte_flipped,
    "pack_unreferenced": pack_unreferenced,
    "duplicates": duplicates,
    "clutter": clutter,
}


def expected(name: str) -> dict[str, Any]:
    """The saved expectation of fixture ``name``."""
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return doc


def resolve(findings: list[dict[str, str]], names: dict[str, str]) -> list[tuple[str, str, str]]:
    """(kind, severity, object) of saved findings with placeholders filled in, sorted."""
    return sorted((f["kind"], f["severity"], f["object"].format(**names)) for f in findings)
