"""Request and cost accounting: what a command cost at the storage provider.

A :class:`RequestMeter` counts requests by kind (PUT, GET, HEAD, LIST,
DELETE) and bytes up and down; a :class:`PriceTable` turns the counts into
an estimate in US dollars.  Who fills the meter depends on the backend:

- :class:`cas.backend.s3.S3Backend` records every HTTP request its botocore
  client actually sends (a botocore event hook), so a LIST of three pages is
  three LISTs, a write that does HEAD then PUT is two requests, and retried
  requests are each counted: that is what the provider bills.
- For other backends :class:`AccountingBackend` counts protocol operations
  (a read is one GET, a write one PUT, a listing one LIST).

``AccountingBackend`` is the decorator the command line finds with
:func:`request_summary` to report a command's requests.

The default prices are AWS S3 Standard in us-east-1 (as listed on
aws.amazon.com/s3/pricing): $0.005 per 1,000 PUT, COPY, POST and LIST
requests, $0.0004 per 1,000 GET and HEAD requests, DELETE free, $0.023 per
GB-month stored, uploads free, and $0.09 per GB downloaded to the internet
(the first 100 GB a month across an AWS account are free, and downloads to
EC2 in the same region cost nothing: neither is modelled).  A GB is 2**30
bytes, as AWS bills it.  Repositories on a loopback endpoint, a local
directory or in memory are priced at zero.  Override the table with
``$XDG_CONFIG_HOME/cas/prices.toml`` (or ``prices.json``), see
:func:`load_prices`.
"""

from __future__ import annotations

import json
import math
import os
import threading
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

from cas.backend.base import (
    Backend,
    ObjectInfo,
    UnfinishedUpload,
    abort_leftover,
    list_leftovers,
    write_file,
)
from cas.errors import UsageError

REQUEST_KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")
GB = 1 << 30
# AWS list prices in us-east-1 for the colder storage classes, as (dollars
# per 1,000 PUT requests, dollars per GB-month).  Not modelled: retrieval
# fees per GB read (STANDARD_IA and ONEZONE_IA $0.01, GLACIER_IR $0.03),
# minimum storage durations (30, 30, 90, 90 and 180 days), the 128 KiB
# minimum billable object size of the IA and GLACIER_IR classes, and
# INTELLIGENT_TIERING's monitoring fee.
STORAGE_CLASS_PRICES: dict[str, tuple[float, float]] = {
    "STANDARD_IA": (0.01, 0.0125),
    "ONEZONE_IA": (0.01, 0.01),
    "INTELLIGENT_TIERING": (0.005, 0.023),
    "GLACIER_IR": (0.02, 0.004),
    "GLACIER": (0.03, 0.0036),
    "DEEP_ARCHIVE": (0.05, 0.00099),
}


@dataclass(frozen=True)
class PriceTable:
    """Prices in US dollars; the defaults are S3 Standard in us-east-1."""

    put_per_1000: float = 0.005
    list_per_1000: float = 0.005
    get_per_1000: float = 0.0004
    head_per_1000: float = 0.0004
    delete_per_1000: float = 0.0
    upload_per_gb: float = 0.0
    egress_per_gb: float = 0.09
    storage_gb_month: float = 0.023

    @classmethod
    def free(cls) -> PriceTable:
        """Every price zero: local directories, memory, loopback servers."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "prices") -> PriceTable:
        """The defaults overridden by ``values``; unknown keys and non-numbers are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"{source}: unknown price {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        prices: dict[str, float] = {}
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{source}: {key} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"{source}: {key} must be a non-negative number")
            prices[key] = float(value)
        return replace(cls(), **prices)

    def without_egress(self) -> PriceTable:
        """The same table with downloads free (a store on this machine or network)."""
        return replace(self, egress_per_gb=0.0)

    def request_price(self, kind: str) -> float:
        """Dollars per 1,000 requests of ``kind``."""
        per_1000: float = getattr(self, f"{kind.lower()}_per_1000")
        return per_1000

    def cost(self, counts: Mapping[str, int], bytes_up: int, bytes_down: int) -> float:
        """Dollars for these requests and transfers (storage is billed separately)."""
        requests = sum(counts.get(k, 0) * self.request_price(k) / 1000 for k in REQUEST_KINDS)
        transfer = bytes_up / GB * self.upload_per_gb + bytes_down / GB * self.egress_per_gb
        return requests + transfer

    def storage_cost(self, stored_bytes: int, months: float = 1.0) -> float:
        """Dollars to keep ``stored_bytes`` for ``months``."""
        return stored_bytes / GB * self.storage_gb_month * months

    def as_dict(self) -> dict[str, float]:
        """The table as a plain dict, in the config file's keys."""
        return asdict(self)

    def for_storage_class(self, storage_class: str | None) -> PriceTable:
        """This table for objects stored in ``storage_class`` (cold data packs).

        For one of AWS's colder classes (:data:`STORAGE_CLASS_PRICES`) the PUT
        and storage prices become AWS's list prices for that class, unless
        this table charges nothing for storage (a local or free store); any
        other class, or none, leaves the table as it is.
        """
        cold = STORAGE_CLASS_PRICES.get(storage_class or "")
        if cold is None or self.storage_gb_month == 0:
            return self
        return replace(self, put_per_1000=cold[0], storage_gb_month=cold[1])


def prices_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/cas/prices.toml`` (``~/.config`` when XDG_CONFIG_HOME is unset)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "cas" / "prices.toml"


def load_prices(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> PriceTable:
    """The price table from ``path``, else from the user's config file, else the defaults.

    Without ``path``, ``prices.toml`` in ``$XDG_CONFIG_HOME/cas`` is read, or
    ``prices.json`` beside it; neither existing means the defaults.  A file
    holds any subset of the keys of :class:`PriceTable` at the top level,
    in dollars; the rest keep their defaults.  A file that cannot be read
    or parsed raises UsageError: a wrong estimate must not pass silently.
    """
    if path is None:
        toml_path = prices_path(env)
        candidates = [toml_path, toml_path.with_suffix(".json")]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            return PriceTable()
        path = found
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read price table {path}: {err.strerror}") from None
    try:
        parse = json.loads if path.suffix == ".json" else _parse_toml
        values = parse(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot parse price table {path}: {err}") from None
    if not isinstance(values, dict):
        raise UsageError(f"price table {path} must be a table of name = price")
    return PriceTable.from_mapping(values, str(path))


def _parse_toml(text: bytes) -> Any:
    return tomllib.loads(text.decode("utf-8"))


class RequestMeter:
    """Thread-safe counts of requests by kind and of bytes sent and received."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REQUEST_KINDS, 0)
        self._bytes_up = 0
        self._bytes_down = 0

    def record(self, kind: str, bytes_up: int = 0, bytes_down: int = 0) -> None:
        """Count one request of ``kind`` (one of REQUEST_KINDS) and its payload."""
        if kind not in self._counts:
            raise ValueError(f"unknown request kind {kind!r}")
        with self._lock:
            self._counts[kind] += 1
            self._bytes_up += bytes_up
            self._bytes_down += bytes_down

    def add_bytes(self, bytes_up: int = 0, bytes_down: int = 0) -> None:
        """Count payload bytes of a request already recorded."""
        with self._lock:
            self._bytes_up += bytes_up
            self._bytes_down += bytes_down

    def counts(self) -> dict[str, int]:
        """Requests by kind plus ``bytes_up`` and ``bytes_down``, as of now."""
        with self._lock:
            return {**self._counts, "bytes_up": self._bytes_up, "bytes_down": self._bytes_down}

    def summary(self, prices: PriceTable) -> dict[str, Any]:
        """:meth:`counts` plus ``estimated_cost_usd`` under ``prices``."""
        counts = self.counts()
        cost = prices.cost(counts, counts["bytes_up"], counts["bytes_down"])
        return {**counts, "estimated_cost_usd": round(cost, 10)}

    def reset(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counts = dict.fromkeys(REQUEST_KINDS, 0)
            self._bytes_up = self._bytes_down = 0


class AccountingBackend:
    """A backend decorator that owns a meter and a price table.

    With ``count_operations`` (the default) every protocol call is counted
    as one request; pass the meter of a backend that counts its real
    requests itself (S3) with ``count_operations=False``, so nothing is
    counted twice.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        meter: RequestMeter | None = None,
        prices: PriceTable | None = None,
        count_operations: bool = True,
    ) -> None:
        self._inner = inner
        self.meter = meter if meter is not None else RequestMeter()
        self.prices = prices if prices is not None else PriceTable()
        self._count = count_operations

    @property
    def inner(self) -> Backend:
        """The wrapped backend."""
        return self._inner

    @property
    def location(self) -> str:
        """The wrapped backend's location."""
        return self._inner.location

    def summary(self) -> dict[str, Any]:
        """Requests by kind, bytes up and down, and the estimated cost in dollars."""
        return self.meter.summary(self.prices)

    def create(self) -> None:
        """Prepare the location (not counted: a directory or bucket check)."""
        self._inner.create()

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data`` as ``name``; one PUT."""
        if self._count:
            self.meter.record("PUT", bytes_up=len(data))
        self._inner.write(name, data, cold=cold)

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Store ``size`` bytes of ``file`` as ``name``; one PUT."""
        if self._count:
            self.meter.record("PUT", bytes_up=size)
        write_file(self._inner, name, file, size, cold=cold)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read (a range of) ``name``; one GET."""
        if not self._count:
            return self._inner.read(name, offset, length)
        try:
            data = self._inner.read(name, offset, length)
        except Exception:
            self.meter.record("GET")
            raise
        self.meter.record("GET", bytes_down=len(data))
        return data

    def stat(self, name: str) -> ObjectInfo:
        """The size of ``name``; one HEAD."""
        if self._count:
            self.meter.record("HEAD")
        return self._inner.stat(name)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The objects under ``prefix``; one LIST per call."""
        if self._count:
            self.meter.record("LIST")
        return self._inner.list(prefix)

    def delete(self, name: str) -> None:
        """Remove ``name``; one DELETE."""
        if self._count:
            self.meter.record("DELETE")
        self._inner.delete(name)

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """The wrapped backend's unfinished uploads; one LIST."""
        if self._count:
            self.meter.record("LIST")
        return list_leftovers(self._inner)

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Abort an unfinished upload; one DELETE."""
        if self._count:
            self.meter.record("DELETE")
        abort_leftover(self._inner, upload)

    def close(self) -> None:
        """Close the wrapped backend."""
        self._inner.close()
