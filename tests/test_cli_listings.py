"""Listing commands: ``-q`` never hides their answer; ``snapshots --latest/--group-by/
--compact`` as restic has them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_cas


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five snapshots: host a of /x (three, the last tagged), host b of /x, host a of /y."""
    tmp = tmp_path_factory.mktemp("listings")
    repo = tmp / "repo"
    x, y = tmp / "x", tmp / "y"
    x.mkdir()
    y.mkdir()
    (x / "f").write_bytes(b"x")
    (y / "f").write_bytes(b"y")
    assert run_cas("-r", repo, "init").code == 0
    for args in (
        ["--host", "a", x],
        ["--host", "a", x],
        ["--host", "a", "--tag", "t", x],
        ["--host", "b", x],
        ["--host", "a", y],
    ):
        assert run_cas("-r", repo, "backup", *args).code == 0
    return repo


@pytest.mark.parametrize(
    "command",
    [["snapshots"], ["stats"], ["key", "list"], ["forget", "--keep-last", "1", "--dry-run"]],
    ids=lambda c: " ".join(c),
)
def test_quiet_keeps_the_answer_of_a_listing(repo: Path, command: list[str]) -> None:
    plain = run_cas("-r", repo, *command)
    quiet = run_cas("-r", repo, "-q", *command)
    assert plain.code == quiet.code == 0, quiet.err
    assert quiet.out and quiet.out == plain.out


def test_quiet_still_silences_chatter(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    assert run_cas("-r", repo, "-q", "backup", src).out == ""


def test_snapshots_latest_per_host_and_paths(repo: Path) -> None:
    docs = run_cas("-r", repo, "--json", "snapshots").json()["snapshots"]
    assert len(docs) >= 5
    latest = run_cas("-r", repo, "--json", "snapshots", "--latest", "1").json()["snapshots"]
    groups = {(d["hostname"], tuple(d["paths"])) for d in docs}
    assert len(latest) == len(groups)
    for d in latest:  # the newest of its host and paths
        same = [e for e in docs if (e["hostname"], e["paths"]) == (d["hostname"], d["paths"])]
        assert d["id"] == same[-1]["id"]


def test_snapshots_group_by(repo: Path) -> None:
    grouped = run_cas("-r", repo, "--json", "snapshots", "--group-by", "host").json()["groups"]
    keys = sorted(g["group_key"]["hostname"] for g in grouped)
    assert keys[:2] == ["a", "b"] and len(keys) == len(set(keys))
    by_a = next(g for g in grouped if g["group_key"] == {"hostname": "a"})
    assert all(s["hostname"] == "a" for s in by_a["snapshots"])
    both = run_cas("-r", repo, "--json", "snapshots", "--group-by", "host,tags", "--latest", "1")
    assert all(len(g["snapshots"]) == 1 for g in both.json()["groups"])
    human = run_cas("-r", repo, "snapshots", "--group-by", "host,paths")
    assert human.code == 0 and "snapshots of host a; paths " in human.out
    bad = run_cas("-r", repo, "snapshots", "--group-by", "colour")
    assert bad.code == 2 and "use host, paths and/or tags" in bad.err


def test_snapshots_compact(repo: Path) -> None:
    done = run_cas("-r", repo, "snapshots", "--compact")
    lines = done.out.splitlines()
    assert lines[0].split() == ["ID", "time", "host", "tags"]
    assert any(line.rstrip().endswith("t") for line in lines[1:])
    assert "snapshots" in lines[-1]
