"""``cas check`` through the real CLI: exit codes, human and JSON output, --read-data
selection with its state file, and --against on a real tree."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cas.backend.local import LocalBackend
from tests.support.cli import Result, run_cas
from tests.support.damaged import Damaged, healthy, pack_deleted, pack_unreferenced


def _local(tmp_path: Path, build: object = healthy) -> tuple[Damaged, Path]:
    root = tmp_path / "repo"
    backend = LocalBackend(root)
    backend.create()
    assert callable(build)
    return build(backend), root


def _check(root: Path, *args: str | Path, json_out: bool = False) -> Result:
    result = run_cas("-r", root, *(["--json"] if json_out else []), "check", *args)
    assert "Traceback" not in result.err
    return result


def test_clean_repository_exits_0(tmp_path: Path) -> None:
    _, root = _local(tmp_path)
    human = _check(root, "--read-data", "--cache-dir", tmp_path / "cache")
    assert human.code == 0, human.err
    assert "no errors found" in human.out and "read 2 of 2 selected packs" in human.out
    doc = _check(root, json_out=True).json()
    assert doc["findings"] == []
    s = doc["summary"]
    assert (s["snapshots"], s["files"], s["errors"], s["warnings"]) == (1, 3, 0, 0)


@pytest.mark.damaged_repo_ok("deletes a pack to see check name what it breaks")
def test_errors_exit_1_and_name_what_they_break(tmp_path: Path) -> None:
    d, root = _local(tmp_path, pack_deleted)
    human = _check(root)
    assert human.code == 1
    lines = human.out.splitlines()
    assert f"error: pack_missing {d.names['data_pack']}: " in lines[0]
    assert sum("needed by snapshot" in line for line in lines) == 3
    assert lines[-1] == "1 error, 0 warnings"
    doc = _check(root, json_out=True).json()
    (finding,) = doc["findings"]
    assert (finding["kind"], finding["severity"], finding["object"]) == (
        "pack_missing",
        "error",
        d.names["data_pack"],
    )
    assert {a["path"] for a in finding["affected"]} == {"/file0", "/file1", "/file2"}
    assert {a["id"] for a in finding["affected"]} == {d.snapshot.hex()}
    assert doc["summary"]["errors"] == 1


def test_warnings_alone_exit_0(tmp_path: Path) -> None:
    d, root = _local(tmp_path, pack_unreferenced)
    leftover = root / "index" / ".tmp-abc"  # an upload interrupted long ago
    leftover.write_bytes(b"partial")
    os.utime(leftover, (1, 1))
    result = _check(root)
    assert result.code == 0, result.err
    assert f"warning: pack_unreferenced {d.names['orphan']}" in result.out
    assert "warning: leftover_upload index/.tmp-abc: unfinished upload (7 bytes" in result.out
    assert result.out.splitlines()[-1] == "no errors, 2 warnings"


def test_read_data_selection_and_state(tmp_path: Path) -> None:
    d, root = _local(tmp_path)
    cache = tmp_path / "cache"

    def read(*args: str | Path) -> int:
        r = _check(root, *args, "--cache-dir", cache, json_out=True)
        assert r.code == 0, r.err
        return int(r.json()["summary"]["packs_read"])

    assert read("--read-data-subset", "1/2") + read("--read-data-subset", "2/2") == 2
    state_file = cache / d.open().config.repo_id.hex() / "check-state.json"
    assert len(json.loads(state_file.read_text())["packs"]) == 2
    assert read("--max-age", "30d", "--read-data-subset", "50%") == 0  # all verified just now
    state_file.write_text("{damaged")
    tolerant = _check(root, "--max-age", "30d", "--cache-dir", cache)
    assert tolerant.code == 0 and "starting afresh" in tolerant.err
    assert json.loads(state_file.read_text())["version"] == 1  # rewritten


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    _, root = _local(tmp_path)
    for args in (
        ["--read-data-subset", "0/2"],
        ["--max-age", "soon"],
        ["--snapshot", "latest"],
    ):
        result = _check(root, *args)
        assert result.code == 2, (args, result.err)
        assert result.err.strip() and "\n" not in result.err.strip()


# -- --against ---------------------------------------------------------------------


def _tree(src: Path) -> None:
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"original content\n" * 100)
    (src / "b.txt").write_bytes(b"bee\n")
    (src / "sub" / "c.txt").write_bytes(b"sea\n")
    (src / "sub" / "d.txt").write_bytes(b"dee\n")
    os.symlink("a.txt", src / "link")


def _keep_mtime(path: Path) -> int:
    return os.lstat(path).st_mtime_ns


def _set_mtime(path: Path, mtime_ns: int) -> None:
    st = os.lstat(path)
    os.utime(path, ns=(st.st_atime_ns, mtime_ns), follow_symlinks=False)


def test_against_lists_every_difference(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    _tree(src)
    assert run_cas("-r", repo, "init").code == 0
    backup = run_cas("-r", repo, "--json", "backup", src)
    assert backup.code == 0, backup.err
    sid = backup.json()["id"]

    same = _check(repo, "--against", src)
    assert same.code == 0, same.err
    assert same.out.rstrip().endswith("identical")

    dirs = {p: _keep_mtime(p) for p in (src, src / "sub")}
    a_mtime = _keep_mtime(src / "a.txt")
    (src / "a.txt").write_bytes(b"ORIGINAL content\n" * 100)  # same size, new bytes
    _set_mtime(src / "a.txt", a_mtime)
    os.chmod(src / "b.txt", 0o600)
    (src / "sub" / "new.txt").write_bytes(b"new\n")
    (src / "sub" / "c.txt").unlink()
    link_mtime = _keep_mtime(src / "link")
    (src / "link").unlink()
    os.symlink("sub/d.txt", src / "link")
    _set_mtime(src / "link", link_mtime)
    for p, m in dirs.items():
        _set_mtime(p, m)

    result = _check(repo, "--against", src, "--snapshot", sid[:8], json_out=True)
    assert result.code == 1
    doc = result.json()
    assert doc["id"] == sid
    top = str(src)
    found = {(d["path"].removeprefix(top), d["kind"], d["field"]) for d in doc["differences"]}
    assert found == {
        ("/a.txt", "changed", "content"),
        ("/b.txt", "changed", "mode"),
        ("/sub/new.txt", "missing_in_snapshot", None),
        ("/sub/c.txt", "missing_in_source", None),
        ("/link", "changed", "target"),
        ("/link", "changed", "size"),
    }
    by_field = {d["field"]: d for d in doc["differences"]}
    assert (by_field["mode"]["snapshot"], by_field["mode"]["source"]) == (0o644, 0o600)
    assert (by_field["target"]["snapshot"], by_field["target"]["source"]) == ("a.txt", "sub/d.txt")

    human = _check(repo, "--against", src / "sub")  # latest snapshot holding the path
    assert human.code == 1
    assert human.out.splitlines() == [
        f"missing in source:   {src}/sub/c.txt (file)",
        f"missing in snapshot: {src}/sub/new.txt (file)",
        f"compared 3 entries of snapshot {sid[:8]} with {src}/sub: 2 differences",
    ]
    chmod = _check(repo, "--against", src / "b.txt")
    assert chmod.out.splitlines()[0] == f"changed:             {src}/b.txt: mode 0644 -> 0600"

    outside = _check(repo, "--against", tmp_path)
    assert outside.code == 2 and "no snapshot holds" in outside.err
    both = _check(repo, "--against", src, "--read-data")
    assert both.code == 2 and "cannot be combined" in both.err
