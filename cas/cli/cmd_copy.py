"""``cas copy``: copy snapshots to another repository."""

from __future__ import annotations

import dataclasses

import click

from cas.cli.common import Globals, Output, human_bytes, pass_globals
from cas.manage.copier import copy_snapshots


def register(cli: click.Group) -> None:
    """Add the command."""
    cli.add_command(copy)


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--to", "to_repo", required=True, metavar="REPO", help="Target repository.")
@click.option("--to-password-file", help="Password file of the target (or CAS_OTHER_PASSWORD).")
@pass_globals
def copy(
    g: Globals, snapshots: tuple[str, ...], to_repo: str, to_password_file: str | None
) -> None:
    """Copy SNAPSHOTS (default: all) to the repository --to, sending only blobs it lacks.

    The target must have been created with 'cas init --copy-keys-from SOURCE'.
    """
    out = Output(g)
    src = g.open()
    dst = g.open_other(to_repo, to_password_file)
    ids = [src.find_snapshot(s)[0] for s in snapshots] or [i for i, _ in src.iter_snapshots()]
    with (
        g.locked(src, exclusive=False, command="copy-source"),
        g.locked(dst, exclusive=False, command="copy"),
    ):
        result = copy_snapshots(src, dst, ids, out.report)
    doc = dataclasses.asdict(result)

    def human() -> None:
        for line in result.snapshots_copied:
            out.line(f"copied {line}")
        out.line(
            f"{len(result.snapshots_copied)} snapshots copied, "
            f"{len(result.snapshots_skipped)} already there; "
            f"{result.blobs_copied} blobs ({human_bytes(result.bytes_copied)}) sent"
        )

    out.emit(doc, human)
