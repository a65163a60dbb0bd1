"""How ``ls``, ``find`` and ``diff`` show snapshot entries: one line each for people,
one JSON object each for programs (restic's node objects, with raw names kept)."""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from cas.backup import anomaly
from cas.browse.nav import Entry
from cas.cli.common import human_bytes, iso_ns
from cas.format.snapshot import Snapshot
from cas.format.tree import TYPE_BITS, Node


def split_ref(text: str) -> tuple[str, bytes]:
    """``ID[:/path]`` -> (snapshot reference, path inside it, ``b"/"`` when none)."""
    ref, _, sub = text.partition(":")
    return ref, os.fsencode(sub) if sub else b"/"


def inside(base: bytes, path: bytes) -> bytes:
    """A PATH argument inside ``SNAPSHOT:/base``: absolute as given, relative below base."""
    return path if path.startswith(b"/") else base.rstrip(b"/") + b"/" + path


def path_text(path: bytes) -> str:
    """A path on one line for people: not UTF-8 bytes as ``\\xNN``, control characters
    (a newline in a name) as escapes, and a backslash doubled so neither is ambiguous."""
    text = path.decode("utf-8", "backslashreplace")
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    raw = path.decode("utf-8", "surrogateescape")
    for ch in raw:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def json_path(path: bytes, key: str = "path") -> dict[str, str]:
    """``{key: text}`` (undecodable bytes as ``\\xNN``), plus ``key_hex`` with the raw
    bytes in hex when the path is not UTF-8, so no name is lost or confused."""
    try:
        return {key: path.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: path.decode("utf-8", "backslashreplace"), f"{key}_hex": path.hex()}


def st_mode(node: Node) -> int:
    """The node's type and permission bits as ``st_mode``."""
    return TYPE_BITS.get(node.type, 0) | (node.mode & 0o7777)


def owner(node: Node) -> tuple[str, str]:
    """User and group: the names recorded at backup, else the numeric ids."""
    return (node.user or str(node.uid), node.group or str(node.gid))


def long_line(entry: Entry, human: bool = False) -> str:
    """``-rw-r--r-- user group size mtime path [-> target]`` (``ls -l``'s columns)."""
    node = entry.node
    if node is None:  # the snapshot's root
        return f"{'drwxr-xr-x':10} {'-':>8} {'-':>8} {'-':>10} {'-':19} /"
    user, group = owner(node)
    if node.type in ("chardev", "blockdev"):
        size = f"{os.major(node.rdev)},{os.minor(node.rdev)}"
    else:
        size = human_bytes(node.size) if human else str(node.size)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(node.mtime_ns // 1_000_000_000))
    line = (
        f"{stat.filemode(st_mode(node))} {user:>8} {group:>8} {size:>10} {when} "
        f"{path_text(entry.path)}"
    )
    if node.target is not None:
        line += f" -> {path_text(node.target)}"
    return line


def node_doc(entry: Entry) -> dict[str, Any]:
    """restic's ``ls --json`` node object, with cas's extra fields."""
    node = entry.node
    doc: dict[str, Any] = {"message_type": "node", "struct_type": "node"}
    doc.update(json_path(entry.path))
    if node is None:
        doc.update(name="/", type="dir")
        return doc
    doc.update(json_path(node.name, "name"))
    user, group = owner(node)
    doc.update(
        type=node.type,
        mode=st_mode(node),
        permissions=stat.filemode(st_mode(node)),
        uid=node.uid,
        gid=node.gid,
        user=user,
        group=group,
        size=node.size,
        links=node.links,
        inode=node.inode,
        device_id=node.device,
        mtime=iso_ns(node.mtime_ns),
        atime=iso_ns(node.atime_ns),
        ctime=iso_ns(node.ctime_ns),
        mtime_ns=node.mtime_ns,
        atime_ns=node.atime_ns,
        ctime_ns=node.ctime_ns,
    )
    if node.subtree is not None:
        doc["subtree"] = node.subtree.hex()  # what find --tree looks for
    if node.target is not None:
        doc.update(json_path(node.target, "link_target"))
    if node.type in ("chardev", "blockdev"):
        doc["rdev"] = node.rdev
    if node.xattrs:
        doc["xattrs"] = [k.decode("utf-8", "backslashreplace") for k, _ in node.xattrs]
    if node.flags:
        doc["flags"] = node.flags
    return doc


def snapshot_doc(sid: bytes, snap: Snapshot, **extra: Any) -> dict[str, Any]:
    """A snapshot in JSON, the same in every command (``snapshots``, the first line of
    ``ls``, ``find``'s groups, ``forget``'s plan): ``id``, RFC 3339 UTC ``time`` with
    its integer ``time_ns``, and ``extra`` (``message_type``, ``reasons`` ...)."""
    doc: dict[str, Any] = {
        "id": sid.hex(),
        "short_id": sid.hex()[:8],
        "time": iso_ns(snap.time_ns),
        "time_ns": snap.time_ns,
        "tree": snap.tree.hex(),
        "paths": [p.decode("utf-8", "backslashreplace") for p in snap.paths],
        "hostname": snap.hostname,
        "username": snap.username,
        "tags": list(snap.tags),
        "parent": snap.parent.hex() if snap.parent else None,
        "program": snap.program,
        "summary": snap.summary,
        "anomalies": [anomaly_doc(anomaly.stored(a)) for a in snap.anomalies],
    }
    doc.update(extra)
    return doc


def anomaly_doc(a: anomaly.Anomaly, *, judged: bool = False) -> dict[str, Any]:
    """An unusual change in JSON: ``kind``, ``message`` and its figures; ``judged`` (the
    backup that found it): with the history's share and the threshold."""
    doc: dict[str, Any] = {
        "kind": a.kind,
        "message": a.message,
        "count": a.count,
        "total": a.total,
        "share": round(a.share, 4),
    }
    if judged:
        doc["baseline"] = None if a.baseline is None else round(a.baseline, 4)
        doc["threshold"] = round(a.threshold, 4)
    if a.extension is not None:
        doc["extension"] = a.extension
    return doc


def local_time(ns: int) -> str:
    """``2026-12-06 16:40:00`` in local time, for people."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns // 1_000_000_000))
