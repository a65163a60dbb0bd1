"""Read a whole cas repository, local or S3, with the decoders of ``format.py``.

``read_repository`` opens the key files and the config with the password,
checks that every object hashes to its name (§6.3), reads every index file,
every pack (header, tiling, every blob opened and re-hashed, and its entries
against the index, §9.4, §10), every lock file and every snapshot, and walks
every snapshot's trees to rebuild its files (content checked against the
node's sizes and whole-file digest, §6.2, §11.3).  Any departure from the
spec raises ``Refused``.  Crash leftovers the spec allows (packs no index
names, temporary uploads, superseded index files, marked packs already
deleted) are counted, not refused.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.independent.format import (
    DATA,
    TREE,
    Config,
    Entry,
    IndexFile,
    Malformed,
    MasterKeys,
    Refused,
    Tampered,
    WriteOnlyKeys,
    decode_tree,
    file_digest,
    open_any_keyfile,
    open_blob,
    open_config,
    open_generation,
    open_index,
    open_keyfile,
    open_lock,
    open_snapshot,
    pack_header,
    require,
    storage_id,
    write_only_config,
)

HEX_ID = re.compile(r"[0-9a-f]{64}")


class Store(Protocol):
    """Names relative to the repository root, as in §2.1."""

    def list(self, prefix: str) -> list[str]: ...

    def read(self, name: str) -> bytes: ...


def _no_such_key(e: Exception) -> bool:
    """An S3 GET of an object deleted since it was listed (botocore's ClientError)."""
    code = getattr(e, "response", {}).get("Error", {}).get("Code")
    return code in ("NoSuchKey", "404")


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        out = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                out.append(str((Path(dirpath) / f).relative_to(self.root)))
        return sorted(out)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class S3Store:
    """Objects under ``prefix/`` of ``bucket``, through a boto3 client."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client, self.bucket = client, bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def list(self, prefix: str) -> list[str]:
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix + "/"
        )
        for page in pages:
            out += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(out)

    def read(self, name: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"]
        return bytes(body.read())


@dataclass
class Rebuilt:
    """One entry of a snapshot: its tree node and, for files, the rebuilt content's hashes."""

    node: dict[str, Any]
    sha256: str | None = None

    @property
    def type(self) -> str:
        return str(self.node["type"])


@dataclass
class SnapshotView:
    id: str
    doc: dict[str, Any]
    entries: dict[bytes, Rebuilt]  # path from the root, b"a/b/c" -> entry

    def below(self, path: str | bytes | Path) -> dict[bytes, Rebuilt]:
        """The entries under absolute ``path``, keyed by their path relative to it."""
        rel = os.fsencode(Path(os.fsdecode(path)).resolve()).strip(b"/") + b"/"
        return {p[len(rel) :]: e for p, e in self.entries.items() if p.startswith(rel)}


@dataclass
class RepositoryView:
    config: Config
    keys: MasterKeys
    snapshots: dict[str, SnapshotView]
    packs: dict[bytes, list[Entry]]
    unindexed_packs: set[bytes] = field(default_factory=set)
    locks: int = 0
    generations: dict[int, dict[str, Any]] = field(default_factory=dict)
    blobs_verified: int = 0
    files_rebuilt: int = 0


def _ids(store: Store, prefix: str) -> list[tuple[str, bytes]]:
    """(name, id) of the objects under ``prefix``; other names are ignored (§2.4)."""
    out = []
    for name in store.list(prefix):
        last = name.rsplit("/", 1)[-1]
        if HEX_ID.fullmatch(last):
            out.append((name, bytes.fromhex(last)))
    return out


def _read_named(store: Store, name: str, oid: bytes) -> bytes:
    data = store.read(name)
    if storage_id(data) != oid:
        raise Tampered(f"{name} does not hash to its name")
    return data


def open_keys(store: Store, password: bytes) -> tuple[MasterKeys, Config]:
    """§4.5: try the key files in name order; skip one whose data key does not open config."""
    raw_config = store.read("config")
    failures: list[Refused] = []
    for name, kid in _ids(store, "keys"):
        try:
            keys = open_keyfile(_read_named(store, name, kid), password)
            return keys, open_config(raw_config, keys.data)
        except Refused as e:
            failures.append(e)
    raise failures[-1] if failures else Malformed("no key files")


def open_write_only_key(store: Store, password: bytes) -> tuple[WriteOnlyKeys, Config]:
    """§4.4: the write-only key file ``password`` opens, and the config it carries for
    this repository's stored config."""
    raw_config = store.read("config")
    failures: list[Refused] = []
    for name, kid in _ids(store, "keys"):
        try:
            keys = open_any_keyfile(_read_named(store, name, kid), password, ("write-only",))
            assert isinstance(keys, WriteOnlyKeys)
            return keys, write_only_config(raw_config, keys)
        except Refused as e:
            failures.append(e)
    raise failures[-1] if failures else Malformed("no key files")


def read_repository(store: Store, password: bytes) -> RepositoryView:
    keys, config = open_keys(store, password)

    # §14.2: snapshots, then index files, then packs.
    snapshots = {
        name.rsplit("/", 1)[1]: open_snapshot(_read_named(store, name, sid), keys.data)
        for name, sid in _ids(store, "snapshots")
    }
    index_files = {
        iid: open_index(_read_named(store, name, iid), keys.index)
        for name, iid in _ids(store, "index")
    }
    live = _live_index(index_files)
    generations = _generations(store, keys, config)

    pack_bytes: dict[bytes, bytes] = {}
    headers: dict[bytes, list[Entry]] = {}
    view = RepositoryView(config, keys, {}, headers, generations=generations)
    for name, pid in _ids(store, "data"):
        require(name == f"data/{pid.hex()[:2]}/{pid.hex()}", f"pack name {name}")
        data = _read_named(store, name, pid)
        entries = pack_header(data, keys.index)
        for e in entries:
            open_blob(keys, e, data[e.offset : e.offset + e.length])
            view.blobs_verified += 1
        pack_bytes[pid], headers[pid] = data, entries

    # §10: every pack of a live index file exists and holds exactly the listed entries.
    locations: dict[bytes, tuple[bytes, Entry]] = {}
    indexed: set[bytes] = set()
    for iid in sorted(live):
        idx = index_files[iid]
        for pid, entries in idx.packs.items():
            if pid not in headers:
                raise Refused(f"index {iid.hex()} names a missing pack {pid.hex()}")
            if entries != headers[pid]:
                raise Tampered(f"index {iid.hex()} disagrees with pack {pid.hex()}")
            indexed.add(pid)
        for pid, (_, entries) in idx.garbage.items():
            # a marked pack may be deleted already (§13.5); if it exists it must match
            if pid in headers:
                require(entries == headers[pid], f"garbage entry of pack {pid.hex()}")
                indexed.add(pid)
        for pid, entries in [*idx.packs.items(), *((p, g[1]) for p, g in idx.garbage.items())]:
            if pid in headers:
                for e in entries:
                    locations.setdefault(e.id, (pid, e))
    view.unindexed_packs = set(headers) - indexed

    for name, lid in _ids(store, "locks"):
        # lock files are exempt from the name check (§14.2) but must open; one may be
        # removed by its owner between the listing and the read (§14.2: locks come and go)
        try:
            raw = store.read(name)
        except Exception as e:
            if isinstance(e, FileNotFoundError) or _no_such_key(e):
                continue
            raise
        open_lock(raw, keys.index)
        view.locks += 1
        del lid

    def load(blob_type: int, bid: bytes) -> bytes:
        if bid not in locations:
            raise Refused(f"blob {bid.hex()} is in no index file")
        pid, e = locations[bid]
        require(e.type == blob_type, f"blob {bid.hex()} has type {e.type}")
        return open_blob(keys, e, pack_bytes[pid][e.offset : e.offset + e.length])

    for sid, doc in snapshots.items():
        entries: dict[bytes, Rebuilt] = {}
        for path, node in _walk(load, doc["tree"], b""):
            entry = Rebuilt(node)
            if node["type"] == "file":
                entry.sha256 = _rebuild_file(load, keys, node)
                view.files_rebuilt += 1
            entries[path] = entry
        view.snapshots[sid] = SnapshotView(sid, doc, entries)
    return view


GENERATION_NAME = re.compile(r"index/gen-([0-9a-f]{16})")


def _generations(store: Store, keys: MasterKeys, config: Config) -> dict[int, dict[str, Any]]:
    """§13.6: every generation record opens, holds the number of its name and the
    repository's ID, and names the record below it by its SHA-256 when that exists."""
    raw: dict[int, bytes] = {}
    for name in store.list("index"):
        m = GENERATION_NAME.fullmatch(name)
        if m:
            raw[int(m.group(1), 16)] = store.read(name)
    docs = {n: open_generation(data, keys.index, n, config.repo_id) for n, data in raw.items()}
    for n, doc in docs.items():
        if n - 1 in raw:
            require(doc.get("prev") == storage_id(raw[n - 1]), f"generation {n} prev")
    return docs


def _live_index(index_files: dict[bytes, IndexFile]) -> set[bytes]:
    superseded = {s for f in index_files.values() for s in f.supersedes}
    return set(index_files) - superseded


def _walk(load: Any, tree: bytes, prefix: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Depth first, parents before children; iterative (trees may nest thousands deep)."""
    stack = [(tree, prefix)]
    while stack:
        tree, prefix = stack.pop()
        subtrees = []
        for node in decode_tree(load(TREE, tree)):
            path = prefix + node["name"]
            yield path, node
            if node["type"] == "dir":
                subtrees.append((node["subtree"], path + b"/"))
        stack += reversed(subtrees)


def _rebuild_file(load: Any, keys: MasterKeys, node: dict[str, Any]) -> str:
    sha = hashlib.sha256()
    whole = []
    for bid, size in zip(node.get("content", []), node.get("sizes", []), strict=True):
        chunk = load(DATA, bid)
        require(len(chunk) == size, "content blob size differs from the node's sizes")
        sha.update(chunk)
        whole.append(chunk)
    content = b"".join(whole)
    require(len(content) == node["size"], "file size differs from its content")
    if "digest" in node and file_digest(keys.id, content) != node["digest"]:
        raise Tampered("whole-file digest does not recompute")
    return sha.hexdigest()
