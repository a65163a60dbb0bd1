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


GENERATION_PREFIX = f"{INDEX}/gen-"


def generation_name(n: int) -> str:
    """``index/gen-<n as 16 hex digits>``: fixed width, so names sort as numbers do.
    Not a 64-digit ID, so readers of index files pass it over (§2.4)."""
    return f"{GENERATION_PREFIX}{n:016x}"


def generation_from_name(name: str) -> int | None:
    """The generation number of a generation record's name, or None."""
    if not name.startswith(GENERATION_PREFIX):
        return None
    digits = name[len(GENERATION_PREFIX) :]
    if len(digits) != 16 or digits != digits.lower():
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None
