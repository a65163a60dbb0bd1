"""Anomaly warnings: is this backup's change far outside the host's recent history?

A backup counts, while it compares each directory with the parent's (which it
reads anyway), how many of the parent's files it found rewritten, gone,
renamed in place or emptied, and how much of its new data did not compress.
Those figures (:class:`Changes`) are stored in the snapshot (spec §12,
``changes``), so the next backup judges its own against the figures of the
last few snapshots of its host and paths without reading any old tree.

A kind of change is flagged when all three hold: it touches at least a
minimum count (files, or bytes for incompressible data), its share is at
least the kind's threshold, and its share exceeds the history's share of the
same kind by at least a margin.  Pure: no I/O, nothing printed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cas.errors import UsageError
from cas.format.snapshot import Snapshot
from cas.format.tree import EncodedNode, Node

MIB = 1 << 20

# The kinds, in the order they are reported, with what their share is of.
KINDS = ("modified", "removed", "renamed", "emptied", "incompressible")

# Environment variable holding the same text as --anomaly-thresholds.
ENV = "CAS_ANOMALY_THRESHOLDS"


@dataclass(frozen=True)
class Thresholds:
    """When a change is flagged (docs/anomalies.md); ``--anomaly-thresholds`` sets them."""

    modified: float = 0.5  # share of the parent's files whose content changed
    removed: float = 0.5  # share of the parent's files gone (and not moved elsewhere)
    renamed: float = 0.25  # share replaced in place by a name with another extension
    emptied: float = 0.25  # share of the parent's non-empty files now empty
    incompressible: float = 0.9  # share of the new data that did not compress
    rewritten: float = 0.2  # ... counted only when this share of files was modified or removed
    margin: float = 0.3  # the share must exceed the history's share by this much
    min_files: int = 50  # fewer files changed in a kind is never flagged
    min_bytes: int = 32 * MIB  # less incompressible new data is never flagged
    history: int = 10  # snapshots of the host and paths whose figures are the history
    enabled: bool = True

    @classmethod
    def parse(cls, text: str) -> Thresholds:
        """``off``, or comma-separated ``name=value`` over the defaults (shares 0..1,
        ``min-bytes`` with an optional K/M/G suffix); UsageError when malformed."""
        t = cls()
        text = text.strip()
        if text.lower() in ("off", "no", "none"):
            return replace(t, enabled=False)
        names = {f.name.replace("_", "-"): f.name for f in fields(cls) if f.name != "enabled"}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = part.partition("=")
            name = names.get(key.strip().lower())
            if name is None or not eq:
                raise UsageError(
                    f"anomaly threshold {part!r}: use off, or name=value with name one of "
                    f"{', '.join(names)}"
                )
            values: dict[str, Any] = {name: _value(name, value.strip(), part)}
            t = replace(t, **values)
        return t

    @classmethod
    def from_env(cls, option: str | None) -> Thresholds:
        """The option's value, else ``CAS_ANOMALY_THRESHOLDS``, else the defaults."""
        text = option if option is not None else os.environ.get(ENV, "")
        return cls.parse(text)

    def share_of(self, kind: str) -> float:
        """The kind's share threshold."""
        value: float = getattr(self, kind)
        return value


def _value(name: str, text: str, part: str) -> float | int:
    try:
        if name == "min_bytes":
            units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
            scale = units.get(text[-1:].lower(), 1)
            number = text[:-1] if scale > 1 else text
            n = int(float(number) * scale)
        elif name in ("min_files", "history"):
            n = int(text)
        else:
            share = float(text)
            if not 0 <= share <= 1:
                raise ValueError
            return share
    except ValueError:
        n = -1
    if n < 0:
        raise UsageError(f"anomaly threshold {part!r}: not a valid value")
    return n


def _stem(name: bytes) -> bytes:
    """The name without its last extension (``a.txt`` -> ``a``; ``.bashrc`` stays)."""
    dot = name.rfind(b".")
    return name[:dot] if dot > 0 else name


def extension(name: bytes) -> bytes:
    """The last extension without its dot (b"" when none)."""
    dot = name.rfind(b".")
    return name[dot + 1 :] if dot > 0 else b""


@dataclass
class Changes:
    """What one backup changed relative to its parent, counted as it walks."""

    files: int = 0  # files in the new snapshot
    parent_files: int | None = None  # files in the parent (None: no parent)
    matched: int = 0  # files with a file of the same name in the parent
    modified: int = 0  # of those, files whose content changed
    emptied: int = 0  # of those, files that were not empty and are now
    renamed: int = 0  # new files that replace a vanished one in place (same stem)
    moved: int = 0  # new files whose content was all in the repository already
    new_bytes: int = 0  # plaintext bytes of new data blobs
    incompressible_bytes: int | None = None  # of those, stored uncompressed (None: unknown)
    renamed_to: Counter[bytes] = field(default_factory=Counter)  # extensions of renamed files

    @property
    def removed(self) -> int:
        """The parent's files not found under the same name (moves subtracted)."""
        if self.parent_files is None:
            return 0
        return max(0, self.parent_files - self.matched - self.moved)

    def directory(
        self, nodes: Iterable[Node | EncodedNode], parent_nodes: Mapping[bytes, Node]
    ) -> None:
        """Count one directory once its entries are decided (``parent_nodes``: the
        parent snapshot's entries of the same directory, already read by the backup)."""
        if not parent_nodes:
            # A new directory: its files are all added, none matched, renamed or emptied
            # (the backup gives some of them encoded: a name and a type only).
            self.files += sum(1 for node in nodes if node.type == "file")
            return
        added: list[Node] = []
        decoded = [n for n in nodes if isinstance(n, Node)]  # all of them with a parent
        for node in decoded:
            if node.type != "file":
                continue
            self.files += 1
            old = parent_nodes.get(node.name)
            if old is None or old.type != "file":
                added.append(node)
                continue
            self.matched += 1
            if node.content != old.content:
                self.modified += 1
            if old.size > 0 and node.size == 0:
                self.emptied += 1
        if not added:
            return
        present = {n.name for n in decoded}
        gone: dict[bytes, list[Node]] = {}  # by name and by stem
        for name, old in parent_nodes.items():
            if old.type == "file" and name not in present:
                gone.setdefault(name, []).append(old)
                if _stem(name) != name:
                    gone.setdefault(_stem(name), []).append(old)
        for node in added:
            # a.txt -> a.txt.locked, or a.txt -> a.locked; a pure rename (same
            # content) is a user's doing, not counted
            stem = _stem(node.name)
            olds = gone.get(stem, []) if stem != node.name else []
            if olds and all(node.content != old.content for old in olds):
                self.renamed += 1
                self.renamed_to[extension(node.name)] += 1

    def as_doc(self) -> dict[str, Any]:
        """The snapshot's ``changes`` map (spec §12.1): integers, and the most common
        extension of renamed files (text; bytes that are not UTF-8 as \\xNN)."""
        doc: dict[str, Any] = {
            "files": self.files,
            "modified": self.modified,
            "emptied": self.emptied,
            "renamed": self.renamed,
            "moved": self.moved,
            "new_bytes": self.new_bytes,
        }
        if self.parent_files is not None:
            doc["parent_files"] = self.parent_files
            doc["removed"] = self.removed
        if self.incompressible_bytes is not None:
            doc["incompressible_bytes"] = self.incompressible_bytes
        if self.renamed_to:
            ext, n = max(self.renamed_to.items(), key=lambda p: (p[1], p[0]))
            doc["renamed_to"] = ext.decode("utf-8", "backslashreplace")
            doc["renamed_to_count"] = n
        return doc


def figures(doc: Mapping[str, Any], kind: str) -> tuple[int, int] | None:
    """(count, total) of ``kind`` in a ``changes`` map; None when it does not say."""
    if kind == "incompressible":
        count, total = doc.get("incompressible_bytes"), doc.get("new_bytes")
    else:
        count, total = doc.get(kind), doc.get("parent_files")
    if not isinstance(count, int) or not isinstance(total, int) or total <= 0:
        return None
    return count, total


@dataclass(frozen=True)
class Anomaly:
    """One kind of change far outside the history."""

    kind: str
    count: int
    total: int
    baseline: float | None  # the history's share (None: no history of this kind)
    threshold: float  # the share that would have been flagged
    extension: str | None = None  # renamed: the most common new extension

    @property
    def share(self) -> float:
        """count / total."""
        return self.count / self.total if self.total > 0 else 0.0

    @property
    def message(self) -> str:
        """What was unusual, with its counts, in one line."""
        pct = f"{self.share:.0%}"
        usual = f"; usually {self.baseline:.0%}" if self.baseline is not None else ""
        if self.kind == "incompressible":
            return (
                f"{self.count / MIB:.1f} MiB of {self.total / MIB:.1f} MiB new data ({pct}) "
                f"did not compress, as encrypted or random data does{usual}"
            )
        what = {
            "modified": "had their content changed",
            "removed": "are gone",
            "renamed": "were replaced by a file of another extension with new content",
            "emptied": "were emptied",
        }.get(self.kind)
        if what is None:  # a kind of a newer cas (spec §12.1: readers accept any)
            return f"{self.kind}: {self.count} of {self.total} ({pct})"
        text = f"{self.count} of the parent's {self.total} files ({pct}) {what}{usual}"
        if self.kind == "renamed" and self.extension is not None:
            text += f" (most common new extension: *.{self.extension})"
        return text

    def as_doc(self) -> dict[str, Any]:
        """The entry stored in the snapshot's ``anomalies`` list (spec §12)."""
        doc: dict[str, Any] = {"kind": self.kind, "count": self.count, "total": self.total}
        if self.extension is not None:
            doc["extension"] = self.extension
        return doc


def detect(
    changes: Mapping[str, Any], history: Sequence[Mapping[str, Any]], t: Thresholds
) -> list[Anomaly]:
    """The kinds of change in ``changes`` (a ``changes`` map) far outside ``history``
    (the ``changes`` maps of earlier unflagged snapshots, newest last)."""
    if not t.enabled:
        return []
    recent = list(history)[-t.history :] if t.history > 0 else []
    found = []
    for kind in KINDS:
        now = figures(changes, kind)
        if now is None:
            continue
        count, total = now
        minimum = t.min_bytes if kind == "incompressible" else t.min_files
        if count < max(minimum, 1):
            continue
        if kind == "incompressible" and not (recent and _rewritten(changes, t)):
            # A first backup's data is the baseline; new photos or archives are not
            # an anomaly: incompressible data counts when it replaces existing files.
            continue
        past = [f for f in (figures(h, kind) for h in recent) if f is not None]
        baseline = sum(c for c, _ in past) / sum(n for _, n in past) if past else None
        threshold = max(t.share_of(kind), (baseline or 0.0) + t.margin)
        if count / total < threshold:
            continue
        ext = changes.get("renamed_to") if kind == "renamed" else None
        found.append(
            Anomaly(kind, count, total, baseline, threshold, ext if isinstance(ext, str) else None)
        )
    return found


def _rewritten(changes: Mapping[str, Any], t: Thresholds) -> bool:
    """Whether enough of the parent's files were modified or removed."""
    total = changes.get("parent_files")
    touched = sum(
        v for v in (changes.get("modified"), changes.get("removed")) if isinstance(v, int)
    )
    return isinstance(total, int) and total > 0 and touched >= max(t.min_files, t.rewritten * total)


def stored(doc: Mapping[str, Any]) -> Anomaly:
    """An ``anomalies`` entry as read from a snapshot (figures only, no history)."""
    ext = doc.get("extension")
    return Anomaly(
        str(doc["kind"]),
        int(doc["count"]),
        int(doc["total"]),
        None,
        0.0,
        ext if isinstance(ext, str) else None,
    )


def file_count(snap: Snapshot) -> int:
    """The files of a snapshot: its ``changes`` say, else its summary (older cas)."""
    changes = snap.changes or {}
    if isinstance(changes.get("files"), int):
        return int(changes["files"])
    s = snap.summary
    keys = ("files_new", "files_changed", "files_unchanged")
    return sum(v for v in (s.get(k) for k in keys) if isinstance(v, int))


def history_of(snapshots: Iterable[Snapshot]) -> list[Mapping[str, Any]]:
    """The ``changes`` of the unflagged snapshots among ``snapshots`` (oldest first): a
    flagged backup never becomes the measure of what is usual."""
    return [s.changes for s in snapshots if s.changes is not None and not s.anomalies]
