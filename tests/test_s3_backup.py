"""A real backup through the CLI against both S3 servers, counted by cas and at the wire.

A ~64 MiB generated tree (incompressible, text-like and low-entropy files
from 3 KB to 3 MiB) is backed up with ``--s3-endpoint`` and path-style
addressing to moto and to SeaweedFS, then checked (``--read-data``) and
restored byte for byte.  Every request goes through a counting reverse proxy
on 127.0.0.1, an independent witness of what cas reports under ``requests``:

- the backup makes at most (bytes stored / pack size) x 1.1 + 20 PUTs, and
  the PUTs, the requests of every kind and the bytes uploaded that cas
  reports are exactly those the proxy saw;
- ``backup --dry-run`` uploads nothing and predicts the PUTs and stored
  bytes of the real backup.

The estimate's sampling (large backups compress only some blobs) is tested
against a real repository in memory.
"""

from __future__ import annotations

import filecmp
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas.backend.accounting import PriceTable
from cas.backend.memory import MemoryBackend
from cas.backup import dryrun
from cas.backup.dryrun import DryRunWriter
from cas.crypto import BlobType
from cas.format.config import DEFAULT_PACK_SIZE
from tests.independent.compare import assert_snapshot_is, read_s3
from tests.support.backends import S3Target
from tests.support.cli import Result, run_cas
from tests.support.repos import new_repo
from tests.support.s3proxy import KINDS, CountingProxy


def build_dataset(root: Path, total: int = 64 << 20, seed: int = 7) -> int:
    """Files of 3 KB to 3 MiB, a quarter incompressible, the rest compressible; returns bytes."""
    rng = random.Random(seed)
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(2000)
    ]
    low_entropy = bytes(b"etaoinshrdlu \n.,-"[i % 17] for i in range(256))
    size = n = 0
    while size < total:
        directory = root / f"d{n % 7}" / f"s{n % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        length = rng.choice([3000, 40_000, 300_000, 1 << 20, 3 << 20])
        if n % 4 == 0:
            data = os.urandom(length)
        elif n % 4 == 1:
            data = b" ".join(rng.choices(words, k=length // 6))[:length]
        else:
            data = os.urandom(length).translate(low_entropy)
        (directory / f"f{n}.bin").write_bytes(data)
        size += len(data)
        n += 1
    return size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset") / "src"
    build_dataset(root)
    return root


@pytest.fixture
def proxy(s3_any: S3Target) -> Iterator[CountingProxy]:
    counting = CountingProxy(s3_any.endpoint)
    yield counting
    counting.close()


def _cas(target: S3Target, endpoint: str, cache: Path, *args: str | Path) -> Result:
    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    env["CAS_CACHE_DIR"] = str(cache)
    location = f"s3://{target.bucket}/{target.prefix}"
    result = run_cas("-r", location, "--s3-endpoint", endpoint, "--s3-path-style", *args, env=env)
    assert "Traceback" not in result.err, result.err
    return result


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.mark.s3
def test_backup_restore_check_round_trip(
    s3_any: S3Target, proxy: CountingProxy, dataset: Path, tmp_path: Path
) -> None:
    def cas(*args: str | Path) -> Result:
        return _cas(s3_any, proxy.endpoint, tmp_path / "cache", *args)

    assert cas("init").code == 0
    proxy.take()

    dry = cas("--json", "backup", "--dry-run", dataset)
    assert dry.code == 0, dry.err
    dry_doc = dry.json()
    seen, _ = proxy.take()
    assert seen["PUT"] == dry_doc["requests"]["PUT"] <= 1  # at most the lock file
    estimate = dry_doc["estimate"]

    backup = cas("--json", "backup", dataset)
    assert backup.code == 0, backup.err
    doc = backup.json()
    seen, seen_up = proxy.take()
    reported = doc["requests"]
    stored = doc["summary"]["data_added_stored"]
    assert reported["PUT"] <= stored / DEFAULT_PACK_SIZE * 1.1 + 20, reported
    # The independent count agrees with what cas reports, kind by kind.
    assert {k: reported[k] for k in KINDS} == seen
    assert reported["bytes_up"] == seen_up
    # The dry run predicted the uploads.
    assert abs(estimate["put_requests"] - reported["PUT"]) <= 1, (estimate, reported)
    assert estimate["data_packs"] + estimate["tree_packs"] == doc["summary"]["packs_written"]
    assert abs(estimate["bytes_stored"] - reported["bytes_up"]) <= 0.01 * reported["bytes_up"]
    assert estimate["upload_cost_usd"] > 0 and estimate["storage_cost_usd_per_month"] > 0

    check = cas("--json", "check", "--read-data")
    assert check.code == 0, check.out + check.err
    assert check.json()["summary"]["errors"] == 0

    target = tmp_path / "restored"
    restore = cas("restore", "latest", "--target", target)
    assert restore.code == 0, restore.err
    assert _same_tree(dataset, target / dataset.relative_to(dataset.anchor))

    # Read by code written from the spec alone, straight from the bucket.
    view = read_s3(s3_any.endpoint, s3_any.bucket, s3_any.prefix)
    assert list(view.snapshots) == [doc["id"]] and not view.unindexed_packs
    assert_snapshot_is(view, doc["id"], dataset)


def _blobs(count: int, seed: int = 5) -> list[bytes]:
    """Blobs of 5-40 KB, incompressible, text-like or low-entropy, in random order."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghij", k=rng.randint(2, 8))) for _ in range(500)]
    blobs = []
    for i in range(count):
        size = rng.randrange(5_000, 40_000)
        kind = rng.randrange(3)
        if kind == 0:
            blobs.append(rng.randbytes(size))
        elif kind == 1:
            blobs.append(b" ".join(rng.choices(words, k=size // 5))[:size] + b"%d" % i)
        else:
            blobs.append(rng.randbytes(size).translate(bytes(b"abcd"[j % 4] for j in range(256))))
    return blobs


EXACT = dryrun.EXACT_BYTES  # the real budget, before a test changes it


@pytest.mark.parametrize("exact_bytes", [EXACT, 4 << 20], ids=["exact", "sampled"])
def test_dry_run_estimate_matches_what_the_backup_stores(
    monkeypatch: pytest.MonkeyPatch, exact_bytes: int
) -> None:
    """All blobs compressed, or 4 MiB and then one in eight (blob IDs are random per run:
    ~250 blobs of a three-way mix sampled put the error's standard deviation near 4%)."""
    monkeypatch.setattr(dryrun, "EXACT_BYTES", exact_bytes)
    repo = new_repo(MemoryBackend())
    blobs = _blobs(2000)
    writer = DryRunWriter(repo)
    for blob in blobs:
        writer.save_blob(BlobType.DATA, blob)
    writer.save_blob(BlobType.TREE, b"a tree" * 100)
    estimate = writer.estimate(PriceTable())
    assert estimate.compression_sampled == (exact_bytes < EXACT)
    assert not list(repo.backend.list("data"))  # a dry run stores nothing

    for blob in blobs:
        repo.save_blob(BlobType.DATA, blob)
    repo.save_blob(BlobType.TREE, b"a tree" * 100)
    repo.flush()
    stored = sum(o.size for o in repo.backend.list("data"))
    tolerance = 0.002 if exact_bytes == EXACT else 0.15
    assert abs(estimate.data_pack_bytes + estimate.tree_pack_bytes - stored) <= tolerance * stored
    # Blobs are packed in the order worker threads finish them: a pack more or less.
    slack = 1 + round(tolerance * repo.stats.packs)
    assert abs(estimate.data_packs + estimate.tree_packs - repo.stats.packs) <= slack
    assert estimate.puts["index"] == repo.stats.index_files
    assert estimate.storage_cost_usd_per_month == pytest.approx(
        estimate.bytes_stored / (1 << 30) * 0.023, abs=1e-9
    )


def test_dry_run_of_nothing_new_costs_a_snapshot_and_a_lock() -> None:
    repo = new_repo(MemoryBackend())
    estimate = DryRunWriter(repo).estimate(PriceTable())
    assert estimate.puts == {
        "data_packs": 0,
        "tree_packs": 0,
        "index": 0,
        "snapshot": 1,
        "lock": 1,
    }
    assert estimate.put_requests == 2 and estimate.bytes_new == 0
