"""``backup -v`` / ``-vv``: each entry as it is decided, for people and as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cas


def _source(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"a" * 100)
    (root / "sub" / "b").write_bytes(b"b" * 200)
    (root / "new\nline").write_bytes(b"n")


def _entries(out: str, prefix: str) -> dict[str, str]:
    """path (under ``prefix``) -> action, from the human -v lines."""
    found = {}
    for line in out.splitlines():
        action, _, rest = line.partition(" ")
        path = rest.strip().split(" (")[0]
        if action in ("new", "modified", "unchanged") and path.startswith(prefix):
            found[path[len(prefix) :]] = action
    return found


@pytest.mark.parametrize("workers", ["0", "2"])
def test_verbose_shows_new_and_modified_and_vv_unchanged(tmp_path: Path, workers: str) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    _source(src)
    assert run_cas("-r", repo, "init").code == 0
    first = run_cas("-r", repo, "backup", "-v", src, "--workers", workers)
    assert first.code == 0, first.err
    seen = _entries(first.out, str(src))
    assert seen == {"/a": "new", "/new\\nline": "new", "/sub/b": "new", "/sub/": "new", "/": "new"}
    assert "(100 B, 100 B added)" in first.out
    # a name with a newline stays on one line
    assert all(not line.startswith("line") for line in first.out.splitlines())

    (src / "sub" / "b").write_bytes(b"changed")
    (src / "c").write_bytes(b"c")
    second = run_cas("-r", repo, "backup", "-v", src, "--workers", workers)
    assert second.code == 0, second.err
    seen = _entries(second.out, str(src))
    assert seen == {"/sub/b": "modified", "/c": "new", "/sub/": "modified", "/": "modified"}

    third = run_cas("-r", repo, "backup", "-vv", src, "--workers", workers)
    assert third.code == 0, third.err
    seen = _entries(third.out, str(src))
    assert seen["/a"] == seen["/sub/b"] == seen["/c"] == seen["/sub/"] == "unchanged"


def test_verbose_json_is_one_object_per_line_ending_with_the_summary(tmp_path: Path) -> None:
    src, repo = tmp_path / "src", tmp_path / "repo"
    _source(src)
    assert run_cas("-r", repo, "init").code == 0
    done = run_cas("-r", repo, "--json", "backup", "-vv", src)
    assert done.code == 0, done.err
    lines = [json.loads(line) for line in done.out.splitlines()]
    *events, summary = lines
    assert summary["message_type"] == "summary" and summary["id"]
    assert {e["message_type"] for e in events} == {"verbose_status"}
    files = {e["item"]: e for e in events if e["type"] == "file"}
    assert files[str(src / "new\nline")]["action"] == "new"
    assert files[str(src / "a")]["data_size"] == 100
    # without -v, --json is one line: the summary
    again = run_cas("-r", repo, "--json", "backup", src)
    assert again.out.count("\n") == 1 and again.json()["message_type"] == "summary"
