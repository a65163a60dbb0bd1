"""Questions asked of a decorated backend: which layers it has and what they counted."""

from __future__ import annotations

from typing import Any

from cas.backend.base import Backend, ReadBackend
from cas.errors import UsageError


def find_layer(backend: ReadBackend, kind: type[Any]) -> Any:
    """The first of ``backend`` and the backends it wraps (via ``.inner``) that is a ``kind``."""
    layer: Any = backend
    for _ in range(16):  # decorators nest a few deep; never loop on a cycle
        if isinstance(layer, kind):
            return layer
        layer = getattr(layer, "inner", None)
        if layer is None:
            break
    return None


def request_summary(backend: Backend) -> dict[str, Any] | None:
    """Requests by kind, bytes and estimated cost so far, or None if nothing counts them.

    The dict has the keys PUT, GET, HEAD, LIST, DELETE, bytes_up,
    bytes_down, estimated_cost_usd and, when the backend retries, retries
    (how many requests were sent again after a transient failure).
    """
    from cas.backend.accounting import AccountingBackend
    from cas.backend.retry import RetryBackend

    accounting = find_layer(backend, AccountingBackend)
    if accounting is None:
        return None
    summary: dict[str, Any] = accounting.summary()
    retrying = find_layer(backend, RetryBackend)
    if retrying is not None:
        summary["retries"] = retrying.retries
    return summary


def storage_class(backend: ReadBackend) -> str | None:
    """The storage class ``backend`` gives data packs; None for the store's default (STANDARD)."""
    from cas.backend.s3 import S3Backend

    s3 = find_layer(backend, S3Backend)
    if s3 is None:
        return None
    cold: str | None = s3.storage_class
    return cold


def create_bucket(backend: Backend) -> None:
    """Create the S3 bucket behind ``backend`` (for ``init --create-bucket``).

    A bucket that exists and is ours is fine.  Raises UsageError for a
    backend that is not S3.
    """
    from cas.backend.s3 import S3Backend

    s3 = find_layer(backend, S3Backend)
    if s3 is None:
        raise UsageError(f"--create-bucket applies to s3:// repositories, not {backend.location}")
    s3.create_bucket()
