"""Backend fixtures: the same test runs against memory, a local directory and S3 over HTTP.

``backend`` is a fresh, created backend of each kind; ``uncreated_backend``
one whose directory, store or bucket does not exist.  Tests that need only
some kinds can call ``make_backend`` themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas.backend import Backend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.s3 import S3Backend

BACKEND_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("local", id="local"),
    pytest.param("s3", id="s3", marks=pytest.mark.s3),
]


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A new backend of ``kind`` whose location does not exist yet (call ``create()``).

    The S3 server is started only when an S3 backend is asked for, so runs
    without S3 tests (``-m 'not s3'``) never start it.
    """
    if kind == "memory":
        return MemoryBackend()
    if kind == "local":
        return LocalBackend(tmp_path / "repo")
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        # A prefix, so every conformance test also checks the key mapping.
        return S3Backend(bucket, "repo", endpoint_url=endpoint, path_style=True)
    raise ValueError(f"unknown backend kind {kind!r}")


@pytest.fixture(params=BACKEND_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh backend of each kind, created and empty."""
    created = make_backend(request.param, request, tmp_path)
    created.create()
    yield created
    created.close()


@pytest.fixture(params=BACKEND_KINDS)
def uncreated_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A backend of each kind whose location was never created (for S3: no such bucket)."""
    missing: Backend
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_server")
        missing = S3Backend(f"cas-missing-{uuid.uuid4().hex[:16]}", "repo", endpoint_url=endpoint)
    else:
        missing = make_backend(request.param, request, tmp_path)
    yield missing
    missing.close()
