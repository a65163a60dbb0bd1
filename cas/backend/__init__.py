"""Storage backends: where a repository's objects live.

``open_backend`` turns a location as the user types it into a backend:

- ``s3://bucket/prefix``  -> :class:`cas.backend.s3.S3Backend`
- ``memory://name``       -> :class:`cas.backend.memory.MemoryBackend` (shared by name, for tests)
- ``file:///path`` or a plain path -> :class:`cas.backend.local.LocalBackend`

The concrete backends are imported only when needed, so that commands on a
local repository do not pay for importing boto3.
"""

from __future__ import annotations

import os
import re

from cas.backend.base import Backend, ObjectInfo, ReadBackend
from cas.errors import BackendError, UsageError

__all__ = ["Backend", "ObjectInfo", "ReadBackend", "check_name", "check_prefix", "open_backend"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_backend(
    location: str, *, s3_endpoint: str | None = None, s3_path_style: bool = False
) -> Backend:
    """Return the backend for ``location``; the S3 options apply to ``s3://`` locations only.

    Raises UsageError for a location that names no backend (an unknown scheme
    or an ``s3://`` location without a bucket).
    """
    match = _SCHEME.match(location)
    scheme = match.group(1).lower() if match else ""
    rest = location[match.end() :] if match else location
    if scheme == "s3":
        from cas.backend.s3 import S3Backend

        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"no bucket in S3 location {location!r} (expected s3://bucket/prefix)")
        return S3Backend(bucket, prefix, endpoint_url=s3_endpoint, path_style=s3_path_style)
    if scheme == "memory":
        from cas.backend.memory import MemoryBackend

        return MemoryBackend(rest)
    if scheme in ("", "file"):
        from cas.backend.local import LocalBackend

        if not rest:
            raise UsageError(f"no path in location {location!r}")
        return LocalBackend(os.path.expanduser(rest))
    # A typo such as "sftp://host/x" must not quietly become a local directory
    # named "sftp:" under the current directory.
    raise UsageError(f"unsupported location {location!r}: use a path, file://, s3:// or memory://")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid object name, else raise BackendError.

    A name is one or more non-empty components joined by "/", none starting
    with "." (which rules out "." and ".." escaping a local root, and keeps
    names apart from the local backend's hidden temporary files), and without
    backslashes or NUL bytes.  Every backend enforces the same rule, so a name
    that works in memory also works on disk and on S3.
    """
    if not isinstance(name, str) or not name:
        raise BackendError(f"invalid object name {name!r}: empty")
    if "\\" in name or "\x00" in name:
        raise BackendError(f"invalid object name {name!r}: contains a backslash or NUL")
    for part in name.split("/"):
        if not part or part.startswith("."):
            raise BackendError(
                f"invalid object name {name!r}: empty component or component starting with '.'"
            )
    return name


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is "" (meaning everything) or a valid name; else BackendError."""
    return prefix if prefix == "" else check_name(prefix)
