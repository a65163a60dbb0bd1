"""cas copy: local to local and local to S3, sending only what the target lacks."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.independent.compare import assert_snapshot_is, manifest, read_local, read_s3
from tests.support.cli import run_cas


def _tree(root: Path, seed: int) -> None:
    rnd = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(8):
        (root / f"f{i}").write_bytes(rnd.randbytes(rnd.randrange(1, 300_000)))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list[str], list[str], Any]:
    """(global options of the target, the same as --to arguments, () -> the target read
    by the independent reader)."""
    if request.param == "local":
        loc = str(tmp_path / "dst")
        return ["-r", loc], ["--to", loc], lambda: read_local(loc)
    endpoint = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    s3 = ["--s3-endpoint", endpoint, "--s3-path-style"]
    return (
        ["-r", f"s3://{bucket}/copy", *s3],
        ["--to", f"s3://{bucket}/copy"],
        lambda: read_s3(endpoint, bucket, "copy"),
    )


@pytest.mark.parametrize("workers", ["0", "2"])
def test_copy_sends_only_missing_blobs(
    tmp_path: Path, target: tuple[list[str], list[str], Any], workers: str
) -> None:
    """With --workers 2, helper processes read the blobs and seal them for the target."""
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    dst_args, to_args, read_target = target
    s3_opts = dst_args[2:]
    src = ["-r", str(tmp_path / "src"), *s3_opts]
    pw = tmp_path / "pw"
    pw.write_text("test-password")
    data = tmp_path / "data"
    _tree(data, 1)
    assert run_cas(*src, "init").code == 0
    assert run_cas(*src, "backup", data).code == 0
    made = run_cas(
        *dst_args,
        "init",
        "--copy-keys-from",
        str(tmp_path / "src"),
        "--from-password-file",
        pw,
        env=aws,
    )
    assert made.code == 0, made.err

    copy = [*src, "--json", "copy", *to_args, "--to-password-file", pw, "--workers", workers]
    first = run_cas(*copy, env=aws)
    assert first.code == 0, first.err
    doc = first.json()
    assert len(doc["snapshots_copied"]) == 1 and doc["blobs_copied"] > 0
    assert doc["processes"] == int(workers)

    (data / "extra").write_bytes(b"new" * 1000)
    assert run_cas(*src, "backup", data).code == 0
    second = run_cas(*copy, env=aws)
    assert second.code == 0, second.err
    doc2 = second.json()
    assert len(doc2["snapshots_copied"]) == 1 and len(doc2["snapshots_skipped"]) == 1
    # the new file's chunk plus one changed tree per directory level down to it
    assert doc2["blobs_copied"] <= 1 + len(data.parts)

    out = tmp_path / "out"
    restored = run_cas(*dst_args, "restore", "latest", "--target", out, "--verify", env=aws)
    assert restored.code == 0, restored.err
    for f in data.iterdir():
        assert (out / str(data).lstrip("/") / f.name).read_bytes() == f.read_bytes()

    # Read by code written from the spec alone, the target holds the source's two
    # snapshots, file for file and byte for byte, the latest equal to the tree.
    source, copied = read_local(tmp_path / "src"), read_target()
    assert len(copied.snapshots) == len(source.snapshots) == 2
    assert not copied.unindexed_packs
    # spec §4.3: the ID and chunker keys are the source's, the others the target's own
    assert (copied.keys.id, copied.keys.chunker) == (source.keys.id, source.keys.chunker)
    assert copied.keys.data != source.keys.data and copied.keys.index != source.keys.index

    def by_time(view: Any) -> list[Any]:
        return sorted(view.snapshots.values(), key=lambda s: s.doc["time"])

    for a, b in zip(by_time(source), by_time(copied), strict=True):
        assert b.doc["copied_from"] == a.id and b.doc["tree"] == a.doc["tree"]
        assert manifest(b.below(data)) == manifest(a.below(data))
    assert_snapshot_is(copied, by_time(copied)[-1].id, data)


def test_copy_refuses_unrelated_repository(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("test-password")
    assert run_cas("-r", tmp_path / "a", "init").code == 0
    assert run_cas("-r", tmp_path / "b", "init").code == 0
    result = run_cas("-r", tmp_path / "a", "copy", "--to", tmp_path / "b", "--to-password-file", pw)
    assert result.code == 1 and "copy-keys-from" in result.err


def test_a_copy_helper_that_dies_has_its_blobs_sealed_here(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("test-password")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):  # 8 batches of 4 MiB or more: both helpers get work
        (data / f"f{i}").write_bytes(os.urandom(1 << 20))
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert run_cas("-r", src, "init").code == 0
    assert run_cas("-r", src, "backup", data).code == 0
    made = run_cas("-r", dst, "init", "--copy-keys-from", src, "--from-password-file", pw)
    assert made.code == 0, made.err
    done = run_cas(
        "-r",
        src,
        "copy",
        "--to",
        dst,
        "--to-password-file",
        pw,
        "--workers",
        "2",
        env={"CAS_FAILPOINTS": "copy-reseal-batch@1"},
    )
    assert "Traceback" not in done.err
    assert done.code in (0, 3) and "copy process" in done.err and "killed by signal 9" in done.err
    assert run_cas("-r", dst, "check", "--read-data").code == 0
    out = tmp_path / "out"
    assert run_cas("-r", dst, "restore", "latest", "--target", out).code == 0
    for f in data.iterdir():
        assert (out / str(data).lstrip("/") / f.name).read_bytes() == f.read_bytes()
