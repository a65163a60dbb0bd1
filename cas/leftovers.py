"""Leftovers of interrupted uploads, which a backend's ordinary listing hides.

A local write that died between creating its hidden temporary file and
renaming it leaves ``.tmp-*`` behind; an S3 multipart upload that was never
completed or aborted keeps its parts (and costs money) without being listed
as an object.  Neither is ever read, so they are harmless for correctness,
but ``check`` reports them.

A backend may provide ``list_leftovers()`` itself (the :class:`LeftoverLister`
protocol).  Until the backends do, this module knows how to look behind the
local and S3 backends (through decorators that expose ``inner``); any other
backend reports none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .backend.base import ReadBackend
from .errors import BackendError

LOCAL_TEMP_PREFIX = ".tmp-"  # cas.backend.local writes its temporary files under this prefix


@dataclass(frozen=True)
class Leftover:
    """One unfinished upload: where it is, its size if known, and its age in seconds."""

    name: str
    size: int | None
    age: float | None


@runtime_checkable
class LeftoverLister(Protocol):
    """A backend that can list its own leftovers."""

    def list_leftovers(self) -> Iterator[Leftover]: ...


def find_leftovers(backend: ReadBackend, now: float | None = None) -> list[Leftover]:
    """Every leftover of ``backend``, by name; BackendError if they cannot be listed."""
    now = time.time() if now is None else now
    # Look through decorators (retry, accounting) to the storage itself.
    while not isinstance(backend, LeftoverLister) and hasattr(backend, "inner"):
        backend = backend.inner
    if isinstance(backend, LeftoverLister):
        found = list(backend.list_leftovers())
    else:
        from .backend.local import LocalBackend  # cheap; s3 is recognised by module name

        if isinstance(backend, LocalBackend):
            found = list(_local_temp_files(Path(backend.location), now))
        elif type(backend).__module__ == "cas.backend.s3":
            found = list(_s3_multipart_uploads(backend, now))
        else:
            found = []
    return sorted(found, key=lambda x: x.name)


def _local_temp_files(root: Path, now: float) -> Iterator[Leftover]:
    def fail(err: OSError) -> None:
        raise BackendError(f"cannot list {err.filename}: {err.strerror}")

    for directory, _dirs, files in os.walk(root, onerror=fail):
        for name in files:
            if not name.startswith(LOCAL_TEMP_PREFIX):
                continue
            path = Path(directory) / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue  # its write just finished
            yield Leftover(path.relative_to(root).as_posix(), st.st_size, now - st.st_mtime)


def _s3_multipart_uploads(backend: Any, now: float) -> Iterator[Leftover]:
    # Reaches into S3Backend's client until it lists its own uploads.
    client = backend._client
    prefix = str(getattr(backend, "_prefix", ""))
    root = f"{prefix}/" if prefix else ""
    try:
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=backend.bucket, Prefix=root):
            for upload in page.get("Uploads", ()):
                key = str(upload["Key"])[len(root) :]
                started = upload.get("Initiated")
                age = now - started.timestamp() if started is not None else None
                yield Leftover(f"{key} (multipart upload {upload['UploadId']})", None, age)
    except Exception as e:  # botocore's errors; keep boto3 out of this module's imports
        raise BackendError(f"cannot list multipart uploads: {e}") from None
