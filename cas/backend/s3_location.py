"""What an ``s3://bucket/prefix`` location means: its options and its decorated backend.

The options come from the command line or the environment; the backend is an
:class:`~cas.backend.s3.S3Backend` inside a
:class:`~cas.backend.retry.RetryBackend` inside an
:class:`~cas.backend.accounting.AccountingBackend` that counts the HTTP
requests actually sent.  boto3 is imported only when an S3 location is
opened, so commands on a local repository do not pay for it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from cas.backend.base import Backend
from cas.backend.registry import BackendFactory
from cas.errors import BackendError, TransientBackendError, UsageError

CHECKSUMS_ENV = "CAS_S3_CHECKSUMS"
STORAGE_CLASS_ENV = "CAS_S3_STORAGE_CLASS"


@dataclass(frozen=True)
class S3Options:
    """Options of ``s3://`` locations.

    ``endpoint``: the endpoint URL of an S3-compatible store (else boto3's
    default, which honours $AWS_ENDPOINT_URL); ``path_style``: path-style
    addressing; ``checksums``: "when_supported" or "when_required" (default:
    $CAS_S3_CHECKSUMS, else $AWS_REQUEST_CHECKSUM_CALCULATION, else
    "when_supported"); ``storage_class`` (default: $CAS_S3_STORAGE_CLASS): the
    storage class of data packs, e.g. STANDARD_IA or GLACIER_IR;
    ``prices_file``: the price table (else the user's config, see
    :func:`cas.backend.accounting.load_prices`); ``retry``: retry transient
    failures (tests turn it off); ``on_retry``: told of each retry as it
    happens (see :class:`~cas.backend.retry.RetryBackend`; not for helper
    processes, which cannot call back).
    """

    endpoint: str | None = None
    path_style: bool = False
    checksums: str | None = None
    storage_class: str | None = None
    prices_file: str | None = None
    retry: bool = True
    on_retry: Callable[[str, int, float, TransientBackendError], None] | None = None


def open_s3(location: str, rest: str, options: S3Options) -> Backend:
    """The decorated backend of ``s3://`` + ``rest``; UsageError without a bucket."""
    from cas.backend.accounting import AccountingBackend, RequestMeter, load_prices
    from cas.backend.retry import RetryBackend
    from cas.backend.s3 import S3Backend

    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"no bucket in S3 location {location!r} (expected s3://bucket/prefix)")
    checksums = _checksum_mode(options.checksums)
    cold_class = _storage_class(options.storage_class)
    prices = load_prices(options.prices_file)
    if _is_loopback(options.endpoint or os.environ.get("AWS_ENDPOINT_URL")):
        prices = prices.without_egress()
    meter = RequestMeter()
    s3 = S3Backend(
        bucket,
        prefix,
        endpoint_url=options.endpoint,
        path_style=options.path_style,
        checksums=checksums,
        meter=meter,
        storage_class=cold_class,
    )
    inner: Backend = RetryBackend(s3, on_retry=options.on_retry) if options.retry else s3
    return AccountingBackend(inner, meter=meter, prices=prices, count_operations=False)


FACTORY = BackendFactory(("s3",), S3Options, open_s3, "s3://")


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
