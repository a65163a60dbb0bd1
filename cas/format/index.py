"""Index files under ``index/`` (spec/format.md §10).

An index file is a document sealed under the index key (AD "cas.index.v1"):
``{"v": 1, "packs": [{"id": pack id, "blobs": [[blob id, type, offset,
length, raw length], ...]}, ...], "supersedes": [index file ids]}`` and,
when prune has marked packs for deletion, ``"garbage": [{"id": pack id,
"marked": ns, "blobs": [...]}, ...]`` (spec §13.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cas import crypto
from cas.crypto import BlobType
from cas.errors import FormatError
from cas.format.codec import field as get_field
from cas.format.codec import open_document, seal_document
from cas.format.pack import PackEntry

INDEX_AD = b"cas.index.v1"


@dataclass
class IndexFile:
    """The packs an index file describes, and the index files it replaces."""

    packs: dict[bytes, list[PackEntry]] = field(default_factory=dict)
    supersedes: list[bytes] = field(default_factory=list)
    garbage: dict[bytes, tuple[int, list[PackEntry]]] = field(default_factory=dict)


def _blob_row(e: PackEntry) -> list[Any]:
    return [e.blob_id, int(e.type), e.offset, e.length, e.raw_length]


def encode_index(
    idx: IndexFile, index_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """Serialise and seal; packs in the order given, blobs in pack order."""
    doc: dict[str, Any] = {
        "v": 1,
        "packs": [
            {"id": pack_id, "blobs": [_blob_row(e) for e in entries]}
            for pack_id, entries in idx.packs.items()
        ],
        "supersedes": list(idx.supersedes),
    }
    if idx.garbage:
        doc["garbage"] = [
            {"id": pack_id, "marked": marked, "blobs": [_blob_row(e) for e in entries]}
            for pack_id, (marked, entries) in idx.garbage.items()
        ]
    return seal_document(index_key, INDEX_AD, doc, nonce)


def decode_index(raw: bytes, index_key: crypto.Sealer | bytes) -> IndexFile:
    """Authenticate and parse an index file, validating every entry's shape."""
    what = "index file"
    doc = open_document(index_key, INDEX_AD, raw, what)
    out = IndexFile()
    for sup in get_field(doc, "supersedes", list, what):
        out.supersedes.append(_id(sup, what))
    for p in get_field(doc, "packs", list, what):
        pack_id, entries = _pack(p, what)
        if pack_id in out.packs:
            raise FormatError(what=what, detail="a pack is listed twice")
        out.packs[pack_id] = entries
    for p in get_field(doc, "garbage", list, what) if "garbage" in doc else []:
        pack_id, entries = _pack(p, what)
        marked = get_field(p, "marked", int, what)
        if pack_id in out.packs or pack_id in out.garbage:
            raise FormatError(what=what, detail="a pack is listed twice")
        out.garbage[pack_id] = (marked, entries)
    return out


def _pack(p: object, what: str) -> tuple[bytes, list[PackEntry]]:
    if not isinstance(p, dict):
        raise FormatError(what=what, detail="pack entry is not a map")
    pack_id = _id(p.get("id"), what)
    entries: list[PackEntry] = []
    append, types, overhead = entries.append, _BLOB_TYPES, crypto.SEAL_OVERHEAD
    for b in get_field(p, "blobs", list, what):
        # One pass per entry, type() tests: a million-blob index decodes in seconds.
        if type(b) is not list or len(b) != 5:
            raise FormatError(what=what, detail="malformed blob entry")
        bid, t, off, length, raw_len = b
        if not (type(t) is type(off) is type(length) is type(raw_len) is int):
            raise FormatError(what=what, detail="malformed blob entry")
        if t not in (0, 1) or off < 0 or length <= overhead or raw_len < 0:
            raise FormatError(what=what, detail="blob entry out of range")
        if type(bid) is not bytes or len(bid) != crypto.ID_SIZE:
            raise FormatError(what=what, detail="malformed ID")
        append(PackEntry(bid, types[t], off, length, raw_len))
    return pack_id, entries


_BLOB_TYPES = (BlobType(0), BlobType(1))


def _id(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != crypto.ID_SIZE:
        raise FormatError(what=what, detail="malformed ID")
    return value
