"""Request and cost accounting: prices, the price file, and counts that match the wire.

The S3 counts are checked against an independent tally of the HTTP requests
botocore's HTTP session really sent, on both S3 servers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cas.backend import S3Options, open_backend, request_summary
from cas.backend.accounting import (
    GB,
    AccountingBackend,
    PriceTable,
    RequestMeter,
    load_prices,
    prices_path,
)
from cas.backend.memory import MemoryBackend
from cas.backend.s3 import S3Backend
from cas.errors import ObjectExists, UsageError
from tests.support.backends import S3Target

NAME = "data/ab/ab01"
KINDS = ("PUT", "GET", "HEAD", "LIST", "DELETE")


def counts(summary: dict[str, Any]) -> dict[str, int]:
    return {k: summary[k] for k in KINDS if summary[k]}


# -- prices ----------------------------------------------------------------------------------


def test_default_prices_are_s3_standard_us_east_1() -> None:
    prices = PriceTable()
    assert prices.cost({"PUT": 1000}, 0, 0) == pytest.approx(0.005)
    assert prices.cost({"LIST": 1000}, 0, 0) == pytest.approx(0.005)
    assert prices.cost({"GET": 1000, "HEAD": 1000}, 0, 0) == pytest.approx(0.0008)
    assert prices.cost({"DELETE": 10**6}, 0, 0) == 0
    assert prices.cost({}, bytes_up=100 * GB, bytes_down=0) == 0
    assert prices.cost({}, bytes_up=0, bytes_down=10 * GB) == pytest.approx(0.9)
    assert prices.storage_cost(100 * GB) == pytest.approx(2.3)
    assert PriceTable.free().cost({"PUT": 10**6}, GB, GB) == 0
    assert PriceTable().without_egress().cost({}, 0, GB) == 0


def test_price_file_toml(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        "# Backblaze B2-like\nput_per_1000 = 0\nlist_per_1000 = 0.004\n"
        "get_per_1000 = 0.0004\nstorage_gb_month = 0.006\negress_per_gb = 0.01\n"
    )
    prices = load_prices(path)
    assert prices.put_per_1000 == 0
    assert prices.list_per_1000 == 0.004
    assert prices.head_per_1000 == PriceTable().head_per_1000  # not in the file: default
    assert prices.storage_gb_month == 0.006


def test_price_file_json_and_xdg_lookup(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert prices_path(env) == tmp_path / "cas" / "prices.toml"
    assert load_prices(env=env) == PriceTable()  # no file: defaults
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "prices.json").write_text(json.dumps({"egress_per_gb": 0}))
    assert load_prices(env=env).egress_per_gb == 0
    (tmp_path / "cas" / "prices.toml").write_text("egress_per_gb = 0.05\n")
    assert load_prices(env=env).egress_per_gb == 0.05  # TOML wins


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("put_per_1000 = -1\n", "non-negative"),
        ("put_per_thousand = 1\n", "unknown price put_per_thousand"),
        ('put_per_1000 = "cheap"\n', "must be a number"),
        ("put_per_1000 = true\n", "must be a number"),
        ("put_per_1000 = \n", "cannot parse"),
    ],
)
def test_bad_price_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_prices(path)


def test_unreadable_price_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read price table"):
        load_prices(tmp_path / "absent.toml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="must be a table"):
        load_prices(tmp_path / "list.json")


# -- counting operations ------------------------------------------------------------------


def test_meter_summary() -> None:
    meter = RequestMeter()
    for _ in range(2000):
        meter.record("PUT", bytes_up=10)
    meter.record("GET", bytes_down=GB)
    summary = meter.summary(PriceTable())
    assert summary == {
        "PUT": 2000,
        "GET": 1,
        "HEAD": 0,
        "LIST": 0,
        "DELETE": 0,
        "bytes_up": 20000,
        "bytes_down": GB,
        "estimated_cost_usd": pytest.approx(0.01 + 0.0000004 + 0.09),
    }
    with pytest.raises(ValueError):
        meter.record("POST")
    meter.reset()
    assert meter.counts()["PUT"] == 0


def test_accounting_counts_operations_of_other_backends() -> None:
    memory = MemoryBackend()
    memory.create()
    backend = AccountingBackend(memory, prices=PriceTable())
    backend.write(NAME, b"0123456789")
    backend.write(NAME, b"0123456789")
    with pytest.raises(ObjectExists):
        backend.write(NAME, b"other")
    assert backend.read(NAME, 2, 3) == b"234"
    backend.stat(NAME)
    assert len(list(backend.list("data"))) == 1
    backend.delete(NAME)
    summary = backend.summary()
    assert counts(summary) == {"PUT": 3, "GET": 1, "HEAD": 1, "LIST": 1, "DELETE": 1}
    assert summary["bytes_up"] == 25
    assert summary["bytes_down"] == 3
    expected = 4 * 0.005 / 1000 + 2 * 0.0004 / 1000 + 3 / GB * 0.09
    assert summary["estimated_cost_usd"] == pytest.approx(expected, rel=1e-4)


def test_request_summary_of_a_local_repository(tmp_path: Path) -> None:
    backend = open_backend(str(tmp_path / "repo"))
    backend.create()
    backend.write("config", b"c")
    backend.read("config")
    summary = request_summary(backend)
    assert summary is not None
    assert counts(summary) == {"PUT": 1, "GET": 1}
    assert summary["estimated_cost_usd"] == 0
    assert "retries" not in summary
    assert request_summary(MemoryBackend()) is None


def test_loopback_endpoints_cost_no_egress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))

    def prices(endpoint: str | None) -> PriceTable:
        backend = open_backend("s3://bucket/p", [S3Options(endpoint=endpoint)])
        assert isinstance(backend, AccountingBackend)
        return backend.prices

    assert prices("http://127.0.0.1:9000").egress_per_gb == 0
    assert prices("http://localhost:9000").egress_per_gb == 0
    assert prices("http://[::1]:9000").egress_per_gb == 0
    assert prices("https://s3.example.com").egress_per_gb == 0.09
    assert prices(None) == PriceTable()
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "prices.toml").write_text("put_per_1000 = 0.01\n")
    assert prices(None).put_per_1000 == 0.01
    price_file = tmp_path / "other.json"
    price_file.write_text('{"get_per_1000": 1}')
    backend = open_backend("s3://bucket/p", [S3Options(prices_file=str(price_file))])
    assert isinstance(backend, AccountingBackend)
    assert backend.prices.get_per_1000 == 1


# -- counting what S3 really sends ---------------------------------------------------------


class WireTally:
    """Counts the HTTP requests botocore's HTTP session sends, by method and operation."""

    def __init__(self, backend: S3Backend) -> None:
        self.sent: list[tuple[str, str]] = []
        session = backend._client._endpoint.http_session
        real_send = session.send

        def send(request: Any) -> Any:
            query = request.url.partition("?")[2]
            self.sent.append((request.method, "list" if "list-type" in query else ""))
            return real_send(request)

        session.send = send

    def kinds(self) -> dict[str, int]:
        """The requests as the price list groups them."""
        found: Counter[str] = Counter()
        for method, what in self.sent:
            found["LIST" if what == "list" else "PUT" if method == "POST" else method] += 1
        return dict(found)


def metered(target: S3Target, **options: Any) -> tuple[S3Backend, RequestMeter, WireTally]:
    meter = RequestMeter()
    backend = target.backend(meter=meter, **options)
    return backend, meter, WireTally(backend)


def meter_counts(meter: RequestMeter) -> dict[str, int]:
    return {k: v for k, v in meter.counts().items() if k in KINDS and v}


@pytest.mark.s3
def test_s3_counts_every_http_request(s3_any: S3Target) -> None:
    backend, meter, wire = metered(s3_any)
    backend.create()  # HeadBucket
    backend.write(NAME, b"x" * 1000)  # conditional PUT
    backend.write(NAME, b"x" * 1000)  # PUT (412), then HEAD and GET to compare
    assert backend.read(NAME, 10, 20) == b"x" * 20  # ranged GET
    backend.stat(NAME)  # HEAD
    assert len(list(backend.list("data"))) == 1  # one page
    backend.delete(NAME)
    expected = {"HEAD": 3, "PUT": 2, "GET": 2, "LIST": 1, "DELETE": 1}
    assert meter_counts(meter) == expected
    assert wire.kinds() == expected
    assert meter.counts()["bytes_up"] == 2000
    assert meter.counts()["bytes_down"] == 1000 + 20


@pytest.mark.s3
def test_s3_counts_head_and_put_without_conditional_writes(s3_any: S3Target) -> None:
    backend, meter, wire = metered(s3_any, conditional_writes=False)
    backend.write(NAME, b"y")
    assert meter_counts(meter) == wire.kinds() == {"HEAD": 1, "PUT": 1}


@pytest.mark.s3
def test_s3_counts_each_page_of_a_listing(s3_any: S3Target) -> None:
    backend, meter, wire = metered(s3_any)
    for i in range(5):
        backend.write(f"data/ab/{i}", b"z")
    # Two keys a page, so five objects take three LIST requests.
    backend._client.meta.events.register(
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: params.update(MaxKeys=2)
    )
    meter.reset()
    wire.sent.clear()
    assert len(list(backend.list("data"))) == 5
    assert meter_counts(meter) == wire.kinds() == {"LIST": 3}


@pytest.mark.s3
def test_request_summary_through_open_backend(s3_any: S3Target) -> None:
    backend = open_backend(
        f"s3://{s3_any.bucket}/{s3_any.prefix}",
        [S3Options(endpoint=s3_any.endpoint, path_style=True)],
    )
    backend.create()
    backend.write(NAME, b"data")
    backend.read(NAME)
    summary = request_summary(backend)
    assert summary is not None
    assert counts(summary) == {"HEAD": 1, "PUT": 1, "GET": 1}
    assert summary["bytes_up"] == 4 and summary["bytes_down"] == 4
    assert summary["retries"] == 0
    # Loopback: no egress charge, requests at S3 Standard prices.
    assert summary["estimated_cost_usd"] == pytest.approx(0.005 / 1000 + 2 * 0.0004 / 1000)
    backend.close()
