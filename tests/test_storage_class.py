"""Storage classes: data packs go to the configured class, everything else stays STANDARD.

The ``cold`` hint travels from the repository (data packs only) through
every decorator to the S3 backend, which sends ``StorageClass``; moto and
SeaweedFS both record it (head_object and listings show it).  moto also
refuses to read a GLACIER object, as AWS does, which proves that browsing
and incremental backups never touch a data pack.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from cas.backend import S3Options, open_backend, storage_class
from cas.backend.accounting import STORAGE_CLASS_PRICES, AccountingBackend, PriceTable
from cas.backend.faulty import FaultyBackend
from cas.backend.memory import MemoryBackend
from cas.backend.retry import RetryBackend
from cas.backend.s3 import normalize_storage_class
from cas.crypto import BlobType
from cas.errors import BackendError, UsageError
from cas.repo import open_repository
from cas.repo.cache import LocalCache
from cas.repo.caching import CachingBackend
from tests.support.backends import S3Target
from tests.support.cli import Result, run_cas
from tests.support.repos import PASSWORD, new_repo, populate


class Recording(MemoryBackend):
    """Remembers the ``cold`` hint of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.cold: dict[str, bool] = {}

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        super().write(name, data, cold=cold)
        self.cold[name] = cold


# -- naming and configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "wanted"),
    [
        (None, None),
        ("", None),
        ("standard", None),
        ("STANDARD_IA", "STANDARD_IA"),
        (" glacier-ir ", "GLACIER_IR"),
        ("DEEP_ARCHIVE", "DEEP_ARCHIVE"),
        ("COLDLINE", "COLDLINE"),  # another store's own class passes through
    ],
)
def test_storage_class_names_are_normalised(given: str | None, wanted: str | None) -> None:
    assert normalize_storage_class(given) == wanted


@pytest.mark.parametrize("bad", ["standard ia", "IA;x", "9LIVES", "x" * 80])
def test_impossible_storage_class_names_are_refused(bad: str) -> None:
    with pytest.raises(BackendError, match="invalid S3 storage class"):
        normalize_storage_class(bad)


def test_storage_class_comes_from_option_or_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    endpoint = "http://127.0.0.1:9"  # never contacted: opening makes no request
    monkeypatch.setenv("CAS_S3_STORAGE_CLASS", "standard_ia")
    from_env = open_backend("s3://b/p", [S3Options(endpoint=endpoint)])
    assert storage_class(from_env) == "STANDARD_IA"
    option = open_backend("s3://b/p", [S3Options(endpoint=endpoint, storage_class="GLACIER_IR")])
    assert storage_class(option) == "GLACIER_IR"
    assert storage_class(open_backend(str(tmp_path / "local"))) is None
    monkeypatch.setenv("CAS_S3_STORAGE_CLASS", "not a class")
    with pytest.raises(UsageError, match="CAS_S3_STORAGE_CLASS"):
        open_backend("s3://b/p", [S3Options(endpoint=endpoint)])
    monkeypatch.delenv("CAS_S3_STORAGE_CLASS")
    assert storage_class(open_backend("s3://b/p", [S3Options(endpoint=endpoint)])) is None


# -- the hint: repository -> decorators -> backend -----------------------------------------


def test_every_decorator_passes_the_cold_hint_on(tmp_path: Path) -> None:
    inner = Recording()
    inner.create()
    stack = AccountingBackend(
        RetryBackend(CachingBackend(FaultyBackend(inner), LocalCache(tmp_path / "cache")))
    )
    stack.write("data/aa/" + "a" * 64, b"cold", cold=True)
    stack.write("index/" + "b" * 64, b"warm")
    assert inner.cold == {"data/aa/" + "a" * 64: True, "index/" + "b" * 64: False}


def test_repository_writes_only_data_packs_cold() -> None:
    backend = Recording()
    backend.create()
    repo = new_repo(backend, pack_size=1 << 20)
    populate(repo, n_files=24)  # ~3.6 MiB of files: several 1 MiB data packs
    kinds: dict[str, BlobType] = {}
    for fid in repo.index_files():
        for pack_id, entries in repo.read_index_file(fid).packs.items():
            kinds[f"data/{pack_id.hex()[:2]}/{pack_id.hex()}"] = entries[0].type
    assert sorted(kinds.values()).count(BlobType.DATA) > 1  # several data packs
    assert BlobType.TREE in kinds.values()
    for name, cold in backend.cold.items():
        assert cold == (kinds.get(name) == BlobType.DATA), name


def test_prices_for_a_storage_class() -> None:
    aws = PriceTable()
    ia = aws.for_storage_class("STANDARD_IA")
    assert (ia.put_per_1000, ia.storage_gb_month) == STORAGE_CLASS_PRICES["STANDARD_IA"]
    assert ia.get_per_1000 == aws.get_per_1000
    assert aws.for_storage_class(None) == aws
    assert aws.for_storage_class("COLDLINE") == aws  # unknown: the table's own prices
    assert PriceTable.free().for_storage_class("GLACIER_IR") == PriceTable.free()


# -- real servers ----------------------------------------------------------------------------


def _head_class(target: S3Target, name: str) -> str:
    head = target.client().head_object(Bucket=target.bucket, Key=target.key(name))
    return str(head.get("StorageClass") or "STANDARD")  # S3 omits it for STANDARD


@pytest.mark.s3
def test_s3_sends_the_storage_class_for_cold_writes_only(s3_any: S3Target) -> None:
    cold_backend = s3_any.backend(storage_class="STANDARD_IA")
    cold_backend.create()
    cold_backend.write("data/aa/" + "a" * 64, b"pack", cold=True)
    cold_backend.write("index/" + "b" * 64, b"index")
    default = s3_any.backend()
    default.write("data/cc/" + "c" * 64, b"pack", cold=True)
    assert _head_class(s3_any, "data/aa/" + "a" * 64) == "STANDARD_IA"
    assert _head_class(s3_any, "index/" + "b" * 64) == "STANDARD"
    assert _head_class(s3_any, "data/cc/" + "c" * 64) == "STANDARD"
    # A retried cold write of the same bytes is still recognised as done.
    cold_backend.write("data/aa/" + "a" * 64, b"pack", cold=True)


@pytest.mark.s3
def test_s3_store_refuses_an_unknown_class_clearly(s3_any: S3Target) -> None:
    backend = s3_any.backend(storage_class="NO_SUCH_CLASS")
    with pytest.raises(BackendError, match=r"InvalidStorageClass.*NO_SUCH_CLASS"):
        backend.write("data/aa/" + "a" * 64, b"pack", cold=True)


def _tree(root: Path, files: int = 12, seed: int = 3) -> Path:
    """About 4 MiB of incompressible files: a few 1 MiB data packs."""
    rnd = random.Random(seed)
    for i in range(files):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        size = rnd.randrange(200_000, 500_000)
        (root / f"d{i % 3}" / f"f{i}").write_bytes(rnd.randbytes(size))
    return root


def _cli(target: S3Target, endpoint: str, cls: str | None, *args: str | Path) -> Result:
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    if cls:
        env["CAS_S3_STORAGE_CLASS"] = cls
    location = f"s3://{target.bucket}/{target.prefix}"
    result = run_cas("-r", location, "--s3-endpoint", endpoint, "--s3-path-style", *args, env=env)
    assert "Traceback" not in result.err, result.err
    return result


def _classes(target: S3Target) -> dict[str, str]:
    """Object name -> storage class, from the bucket listing."""
    client: Any = target.client()
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=target.bucket, Prefix=target.prefix + "/"
    )
    root = len(target.prefix) + 1
    return {
        o["Key"][root:]: o.get("StorageClass", "STANDARD")
        for page in pages
        for o in page.get("Contents", ())
    }


@pytest.mark.s3
def test_backup_puts_data_packs_in_the_class_and_the_rest_in_standard(
    s3_any: S3Target, tmp_path: Path
) -> None:
    src = _tree(tmp_path / "src")

    def cas(*args: str | Path) -> Result:
        return _cli(s3_any, s3_any.endpoint, "STANDARD_IA", *args)

    assert cas("init", "--pack-size", str(1 << 20)).code == 0
    dry = cas("--json", "backup", "--dry-run", src)
    assert dry.code == 0, dry.err
    estimate = dry.json()["estimate"]
    assert estimate["storage_class"] == "STANDARD_IA"
    result = cas("--json", "backup", src)
    assert result.code == 0, result.err

    repo = open_repository(s3_any.backend(), PASSWORD)
    kinds = {
        f"data/{pid.hex()[:2]}/{pid.hex()}": entries[0].type
        for fid in repo.index_files()
        for pid, entries in repo.read_index_file(fid).packs.items()
    }
    classes = _classes(s3_any)
    data_packs = {n for n, t in kinds.items() if t == BlobType.DATA}
    assert len(data_packs) > 1 and set(kinds) - data_packs  # data and tree packs
    for name, cls in classes.items():
        wanted = "STANDARD_IA" if name in data_packs else "STANDARD"
        assert cls == wanted, (name, cls)
    assert {n.split("/")[0] for n in classes} >= {"config", "keys", "index", "snapshots", "data"}

    # The estimate priced the data packs as STANDARD_IA and the rest as STANDARD.
    ia_put, ia_storage = STORAGE_CLASS_PRICES["STANDARD_IA"]
    gb = 1 << 30
    warm = estimate["bytes_stored"] - estimate["data_pack_bytes"]
    storage = estimate["data_pack_bytes"] / gb * ia_storage + warm / gb * 0.023
    assert estimate["storage_cost_usd_per_month"] == pytest.approx(storage, abs=1e-9)
    assert estimate["upload_cost_usd"] == pytest.approx(
        estimate["data_packs"] * ia_put / 1000
        + (estimate["put_requests"] - estimate["data_packs"]) * 0.005 / 1000,
        abs=1e-9,
    )

    restored = tmp_path / "restored"
    assert cas("restore", "latest", "--target", restored).code == 0
    assert (restored / src.relative_to(src.anchor) / "d0" / "f0").read_bytes() == (
        src / "d0" / "f0"
    ).read_bytes()


@pytest.mark.s3
def test_archived_data_packs_are_never_read_by_incremental_backups(
    s3_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    """moto, like AWS, refuses GET on GLACIER objects: any data pack read would fail."""
    target = S3Target("moto", s3_server, s3_bucket, "repo")
    src = _tree(tmp_path / "src")

    def cas(*args: str | Path) -> Result:
        return _cli(target, s3_server, "GLACIER", "--no-cache", *args)

    assert cas("init").code == 0
    assert cas("backup", src).code == 0
    (src / "d0" / "f0").write_bytes(b"changed")
    (src / "new").write_bytes(os.urandom(200_000))
    second = cas("--json", "backup", src)
    assert second.code == 0, second.err
    summary = second.json()["summary"]
    assert (summary["files_new"], summary["files_changed"], summary["files_unchanged"]) == (
        1,
        1,
        11,
    )
    assert cas("snapshots").code == 0

    restore = cas("restore", "latest", "--target", tmp_path / "restored")
    assert restore.code == 1
    assert "InvalidObjectState" in restore.err and "restore" in restore.err
