"""Snapshot files under ``snapshots/`` (spec/format.md §12).

A snapshot file is a document sealed under the data key (AD
"cas.snapshot.v1") naming the root tree and describing the backup run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cas import crypto
from cas.errors import FormatError
from cas.format.codec import field as get_field
from cas.format.codec import id_field, open_document, seal_document

SNAPSHOT_AD = b"cas.snapshot.v1"


@dataclass
class Snapshot:
    """One point-in-time backup."""

    time_ns: int
    tree: bytes
    paths: list[bytes]
    hostname: str
    username: str
    uid: int = 0
    gid: int = 0
    tags: list[str] = field(default_factory=list)
    parent: bytes | None = None
    program: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    # ``changes`` and ``anomalies`` (optional, §12) live in ``extra``, so that every
    # rewrite of a snapshot (tag, copy, repair) keeps them as it keeps unknown keys.

    @property
    def changes(self) -> dict[str, Any] | None:
        """What the backup changed against its parent (figures), if recorded."""
        value = self.extra.get("changes")
        return value if isinstance(value, dict) else None

    @property
    def anomalies(self) -> list[dict[str, Any]]:
        """The kinds of change the backup flagged; empty when it is not flagged."""
        value = self.extra.get("anomalies")
        return value if isinstance(value, list) else []


def encode_snapshot(
    s: Snapshot, data_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """Serialise and seal a snapshot."""
    doc: dict[str, Any] = dict(s.extra)
    doc.update(
        v=1,
        time=s.time_ns,
        tree=s.tree,
        paths=list(s.paths),
        hostname=s.hostname,
        username=s.username,
        uid=s.uid,
        gid=s.gid,
        tags=sorted(s.tags),
        program=s.program,
        summary=s.summary,
    )
    if s.parent is not None:
        doc["parent"] = s.parent
    return seal_document(data_key, SNAPSHOT_AD, doc, nonce)


def decode_snapshot(raw: bytes, data_key: crypto.Sealer | bytes) -> Snapshot:
    """Authenticate and parse a snapshot file."""
    what = "snapshot"
    d = open_document(data_key, SNAPSHOT_AD, raw, what)
    paths = get_field(d, "paths", list, what)
    tags = get_field(d, "tags", list, what)
    if not all(isinstance(p, bytes) for p in paths) or not all(isinstance(t, str) for t in tags):
        raise FormatError(what=what, detail="malformed paths or tags")
    s = Snapshot(
        time_ns=get_field(d, "time", int, what),
        tree=id_field(d, "tree", what),
        paths=paths,
        hostname=get_field(d, "hostname", str, what),
        username=get_field(d, "username", str, what),
        uid=get_field(d, "uid", int, what),
        gid=get_field(d, "gid", int, what),
        tags=tags,
        parent=id_field(d, "parent", what) if "parent" in d else None,
        program=get_field(d, "program", str, what),
        summary=get_field(d, "summary", dict, what),
    )
    known = {
        "v",
        "time",
        "tree",
        "paths",
        "hostname",
        "username",
        "uid",
        "gid",
        "tags",
        "parent",
        "program",
        "summary",
    }
    s.extra = {k: v for k, v in d.items() if k not in known}
    _check_anomaly_fields(s.extra, what)
    return s


def _check_anomaly_fields(extra: dict[str, Any], what: str) -> None:
    """``changes``: a map of str to int >= 0 or str; ``anomalies``: an array of maps with
    ``kind`` (str), ``count`` and ``total`` (int >= 0) and an optional ``extension`` (str)."""
    changes = extra.get("changes")
    if "changes" in extra and not (
        isinstance(changes, dict)
        and all(
            isinstance(k, str) and (isinstance(v, str) or _is_count(v)) for k, v in changes.items()
        )
    ):
        raise FormatError(what=what, detail="malformed changes")
    anomalies = extra.get("anomalies")
    if "anomalies" in extra and not (
        isinstance(anomalies, list) and all(_is_anomaly(a) for a in anomalies)
    ):
        raise FormatError(what=what, detail="malformed anomalies")


def _is_anomaly(a: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(a.get("kind"), str):
        return False
    if not (_is_count(a.get("count")) and _is_count(a.get("total"))):
        return False
    return "extension" not in a or isinstance(a["extension"], str)


def _is_count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0
