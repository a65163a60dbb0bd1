"""Backend fixtures: the same test runs against memory, a local directory and two S3 servers.

``backend`` is a fresh, created backend of each kind; ``uncreated_backend``
one whose directory, store or bucket does not exist.  The kinds:

- ``memory`` and ``local``;
- ``decorated``: memory inside the retry and accounting decorators, which
  must not change what a backend does;
- ``s3-moto`` and ``s3-seaweed``: S3 over HTTP to moto's server and to
  SeaweedFS, both on 127.0.0.1.  moto is lenient and SeaweedFS strict
  (signatures, digests), so between them they catch both our bugs and the
  requests only a real store refuses.

Tests that need only some kinds can call ``make_backend`` themselves; tests
of S3 specifics take ``s3_target``, which is each of the two servers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cas.backend import Backend
from cas.backend.accounting import AccountingBackend
from cas.backend.local import LocalBackend
from cas.backend.memory import MemoryBackend
from cas.backend.retry import RetryBackend
from cas.backend.s3 import S3Backend
from tests.support.s3server import make_s3_client

if TYPE_CHECKING:
    # Not imported at run time: pytest_plugins below loads the module, and
    # importing it first would keep pytest from rewriting its asserts.
    from tests.support.seaweed import SeaweedServer

pytest_plugins = ["tests.support.seaweed"]

S3_SERVERS = [
    pytest.param("moto", id="moto", marks=pytest.mark.s3),
    pytest.param("seaweed", id="seaweed", marks=pytest.mark.s3),
]
BACKEND_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("local", id="local"),
    pytest.param("decorated", id="decorated"),
    pytest.param("s3-moto", id="s3-moto", marks=pytest.mark.s3),
    pytest.param("s3-seaweed", id="s3-seaweed", marks=pytest.mark.s3),
]


@dataclass(frozen=True)
class S3Target:
    """Where an S3 test may write: a server, a bucket of its own (for the test) and a prefix."""

    server: str  # "moto" or "seaweed"
    endpoint: str
    bucket: str
    prefix: str

    def backend(self, **options: Any) -> S3Backend:
        """An S3Backend for this bucket and prefix (path-style, as both servers want)."""
        options.setdefault("path_style", True)
        return S3Backend(self.bucket, self.prefix, endpoint_url=self.endpoint, **options)

    def client(self, **config: Any) -> Any:
        """A boto3 client for looking behind a backend's back."""
        config.setdefault("s3", {"addressing_style": "path"})
        return make_s3_client(self.endpoint, **config)

    def key(self, name: str) -> str:
        """The S3 key of object ``name``."""
        return f"{self.prefix}/{name}" if self.prefix else name


def s3_target(server: str, request: pytest.FixtureRequest) -> S3Target:
    """Fresh room on ``server``: a new bucket on moto, a new prefix in a shared SeaweedFS bucket.

    The S3 servers are started only when an S3 backend is asked for, so
    runs without S3 tests (``-m 'not s3'``) never start them.
    """
    if server == "moto":
        endpoint = request.getfixturevalue("s3_server")
        return S3Target("moto", endpoint, request.getfixturevalue("s3_bucket"), "repo")
    if server == "seaweed":
        seaweed: SeaweedServer = request.getfixturevalue("seaweed_server")
        prefix = f"t-{uuid.uuid4().hex[:16]}/repo"
        return S3Target("seaweed", seaweed.endpoint, seaweed.bucket, prefix)
    raise ValueError(f"unknown S3 server {server!r}")


def s3_endpoint(server: str, request: pytest.FixtureRequest) -> str:
    """The endpoint of ``server`` ("moto" or "seaweed"), starting it if need be."""
    if server == "moto":
        endpoint: str = request.getfixturevalue("s3_server")
        return endpoint
    seaweed: SeaweedServer = request.getfixturevalue("seaweed_server")
    return seaweed.endpoint


def make_backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A new backend of ``kind`` whose location does not exist yet (call ``create()``)."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "local":
        return LocalBackend(tmp_path / "repo")
    if kind == "decorated":
        return AccountingBackend(RetryBackend(MemoryBackend(), sleep=_no_sleep))
    if kind.startswith("s3-"):
        # A prefix, so every conformance test also checks the key mapping.
        return s3_target(kind.removeprefix("s3-"), request).backend()
    raise ValueError(f"unknown backend kind {kind!r}")


@pytest.fixture(params=S3_SERVERS)
def s3_any(request: pytest.FixtureRequest) -> S3Target:
    """Room on each S3 server in turn: moto, then SeaweedFS."""
    return s3_target(request.param, request)


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
    if request.param.startswith("s3-"):
        endpoint = s3_endpoint(request.param.removeprefix("s3-"), request)
        missing = S3Backend(
            f"cas-missing-{uuid.uuid4().hex[:16]}", "repo", endpoint_url=endpoint, path_style=True
        )
    else:
        missing = make_backend(request.param, request, tmp_path)
    yield missing
    missing.close()


def _no_sleep(seconds: float) -> None:
    """Retries in tests never wait."""
