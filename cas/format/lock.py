"""Lock files under ``locks/`` (spec/format.md §13).

A lock file is a document sealed under the index key (AD "cas.lock.v1")
saying who holds a lock on the repository, whether it is exclusive, and
when it was created or last refreshed.  It is sealed rather than plain so
that someone with read access to the storage alone learns neither the
host names nor the user names of those who use the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cas import crypto
from cas.errors import FormatError
from cas.format.codec import field, open_document, seal_document

LOCK_AD = b"cas.lock.v1"


@dataclass(frozen=True)
class LockInfo:
    """The content of one lock file."""

    hostname: str
    username: str
    pid: int
    time_ns: int  # wall-clock time of creation or of the last refresh
    exclusive: bool
    command: str
    started_ns: int = 0  # when the holder first took the lock; 0 if unknown (treated as old)


def encode_lock(
    info: LockInfo, lock_key: crypto.Sealer | bytes, nonce: bytes | None = None
) -> bytes:
    """Serialise and seal a lock file (``nonce`` only for test vectors)."""
    doc: dict[str, Any] = {
        "v": 1,
        "hostname": info.hostname,
        "username": info.username,
        "pid": info.pid,
        "time": info.time_ns,
        "exclusive": info.exclusive,
        "command": info.command,
        "started": info.started_ns,
    }
    return seal_document(lock_key, LOCK_AD, doc, nonce)


def decode_lock(raw: bytes, lock_key: crypto.Sealer | bytes) -> LockInfo:
    """Authenticate and parse a lock file; raises only cas errors."""
    what = "lock file"
    d = open_document(lock_key, LOCK_AD, raw, what)
    pid = field(d, "pid", int, what)
    # Lockers probe the holder with kill(pid, 0); 0 and negative numbers would
    # address process groups (-1: every process), so they are refused here.
    if pid <= 0:
        raise FormatError(what=what, detail=f"invalid pid {pid}")
    return LockInfo(
        hostname=field(d, "hostname", str, what),
        username=field(d, "username", str, what),
        pid=pid,
        time_ns=field(d, "time", int, what),
        exclusive=field(d, "exclusive", bool, what),
        command=field(d, "command", str, what),
        started_ns=field(d, "started", int, what) if "started" in d else 0,
    )
