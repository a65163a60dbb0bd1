"""Compare what the independent reader rebuilt with a source tree, read with ``os`` only."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from tests.independent.repository import (
    LocalStore,
    Rebuilt,
    RepositoryView,
    S3Store,
    read_repository,
)

PASSWORD = b"test-password"

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}


def read_local(root: str | Path, password: bytes = PASSWORD) -> RepositoryView:
    """The whole local repository at ``root``, read and verified independently of cas."""
    return read_repository(LocalStore(root), password)


def s3_store(endpoint: str, bucket: str, prefix: str) -> S3Store:
    """``s3://bucket/prefix`` of a loopback S3 server (credentials from the environment)."""
    client = boto3.client(
        "s3", endpoint_url=endpoint, config=BotoConfig(s3={"addressing_style": "path"})
    )
    return S3Store(client, bucket, prefix)


def read_s3(endpoint: str, bucket: str, prefix: str, password: bytes = PASSWORD) -> RepositoryView:
    """The whole repository under ``s3://bucket/prefix``, read and verified independently."""
    return read_repository(s3_store(endpoint, bucket, prefix), password)


def manifest(entries: dict[bytes, Rebuilt]) -> dict[str, tuple[Any, ...]]:
    """The shape of tests/test_crash.py's manifests: path -> (kind, content or target, mode)."""
    out: dict[str, tuple[Any, ...]] = {}
    for path, e in entries.items():
        rel = os.fsdecode(path)
        if e.type == "dir":
            out[rel] = ("dir", e.node["mode"])
        elif e.type == "symlink":
            out[rel] = ("symlink", os.fsdecode(e.node["target"]))
        else:
            out[rel] = ("file", e.sha256, e.node["mode"])
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _xattrs(path: Path) -> list[list[bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    return sorted([os.fsencode(n), os.getxattr(path, n, follow_symlinks=False)] for n in names)


def differences(entries: dict[bytes, Rebuilt], src: Path, times: bool = True) -> list[str]:
    """Every way the rebuilt entries differ from the tree at ``src`` now (empty: identical).

    Compared: the set of names, type, permission bits, owner, size, content,
    symlink target, device number, link count, xattrs and (with ``times``)
    the modification time; not atime and ctime, which reading and restoring move.
    """
    found: dict[bytes, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            found[os.fsencode(path.relative_to(src))] = path.lstat()
    out = [f"only in the snapshot: {p!r}" for p in sorted(set(entries) - set(found))]
    out += [f"only in the source: {p!r}" for p in sorted(set(found) - set(entries))]
    for rel in sorted(set(entries) & set(found)):
        node, st, path = entries[rel].node, found[rel], src / os.fsdecode(rel)
        want: dict[str, Any] = {
            "type": _KINDS[stat.S_IFMT(st.st_mode)],
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "links": st.st_nlink,
            "xattrs": _xattrs(path),
        }
        got: dict[str, Any] = {
            "type": node["type"],
            "mode": node["mode"],
            "uid": node["uid"],
            "gid": node["gid"],
            "links": node.get("links", 1),
            "xattrs": sorted(node.get("xattrs", [])),
        }
        if times:
            want["mtime_ns"], got["mtime_ns"] = st.st_mtime_ns, node["mtime_ns"]
        if want["type"] in ("file", "symlink"):
            want["size"], got["size"] = st.st_size, node["size"]
        if want["type"] == "file":
            want["sha256"], got["sha256"] = _sha256(path), entries[rel].sha256
        if want["type"] == "symlink":
            want["target"], got["target"] = os.readlink(os.fsencode(path)), node["target"]
        if want["type"] in ("chardev", "blockdev"):
            want["rdev"], got["rdev"] = st.st_rdev, node.get("rdev", 0)
        out += [
            f"{rel!r} {key}: snapshot {got[key]!r}, source {want[key]!r}"
            for key in want
            if got[key] != want[key]
        ]
    return out


def assert_snapshot_is(view: RepositoryView, sid: str, src: Path, times: bool = True) -> None:
    """Snapshot ``sid`` holds the tree at absolute path ``src`` as it is now."""
    diff = differences(view.snapshots[sid].below(src), src, times)
    assert not diff, diff[:20]


def assert_every_snapshot_is(view: RepositoryView, expected: dict[str, Any], src: Path) -> None:
    """Each snapshot of ``expected`` (ID -> manifest) rebuilds to its manifest below ``src``;
    the repository holds no other snapshot."""
    assert set(view.snapshots) == set(expected), (set(view.snapshots), set(expected))
    for sid, want in expected.items():
        assert manifest(view.snapshots[sid].below(src)) == want, sid
