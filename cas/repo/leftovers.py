"""Leftovers of interrupted uploads, which a backend's ordinary listing hides.

A local write that died between creating its hidden temporary file and
renaming it leaves ``.tmp-*`` behind; an S3 multipart upload that was never
completed or aborted keeps its parts (and costs money) without being listed
as an object.  Neither is ever read, so they are harmless for correctness:
``check`` reports them and ``prune`` removes those old enough that no upload
can still be running (:data:`MIN_AGE`).

Backends find and abort their own leftovers (the optional
:class:`~cas.backend.base.LeftoverUploads` protocol, passed on by every
decorator); a backend without it has none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cas.backend.base import (
    Backend,
    ReadBackend,
    UnfinishedUpload,
    abort_leftover,
    list_leftovers,
)

# Younger uploads may belong to a command still running: cas writes every
# object in one request, so an hour is far beyond any upload in progress.
MIN_AGE = 3600.0


@dataclass(frozen=True)
class Leftover:
    """One unfinished upload: where it is, its size if known, and its age in seconds."""

    name: str
    size: int | None
    age: float | None
    upload: UnfinishedUpload = field(compare=False, repr=False)


def find_leftovers(backend: ReadBackend, now: float | None = None) -> list[Leftover]:
    """Every leftover of ``backend``, by name; BackendError if they cannot be listed."""
    now = time.time() if now is None else now
    found = [
        Leftover(
            u.describe(),
            u.size,
            None if u.started is None else max(0.0, now - u.started),
            u,
        )
        for u in list_leftovers(backend)
    ]
    return sorted(found, key=lambda x: x.name)


def remove_leftovers(backend: Backend, min_age: float = MIN_AGE, now: float | None = None) -> int:
    """Abort the leftovers older than ``min_age`` seconds; return how many.

    One of unknown age is left alone: it may be an upload in progress.
    """
    removed = 0
    for lo in find_leftovers(backend, now):
        if lo.age is not None and lo.age >= min_age:
            abort_leftover(backend, lo.upload)
            removed += 1
    return removed
