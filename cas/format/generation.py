"""Generation records under ``index/`` (spec/format.md §13.6).

A generation record is a document sealed under the index key (AD
"cas.generation.v1").  Record *n* is stored once, with write-once semantics,
as ``index/gen-<n as 16 hex digits>``: two clients cannot both write
generation *n*.  It names the previous record by its SHA-256, the repository
by its ID, the snapshots the repository holds after this generation, and
the snapshots (tombstones) and index files this generation removed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cas import crypto
from cas.errors import FormatError
from cas.format.codec import field as get_field
from cas.format.codec import id_field, open_document, seal_document

GENERATION_AD = b"cas.generation.v1"
MAX_GENERATION = (1 << 63) - 1


@dataclass
class Generation:
    """One generation of a repository: what it holds after the writes it records."""

    n: int
    repo_id: bytes
    time_ns: int
    snapshots: list[bytes]
    prev: bytes | None = None
    forgotten: list[bytes] = field(default_factory=list)
    retired: list[bytes] = field(default_factory=list)
    command: str = ""
    accepted: bool = False  # written by ``cas trust --accept``: a new starting point


def _ids(doc: dict[str, Any], key: str, what: str) -> list[bytes]:
    value = get_field(doc, key, list, what) if key in doc else []
    if not all(isinstance(v, bytes) and len(v) == crypto.ID_SIZE for v in value):
        raise FormatError(what=what, detail=f"field {key!r} is not a list of 32-byte IDs")
    ids = [bytes(v) for v in value]
    if any(a >= b for a, b in itertools.pairwise(ids)):
        # One canonical form: re-encoding a record gives the record back.
        raise FormatError(what=what, detail=f"field {key!r} is not sorted without duplicates")
    return ids


def encode_generation(
    g: Generation, index_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """Serialise and seal a generation record (``nonce`` only for test vectors)."""
    if not 1 <= g.n <= MAX_GENERATION:
        raise FormatError(what="generation record", detail=f"generation {g.n} out of range")
    doc: dict[str, Any] = {
        "v": 1,
        "n": g.n,
        "repo": g.repo_id,
        "time": g.time_ns,
        "snapshots": sorted(set(g.snapshots)),
        "command": g.command,
    }
    if g.prev is not None:
        doc["prev"] = g.prev
    if g.forgotten:
        doc["forgotten"] = sorted(set(g.forgotten))
    if g.retired:
        doc["retired"] = sorted(set(g.retired))
    if g.accepted:
        doc["accepted"] = True
    return seal_document(index_key, GENERATION_AD, doc, nonce)


def decode_generation(raw: bytes, index_key: crypto.Sealer | bytes) -> Generation:
    """Authenticate and parse a generation record; raises only cas errors."""
    what = "generation record"
    d = open_document(index_key, GENERATION_AD, raw, what)
    n = get_field(d, "n", int, what)
    if not 1 <= n <= MAX_GENERATION:
        raise FormatError(what=what, detail=f"generation {n} out of range")
    return Generation(
        n=n,
        repo_id=id_field(d, "repo", what),
        time_ns=get_field(d, "time", int, what),
        snapshots=_ids(d, "snapshots", what),
        prev=id_field(d, "prev", what) if "prev" in d else None,
        forgotten=_ids(d, "forgotten", what),
        retired=_ids(d, "retired", what),
        command=get_field(d, "command", str, what) if "command" in d else "",
        accepted=get_field(d, "accepted", bool, what) if "accepted" in d else False,
    )
