"""Issue acceptance for backup and restore, driven through the real CLI.

The full-tree round trip needs root (arbitrary owners, device nodes,
trusted.*/security.* xattrs, immutable flags), as CI runs it; elsewhere it
skips.  The comparison (tests/support/trees.py) uses only ``os`` and
``stat``, and ``rsync -aHAXn`` gives a second opinion when installed.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.independent.compare import assert_snapshot_is, read_local
from tests.support.cli import TEST_ENV, Result, run_cas
from tests.support.trees import (
    NUMERIC_GID,
    NUMERIC_UID,
    build_full_tree,
    compare_trees,
    unlock_tree,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (owners, devices, flags)")

# Root without the capabilities that bypass file permissions, so it meets
# EACCES like any user would (util-linux setpriv).
DROP_DAC = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]


def run_unprivileged(*args: str | Path) -> Result:
    """``cas ARGS`` obeying file permissions even when the tests run as root."""
    prefix: list[str] = []
    if IS_ROOT:
        if shutil.which("setpriv") is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's DAC capabilities")
        prefix = DROP_DAC
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAS_", "AWS_"))}
    env.update(TEST_ENV, CAS_PASSWORD="test-password")
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "cas", *map(str, args)],
        env=env,
        capture_output=True,
        timeout=600,
    )
    return Result(
        proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )


def one_line(text: str) -> str:
    """The only line of ``text``, which must not hold a traceback."""
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def repo(tmp_path: Path) -> str:
    path = tmp_path / "repo"
    done = run_cas("-r", path, "init")
    assert done.code == 0, done.err
    return str(path)


@pytest.fixture
def unlock_afterwards(tmp_path: Path) -> Iterator[None]:
    """Clear immutable/append-only flags below tmp_path so pytest can remove it."""
    yield
    unlock_tree(tmp_path)


def backup_json(repo: str, *args: str | Path) -> dict[str, object]:
    done = run_cas("-r", repo, "--json", "backup", *args)
    assert done.code == 0, done.err
    doc: dict[str, object] = done.json()
    assert doc["warnings"] == []
    return doc


def summary(doc: dict[str, object]) -> dict[str, int]:
    s = doc["summary"]
    assert isinstance(s, dict)
    return s


def landed(target: Path, src: Path) -> Path:
    """Where a whole-snapshot restore puts ``src``."""
    return target / src.relative_to("/")


# -- the full tree -------------------------------------------------------------


@needs_root
def test_full_tree_roundtrip_is_exact(repo: str, tmp_path: Path, unlock_afterwards: None) -> None:
    src = tmp_path / "src"
    try:
        build_full_tree(src)
    except OSError as e:
        pytest.skip(f"cannot build the full test tree here: {e}")

    first_doc = backup_json(repo, src)
    first = summary(first_doc)
    # Holes are not read: 12 MiB of the tree's sparse files are holes.
    assert first["bytes_read"] < first["bytes_total"] - (12 << 20)

    out = tmp_path / "out"
    restored = run_cas("-r", repo, "--json", "restore", "latest", "--target", out)
    assert restored.code == 0, restored.err
    assert restored.json()["warnings"] == []
    assert compare_trees(src, landed(out, src)) == []

    # An unchanged tree: nothing is read, nothing is added.
    second = backup_json(repo, src)
    s = summary(second)
    assert second["parent"] is not None
    assert s["bytes_read"] == 0 and s["data_blobs_new"] == 0 and s["data_added"] == 0
    assert s["files_new"] == s["files_changed"] == 0
    assert s["files_unchanged"] == first["files_new"] + first["files_unchanged"]

    # Restoring again over the restored tree (immutable entries and all)
    # rewrites nothing and leaves it exact.
    again = run_cas("-r", repo, "--json", "restore", "latest", "--target", out)
    assert again.code == 0, again.err
    assert again.json()["summary"]["files_restored"] == 0
    assert again.json()["summary"]["bytes_written"] == 0
    assert compare_trees(src, landed(out, src)) == []

    # Both snapshots, read by code written from the spec alone, are the tree
    # (last: reading the source moves its atimes, which compare_trees checks).
    view = read_local(repo)
    assert set(view.snapshots) == {first_doc["id"], second["id"]}
    for sid in view.snapshots:
        assert_snapshot_is(view, sid, src)

    rsync = shutil.which("rsync")
    if rsync is None:
        pytest.skip("rsync not installed: no second opinion")
    check = subprocess.run(
        [rsync, "-aHAXn", "--itemize-changes", f"{src}/", f"{landed(out, src)}/"],
        capture_output=True,
        check=False,
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, b"", b"")


def test_second_backup_reads_nothing_and_bytes_read_is_honest(repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(random.Random(1).randbytes(300_000))
    (src / "d" / "b").write_bytes(b"b" * 1000)
    first = summary(backup_json(repo, src))
    assert first["bytes_read"] == first["bytes_total"] == 301_000
    second = summary(backup_json(repo, src))
    assert (second["bytes_read"], second["files_unchanged"]) == (0, 2)
    (src / "d" / "b").write_bytes(b"B" * 1000)
    third = summary(backup_json(repo, src))
    assert (third["bytes_read"], third["files_changed"]) == (1000, 1)
    forced = summary(backup_json(repo, src, "--force"))
    assert forced["bytes_read"] == 301_000


def test_parent_selection(repo: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_bytes(b"x" * 5000)
    (b / "f").write_bytes(b"y" * 5000)
    first = backup_json(repo, a)
    assert first["parent"] is None
    other = backup_json(repo, b)
    assert other["parent"] is None  # other paths: not a parent
    again = backup_json(repo, a)
    assert again["parent"] == first["id"]
    assert summary(again)["bytes_read"] == 0
    other_host = backup_json(repo, a, "--host", "elsewhere")
    assert other_host["parent"] is None and summary(other_host)["bytes_read"] == 5000
    explicit = backup_json(repo, a, "--host", "elsewhere", "--parent", str(first["id"]))
    assert explicit["parent"] == first["id"]
    assert summary(explicit)["bytes_read"] == 0


def test_dry_run_and_stdin(repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f" * 1000)

    def stored() -> list[Path]:  # the lock's directory may appear, but no object
        return sorted(p.relative_to(repo) for p in Path(repo).rglob("*") if p.is_file())

    before = stored()
    dry = run_cas("-r", repo, "--json", "backup", "--dry-run", src)
    assert dry.code == 0, dry.err
    assert dry.json()["id"] is None and dry.json()["summary"]["data_added"] == 1000
    assert stored() == before

    data = random.Random(5).randbytes(100_000)
    piped = run_cas(
        "-r", repo, "--json", "backup", "--stdin", "--stdin-filename", "dump.sql", input=data
    )
    assert piped.code == 0, piped.err
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out).code == 0
    assert (out / "dump.sql").read_bytes() == data


# -- dedup ---------------------------------------------------------------------


def test_dedup_copies_and_insertion(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    chunks = ["--chunk-min", "16384", "--chunk-avg", "65536", "--chunk-max", "262144"]
    assert run_cas("-r", repo, "init", *chunks).code == 0
    original = random.Random(7).randbytes(5 << 20)
    src = tmp_path / "src"
    src.mkdir()
    (src / "original").write_bytes(original)
    first = summary(backup_json(repo, src))
    assert first["data_blobs_new"] >= 20  # 5 MiB in ~64 KiB chunks

    for copy in ("copy-1", "sub/copy-2", "sub/deeper/copy-3"):
        (src / copy).parent.mkdir(parents=True, exist_ok=True)
        (src / copy).write_bytes(original)
    middle = len(original) // 2
    (src / "edited").write_bytes(original[:middle] + b"inserted bytes" * 100 + original[middle:])
    second = summary(backup_json(repo, src))
    assert second["files_new"] == 4 and second["bytes_read"] == 4 * (5 << 20) + 1400
    # Three copies add nothing; the insertion adds the chunk(s) around it.
    assert 1 <= second["data_blobs_new"] <= 3
    assert second["data_added"] <= 3 * 262144
    view = read_local(repo)
    assert len(view.snapshots) == 2
    assert_snapshot_is(view, max(view.snapshots.values(), key=lambda v: v.doc["time"]).id, src)


# -- errors ----------------------------------------------------------------------


def test_unreadable_file_warns_and_exits_3(repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "readable").write_bytes(b"fine")
    secret = src / "secret"
    secret.write_bytes(b"not for you")
    secret.chmod(0)
    if IS_ROOT:
        os.chown(secret, NUMERIC_UID, NUMERIC_GID)
    done = run_unprivileged("-r", repo, "backup", src)
    assert done.code == 3, done.err
    warning = one_line(done.err)
    assert warning.startswith("warning: ") and str(secret) in warning
    assert "Permission denied" in warning
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out).code == 0
    assert sorted(os.listdir(landed(out, src))) == ["readable"]


def test_unreadable_directory_warns_once_and_is_saved_empty(repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    closed = src / "closed"
    closed.mkdir(parents=True)
    (closed / "inside").write_bytes(b"x")
    closed.chmod(0)
    if IS_ROOT:
        os.chown(closed, NUMERIC_UID, NUMERIC_GID)
    done = run_unprivileged("-r", repo, "backup", src)
    assert done.code == 3, done.err
    warning = one_line(done.err)
    assert str(closed) in warning and "Permission denied" in warning
    out = tmp_path / "out"
    assert run_cas("-r", repo, "restore", "latest", "--target", out).code == 0
    assert os.listdir(landed(out, src) / "closed") == []


def test_missing_source_path(repo: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    done = run_cas("-r", repo, "backup", missing)
    assert done.code in (1, 2)
    line = one_line(done.err)
    assert str(missing) in line and "does not exist" in line
    snapshots = run_cas("-r", repo, "--json", "snapshots")
    assert snapshots.code == 0 and snapshots.json()["snapshots"] == []


def test_restore_into_read_only_directory(repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    backup_json(repo, src)
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    if IS_ROOT:
        os.chown(read_only, NUMERIC_UID, NUMERIC_GID)
    read_only.chmod(0o555)
    for target in (read_only, read_only / "below"):
        done = run_unprivileged("-r", repo, "restore", "latest", "--target", target)
        assert done.code == 1, done.err
        line = one_line(done.err)
        assert str(target) in line and "Permission denied" in line
        assert done.out == ""
    assert os.listdir(read_only) == []


def test_bad_pattern_is_a_usage_error(repo: str, tmp_path: Path) -> None:
    done = run_cas("-r", repo, "backup", tmp_path, "--exclude", "[z-a]")
    assert done.code == 2
    assert "invalid pattern" in one_line(done.err)
