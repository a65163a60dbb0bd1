"""The ``cas`` group imports a command's module only when the command is used.

Every run of cas is a new interpreter: a listing of a local repository must not pay
for importing backup's archiver, the checker, restore, FUSE or boto3.  These tests
look at what a real run imported (``sys.modules`` at exit), never at timings.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import click
import pytest

import cas.cli
from cas.cli.main import COMMANDS, cli
from tests.support.cli import run_cas

# Modules only some commands need: none of them is imported by 'cas snapshots' on a
# local repository or by 'cas --help'.
NOT_FOR_A_LISTING = (
    "boto3",
    "botocore",
    "cas.backend.s3",
    "cas.backup.archiver",
    "cas.backup.pool",
    "cas.check",
    "cas.restore",
    "cas.mount",
    "cas.manage",
    "fuse",
    "pyfuse3",
    "cryptography",
)


def imported_by(tmp_path: Path, *args: str | Path) -> tuple[int, set[str]]:
    """Exit code of ``cas ARGS`` and the modules loaded in it when it exited."""
    listing = tmp_path / "modules.txt"
    prelude = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(listing)!r}, 'w').write('\\n'.join(sys.modules)))"
    )
    result = run_cas(*args, prelude=prelude)
    return result.code, set(listing.read_text().split("\n"))


def loaded(modules: set[str], prefix: str) -> list[str]:
    return sorted(m for m in modules if m == prefix or m.startswith(prefix + "."))


def test_snapshots_on_a_local_repository_imports_only_what_it_needs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_cas("-r", repo, "init").code == 0
    code, modules = imported_by(tmp_path, "-r", repo, "snapshots", "--json")
    assert code == 0
    assert "cas.cli.cmd_snapshots" in modules
    for name in NOT_FOR_A_LISTING:
        assert not loaded(modules, name), name
    others = {m for m in modules if m.startswith("cas.cli.cmd_")} - {"cas.cli.cmd_snapshots"}
    assert not others


def test_help_imports_no_command(tmp_path: Path) -> None:
    code, modules = imported_by(tmp_path, "--help")
    assert code == 0
    assert not [m for m in modules if m.startswith("cas.cli.cmd_")]
    for name in NOT_FOR_A_LISTING:
        assert not loaded(modules, name), name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_says_what_the_command_says(name: str) -> None:
    """``cas --help`` lists a command from the table: its summary is click's own short
    help of the command at any width."""
    command = cli.commands[name]
    assert command.name == name
    placeholder = click.Command(name, help=COMMANDS[name].summary)
    for limit in (*range(20, 200, 9), 1 << 20):
        assert placeholder.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_every_command_module_is_in_the_table() -> None:
    """A command defined in a cas/cli/cmd_*.py module and not in the table would be
    unreachable."""
    tabled = {(c.module, c.attribute) for c in COMMANDS.values()}
    for path in sorted(Path(inspect.getfile(cas.cli)).parent.glob("cmd_*.py")):
        module = importlib.import_module(f"cas.cli.{path.stem}")
        here = {
            n: v
            for n, v in vars(module).items()
            if isinstance(v, click.Command)
            and v.callback is not None
            and v.callback.__module__ == module.__name__
        }
        inner = {
            id(sub)
            for v in here.values()
            if isinstance(v, click.Group)
            for sub in v.commands.values()
        }
        for attribute, command in here.items():
            if id(command) not in inner:
                assert (module.__name__, attribute) in tabled, (module.__name__, attribute)
