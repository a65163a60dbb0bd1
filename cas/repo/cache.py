"""A local, size-bounded cache of immutable repository objects.

Every object cached is content-named (its name is the SHA-256 of its
bytes), so an entry is either exactly right or detectably wrong: ``get``
re-hashes what it reads and drops a damaged entry.  Entries are written
atomically (temporary file, then rename) and evicted least recently used
first when the cache grows past its bound.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from cas.errors import CasError
from cas.ids import new_sha256, storage_id

_PIECE = 1 << 20  # bytes hashed at a time by open_verified

DEFAULT_MAX_BYTES = 2 << 30


def default_cache_root() -> Path:
    """$CAS_CACHE_DIR, else $XDG_CACHE_HOME/cas, else ~/.cache/cas."""
    env = os.environ.get("CAS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cas"


def cache_dir_for(location: str, root: Path | None = None) -> Path:
    """The cache directory of one repository location."""
    digest = storage_id(location.encode()).hex()[:20]
    return (root or default_cache_root()) / f"repo-{digest}"


class LocalCache:
    """Objects by (kind, hex id) under one directory."""

    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._written = 0

    def _path(self, kind: str, object_id: bytes) -> Path:
        return self.dir / kind / object_id.hex()

    def get(self, kind: str, object_id: bytes) -> bytes | None:
        """The cached bytes, or None (also for an entry that no longer hashes right)."""
        path = self._path(kind, object_id)
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        return data if self._judged(path, storage_id(data) == object_id) else None

    def open_verified(self, kind: str, object_id: bytes) -> int | None:
        """A read-only descriptor of the cached object, once its bytes hash to its ID
        (read in pieces: the object is never whole in memory), or None (also for an
        entry that no longer hashes right: removed).  The caller closes it."""
        path = self._path(kind, object_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.misses += 1
            return None
        try:
            digest = new_sha256()
            buf = bytearray(_PIECE)
            with memoryview(buf) as view:
                while got := os.readv(fd, [buf]):
                    digest.update(view[:got])
            good = digest.digest() == object_id
        except OSError:
            good = False
        if not self._judged(path, good):
            os.close(fd)
            return None
        return fd

    def _judged(self, path: Path, good: bool) -> bool:
        """Count a hit (and mark the entry recent) or, for an entry that no longer
        hashes right, a miss (and remove it); returns ``good``."""
        if not good:
            with contextlib.suppress(OSError):
                path.unlink()
            self.misses += 1
            return False
        with contextlib.suppress(OSError):
            os.utime(path)  # recency for eviction
        self.hits += 1
        return True

    def put(self, kind: str, object_id: bytes, data: bytes | bytearray) -> None:
        """Store an object; failures (full disk, permissions) only cost the cache."""
        self.put_pieces(kind, object_id, (data,))

    def put_pieces(
        self, kind: str, object_id: bytes, pieces: Iterable[bytes | bytearray | memoryview]
    ) -> None:
        """Store an object given in pieces, one piece in memory at a time; failures
        (full disk, permissions, a piece that cannot be read) only cost the cache."""
        path = self._path(kind, object_id)
        size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    for piece in pieces:
                        f.write(piece)
                        size += len(piece)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            os.replace(tmp, path)
        except (OSError, CasError):
            return
        with self._lock:
            self._written += size
            due = self._written > self.max_bytes // 8
            if due:
                self._written = 0
        if due:
            self.evict()

    def note(self, name: str) -> str | None:
        """A small note kept beside the objects (``last-key``: the key file that opened
        last), or None.  A note is a hint only: a wrong one costs time, never safety."""
        try:
            return (self.dir / "notes" / name).read_text(encoding="ascii")[:200]
        except (OSError, UnicodeDecodeError):
            return None

    def set_note(self, name: str, text: str) -> None:
        """Write a note (atomically); failures only cost the hint."""
        path = self.dir / "notes" / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{name}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text)
            os.replace(tmp, path)
        except OSError:
            return

    def remove(self, kind: str, object_id: bytes) -> None:
        """Forget an object (deleted from the repository)."""
        with contextlib.suppress(OSError):
            self._path(kind, object_id).unlink()

    def keep_only(self, kind: str, ids: set[bytes]) -> None:
        """Drop cached objects of ``kind`` that the repository no longer lists."""
        try:
            entries = list((self.dir / kind).iterdir())
        except OSError:
            return
        wanted = {i.hex() for i in ids}
        for p in entries:
            if p.name not in wanted:
                with contextlib.suppress(OSError):
                    p.unlink()

    def evict(self) -> None:
        """Remove least recently used entries until the cache fits its bound."""
        files = []
        for p in self.dir.rglob("*"):
            with contextlib.suppress(OSError):
                st = p.stat()
                if p.is_file():
                    files.append((st.st_mtime, st.st_size, p))
        total = sum(f[1] for f in files)
        for _, size, p in sorted(files):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                p.unlink()
                total -= size
