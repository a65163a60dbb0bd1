"""Storage backends: where a repository's objects live.

Backends register by URL scheme (:mod:`cas.backend.registry`); the ones
registered here are:

- ``s3://bucket/prefix``  -> :class:`cas.backend.s3.S3Backend` (:mod:`cas.backend.s3_location`)
- ``memory://name``       -> :class:`cas.backend.memory.MemoryBackend` (shared by name, for tests)
- ``file:///path`` or a plain path -> :class:`cas.backend.local.LocalBackend`

Each comes wrapped in the decorators it wants: retries for S3
(:mod:`cas.backend.retry`) and request accounting for all
(:mod:`cas.backend.accounting`).  A new backend is one module with a
``FACTORY`` and one line below.
"""

from __future__ import annotations

from cas.backend import local, memory, s3_location
from cas.backend.base import Backend, ObjectInfo, ReadBackend, check_name, check_prefix
from cas.backend.registry import BackendFactory, open_backend, register, split_location
from cas.backend.s3_location import S3Options
from cas.backend.stack import create_bucket, find_layer, request_summary, storage_class

__all__ = [
    "Backend",
    "BackendFactory",
    "ObjectInfo",
    "ReadBackend",
    "S3Options",
    "check_name",
    "check_prefix",
    "create_bucket",
    "find_layer",
    "open_backend",
    "register",
    "request_summary",
    "split_location",
    "storage_class",
]

for _factory in (local.FACTORY, s3_location.FACTORY, memory.FACTORY):
    register(_factory)
