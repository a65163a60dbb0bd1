"""Choosing a snapshot (issue 15, item 3): one argument form, 'latest' narrowed by
--host, --tag and --path in every command that takes one snapshot, and backup's parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cas

# (host, tags, source directory name): backed up in this order, so the last is 'latest'
BACKUPS = [("alpha", "home,daily", "one"), ("beta", "work", "two"), ("gamma", "", "three")]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], list[str]]:
    """A repository with one snapshot per BACKUPS row; the sources and the snapshot IDs."""
    tmp = tmp_path_factory.mktemp("selection")
    repo = tmp / "repo"
    assert run_cas("-r", repo, "init").code == 0
    sources, ids = {}, []
    for host, tags, name in BACKUPS:
        src = tmp / name
        src.mkdir()
        (src / "file").write_text(f"{name}\n")
        sources[name] = src
        args = ["--tag", tags] if tags else []
        r = run_cas("-r", repo, "--json", "backup", src, "--host", host, *args)
        assert r.code == 0, r.err
        ids.append(r.json()["id"])
    return repo, sources, ids


NARROWINGS = [
    (["--host", "alpha"], "one"),
    (["--host", "beta"], "two"),
    (["--tag", "home,daily"], "one"),  # both tags
    (["--tag", "work", "--tag", "nothing"], "two"),  # either
    (["--tag", "home,work"], None),  # no snapshot has both
    (["--path", "{two}"], "two"),
    (["--host", "alpha", "--tag", "work"], None),
    ([], "three"),
]


def _words(words: list[str], sources: dict[str, Path]) -> list[str]:
    return [w.format(**{k: str(v) for k, v in sources.items()}) for w in words]


@pytest.mark.parametrize(("narrow", "expected"), NARROWINGS)
def test_latest_is_narrowed_in_ls_dump_restore_diff_and_find(
    repo: tuple[Path, dict[str, Path], list[str]],
    tmp_path: Path,
    narrow: list[str],
    expected: str | None,
) -> None:
    location, sources, _ = repo
    narrow = _words(narrow, sources)
    ls = run_cas("-r", location, "ls", "latest", *narrow)
    if expected is None:
        assert ls.code == 1 and "latest: no snapshot " in ls.err, ls.err
        r = run_cas("-r", location, "restore", "latest", "--target", tmp_path / "t", *narrow)
        assert r.code == 1 and "latest: no snapshot " in r.err, r.err
        return
    src = sources[expected]
    assert ls.code == 0, ls.err
    assert f"{src}/file" in ls.out.splitlines()
    assert not any(f"{other}/file" in ls.out for other in sources.values() if other != src)
    dump = run_cas("-r", location, "dump", *narrow, f"latest:{src}", "file")
    assert dump.code == 0 and dump.out == f"{expected}\n", dump.err
    target = tmp_path / "t"
    restore = run_cas("-r", location, "restore", "latest", "--target", target, *narrow)
    assert restore.code == 0, restore.err
    assert (target / str(src).lstrip("/") / "file").read_text() == f"{expected}\n"
    restored = {p.name for p in (target / str(src.parent).lstrip("/")).iterdir()}
    assert restored == {expected}
    diff = run_cas("-r", location, "--json", "diff", "latest", "latest", *narrow)
    assert diff.code == 0, diff.err
    stats = json.loads(diff.out.splitlines()[-1])
    assert stats["added"]["files"] == stats["removed"]["files"] == 0
    find = run_cas("-r", location, "--json", "find", "--snapshot", "latest", *narrow, "file")
    assert find.code == 0, find.err
    found = [json.loads(line) for line in find.out.splitlines()]
    matches = [m["path"] for f in found if "matches" in f for m in f["matches"]]
    assert matches == [f"{src}/file"]


def test_an_id_is_found_whatever_the_filter_says(
    repo: tuple[Path, dict[str, Path], list[str]],
) -> None:
    """As in restic, --host/--tag/--path narrow 'latest' only: an ID names one snapshot."""
    location, sources, ids = repo
    r = run_cas("-r", location, "ls", ids[0][:10], "--host", "beta")
    assert r.code == 0 and f"{sources['one']}/file" in r.out.splitlines(), r.err


def test_restore_takes_the_snapshot_once(
    repo: tuple[Path, dict[str, Path], list[str]], tmp_path: Path
) -> None:
    location, sources, ids = repo
    target = tmp_path / "t"
    r = run_cas("-r", location, "restore", ids[0][:8], "-s", ids[1][:8], "--target", target)
    assert r.code == 2 and "give the snapshot once" in r.err, r.err
    assert r.err.count("\n") == 1 and not target.exists()
    r = run_cas("-r", location, "restore", "latest", "--snapshot", "latest", "--target", target)
    assert r.code == 2, r.err
    r = run_cas("-r", location, "restore", "--target", target)
    assert r.code == 2 and "which snapshot?" in r.err, r.err
    # the option alone still works (older scripts), with a subtree
    r = run_cas("-r", location, "restore", "-s", f"{ids[1][:8]}:{sources['two']}", "-t", target)
    assert r.code == 0, r.err
    assert (target / "file").read_text() == "two\n"


def test_backup_takes_as_parent_the_latest_of_its_host_and_paths(
    repo: tuple[Path, dict[str, Path], list[str]], tmp_path: Path
) -> None:
    """Default and --parent latest alike: not the latest snapshot of all (gamma's)."""
    location, sources, ids = repo
    for parent in ([], ["--parent", "latest"]):
        r = run_cas(
            "-r",
            location,
            "--json",
            "backup",
            "--dry-run",
            sources["one"],
            "--host",
            "alpha",
            *parent,
        )
        assert r.code == 0, r.err
        assert r.json()["parent"] == ids[0], parent
    r = run_cas("-r", location, "--json", "backup", "--dry-run", sources["one"], "--host", "new")
    assert r.code == 0 and r.json()["parent"] is None, r.err


@pytest.mark.parametrize("typed", ["s3:/bucket/p", "s3//bucket/p", "S3:/bucket/p", "s3:bucket/p"])
@pytest.mark.parametrize("command", ["init", "snapshots"])
def test_near_misses_of_s3_get_a_hint_and_make_nothing(
    tmp_path: Path, typed: str, command: str
) -> None:
    r = run_cas("-r", typed, command, cwd=tmp_path)
    assert r.code == 2 and "did you mean s3://bucket/p?" in r.err, r.err
    assert r.err.count("\n") == 1
    assert not any(tmp_path.iterdir())
