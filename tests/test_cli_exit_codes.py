"""Exit codes and counted nouns (issue 15, item 8).

Exit 11 (locked) is what a command gets when it cannot run beside another: ``repair
packs`` holds the one exclusive lock (it drops packs), every command that reads or
adds holds a shared one.  Plural forms: "1 pack", never "1 packs".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cas import repo as repo_pkg
from cas.repo import RepoOptions
from cas.wording import counted
from tests.support.cli import run_cas

PASSWORD = "test-password"


def test_counted_nouns() -> None:
    assert counted(1, "pack") == "1 pack"
    assert counted(0, "pack") == "0 packs"
    assert counted(2, "entry") == "2 entries"
    assert counted(1, "entry") == "1 entry"
    assert counted(3, "index file") == "3 index files"
    assert counted(2, "key") == "2 keys"  # a vowel before the y: no "keies"
    assert counted(2, "match") == "2 matches"
    assert counted(2, "person", "people") == "2 people"


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    src, location = tmp_path / "src", tmp_path / "repo"
    src.mkdir()
    (src / "f").write_text("f\n")
    assert run_cas("-r", location, "init").code == 0
    assert run_cas("-r", location, "backup", src).code == 0
    return location, src


def test_a_command_that_cannot_run_beside_another_exits_11(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    location, src = backed_up
    repo = repo_pkg.open(str(location), lambda: PASSWORD.encode(), RepoOptions(cache=False))
    try:
        pack = next((location / "data").glob("*/*")).name
        with repo.lock(exclusive=False, command="backup"):  # a backup runs
            r = run_cas("-r", location, "repair", "packs", pack)
            assert r.code == 11, r.err
            assert "shared lock" in r.err and "command 'backup'" in r.err, r.err
            assert r.err.count("\n") == 1
            # what can run beside a backup does
            assert run_cas("-r", location, "backup", src).code == 0
            assert run_cas("-r", location, "ls", "latest").code == 0
        with repo.lock(exclusive=True, command="repair"):  # a repair runs
            for args in (
                ["backup", src],
                ["restore", "latest", "--target", tmp_path / "t"],
                ["ls", "latest"],
                ["forget", "--keep-last", "1"],
                ["repair", "index"],
            ):
                r = run_cas("-r", location, *args)
                assert r.code == 11, (args, r.err)
                assert "exclusive lock" in r.err and "command 'repair'" in r.err, r.err
            # --no-lock is for reading beside it, at the reader's risk
            assert run_cas("-r", location, "--no-lock", "ls", "latest").code == 0
        assert run_cas("-r", location, "repair", "index").code == 0
    finally:
        repo.close()


def test_the_exit_codes_are_documented_where_users_look() -> None:
    from cas.cli.main import cli

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for code in ("| 11 |", "| 14 |", "| 130 |"):
        assert code in readme
    assert "11 repository locked" in (cli.help or "") and "130 interrupted" in (cli.help or "")
    assert "14 the key is write-only" in (cli.help or "")
