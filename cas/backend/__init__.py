"""Storage backends: where a repository's objects live.

``open_backend`` turns a location as the user types it into a backend:

- ``s3://bucket/prefix``  -> :class:`cas.backend.s3.S3Backend`
- ``memory://name``       -> :class:`cas.backend.memory.MemoryBackend` (shared by name, for tests)
- ``file:///path`` or a plain path -> :class:`cas.backend.local.LocalBackend`

and wraps it in the decorators every command wants: retries for S3
(:mod:`cas.backend.retry`) and request accounting for all
(:mod:`cas.backend.accounting`).  The concrete backends are imported only
when needed, so that commands on a local repository do not pay for
importing boto3.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any
from urllib.parse import urlsplit

from cas.backend.base import Backend, ObjectInfo, ReadBackend
from cas.errors import BackendError, UsageError

__all__ = [
    "Backend",
    "ObjectInfo",
    "ReadBackend",
    "check_name",
    "check_prefix",
    "create_bucket",
    "find_layer",
    "open_backend",
    "request_summary",
    "storage_class",
]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
CHECKSUMS_ENV = "CAS_S3_CHECKSUMS"
STORAGE_CLASS_ENV = "CAS_S3_STORAGE_CLASS"


def open_backend(
    location: str,
    *,
    s3_endpoint: str | None = None,
    s3_path_style: bool = False,
    s3_checksums: str | None = None,
    s3_storage_class: str | None = None,
    prices_file: str | None = None,
    retry: bool = True,
) -> Backend:
    """Return the backend for ``location``, ready for a command to use.

    S3 locations get an :class:`~cas.backend.s3.S3Backend` wrapped in a
    :class:`~cas.backend.retry.RetryBackend` and an
    :class:`~cas.backend.accounting.AccountingBackend` that counts the HTTP
    requests actually sent; local and memory locations are wrapped in an
    AccountingBackend that counts operations (priced at zero).  The S3
    options apply to ``s3://`` locations only: ``s3_checksums`` is
    "when_supported" or "when_required" (default: $CAS_S3_CHECKSUMS, else
    $AWS_REQUEST_CHECKSUM_CALCULATION, else "when_supported");
    ``s3_storage_class`` (default: $CAS_S3_STORAGE_CLASS) is the storage
    class of data packs, e.g. STANDARD_IA or GLACIER_IR; the price
    table comes from ``prices_file`` or the user's config (see
    :func:`cas.backend.accounting.load_prices`).

    Raises UsageError for a location that names no backend (an unknown scheme
    or an ``s3://`` location without a bucket) and for bad options.
    """
    from cas.backend.accounting import AccountingBackend, PriceTable, load_prices

    match = _SCHEME.match(location)
    scheme = match.group(1).lower() if match else ""
    rest = location[match.end() :] if match else location
    if scheme == "s3":
        from cas.backend.accounting import RequestMeter
        from cas.backend.retry import RetryBackend
        from cas.backend.s3 import S3Backend

        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"no bucket in S3 location {location!r} (expected s3://bucket/prefix)")
        checksums = _checksum_mode(s3_checksums)
        cold_class = _storage_class(s3_storage_class)
        prices = load_prices(prices_file)
        if _is_loopback(s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")):
            prices = prices.without_egress()
        meter = RequestMeter()
        s3 = S3Backend(
            bucket,
            prefix,
            endpoint_url=s3_endpoint,
            path_style=s3_path_style,
            checksums=checksums,
            meter=meter,
            storage_class=cold_class,
        )
        inner: Backend = RetryBackend(s3) if retry else s3
        return AccountingBackend(inner, meter=meter, prices=prices, count_operations=False)
    backend: Backend
    if scheme == "memory":
        from cas.backend.memory import MemoryBackend

        backend = MemoryBackend(rest)
    elif scheme in ("", "file"):
        from cas.backend.local import LocalBackend

        if not rest:
            raise UsageError(f"no path in location {location!r}")
        backend = LocalBackend(os.path.expanduser(rest))
    else:
        # A typo such as "sftp://host/x" must not quietly become a local
        # directory named "sftp:" under the current directory.
        raise UsageError(
            f"unsupported location {location!r}: use a path, file://, s3:// or memory://"
        )
    return AccountingBackend(backend, prices=PriceTable.free())


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


def _checksum_mode(option: str | None) -> str:
    from cas.backend.s3 import CHECKSUM_MODES, DEFAULT_CHECKSUMS

    for source, value in (
        ("--s3-checksums", option),
        (CHECKSUMS_ENV, os.environ.get(CHECKSUMS_ENV)),
        ("AWS_REQUEST_CHECKSUM_CALCULATION", os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION")),
    ):
        if value:
            mode = value.strip().lower()
            if mode not in CHECKSUM_MODES:
                raise UsageError(f"{source}={value!r}: expected {' or '.join(CHECKSUM_MODES)}")
            return mode
    return DEFAULT_CHECKSUMS


def _storage_class(option: str | None) -> str | None:
    from cas.backend.s3 import normalize_storage_class

    for source, value in (
        ("--storage-class", option),
        (STORAGE_CLASS_ENV, os.environ.get(STORAGE_CLASS_ENV)),
    ):
        if value:
            try:
                return normalize_storage_class(value)
            except BackendError as err:
                raise UsageError(f"{source}: {err.fields.get('detail') or err}") from None
    return None


def _is_loopback(endpoint: str | None) -> bool:
    """Whether an endpoint URL names this machine (downloads from it cost nothing)."""
    if not endpoint:
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
