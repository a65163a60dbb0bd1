"""Object names inside a repository (spec/format.md §2); the same on disk and on S3."""

from __future__ import annotations

CONFIG = "config"
KEYS = "keys"
LOCKS = "locks"
SNAPSHOTS = "snapshots"
INDEX = "index"
DATA = "data"

DIRECTORIES = (KEYS, LOCKS, SNAPSHOTS, INDEX, DATA)


def key_name(file_id: bytes) -> str:
    """``keys/<hex>``"""
    return f"{KEYS}/{file_id.hex()}"


def lock_name(file_id: bytes) -> str:
    """``locks/<hex>``"""
    return f"{LOCKS}/{file_id.hex()}"


def snapshot_name(file_id: bytes) -> str:
    """``snapshots/<hex>``"""
    return f"{SNAPSHOTS}/{file_id.hex()}"


def index_name(file_id: bytes) -> str:
    """``index/<hex>``"""
    return f"{INDEX}/{file_id.hex()}"


def pack_name(pack_id: bytes) -> str:
    """``data/<first two hex digits>/<hex>``: 256 fan-out directories keep listings small."""
    h = pack_id.hex()
    return f"{DATA}/{h[:2]}/{h}"


def id_from_name(name: str) -> bytes | None:
    """The ID encoded in an object's last path element, or None if it is not a 64-digit hex ID."""
    last = name.rsplit("/", 1)[-1]
    if len(last) != 64 or last != last.lower():
        return None
    try:
        return bytes.fromhex(last)
    except ValueError:
        return None
