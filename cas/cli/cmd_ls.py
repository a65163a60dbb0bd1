"""``cas ls``: list the entries of a snapshot, like ``restic ls``."""

from __future__ import annotations

from itertools import chain

import click

from cas.browse.nav import Entry, lookup, walk
from cas.cli.common import Globals, Output, pass_globals
from cas.cli.nodeview import (
    inside,
    long_line,
    node_doc,
    path_text,
    snapshot_doc,
    split_ref,
)
from cas.cli.options import LATEST_AMONG, snapshot_filter_options
from cas.errors import CasError
from cas.selection import SnapshotFilter


@click.command()
@click.argument("snapshot", metavar="SNAPSHOT[:/path]")
@click.argument("paths", nargs=-1, type=click.Path(path_type=bytes), metavar="[PATH]...")
@click.option(
    "--recursive/--no-recursive",
    default=True,
    show_default=True,
    help="List everything below each path, or only its own entries.",
)
@click.option("-l", "--long", "long_", is_flag=True, help="Type and mode, owner, size, mtime.")
@click.option("--human-readable", "-H", is_flag=True, help="Sizes as 1.5 MiB with --long.")
@snapshot_filter_options(only=LATEST_AMONG)
@pass_globals
def ls(
    g: Globals,
    snapshot: str,
    paths: tuple[bytes, ...],
    recursive: bool,
    long_: bool,
    human_readable: bool,
    selection: SnapshotFilter,
) -> None:
    """List the entries at and below PATHs of a snapshot (default: all of it, or of
    SNAPSHOT:/path).  A relative PATH is taken inside SNAPSHOT:/path.  SNAPSHOT is
    an ID (a unique prefix) or 'latest' (narrowed by --host, --tag and --path).

    Names that are not UTF-8 show their bytes as \\xNN and control characters
    (a newline in a name) as escapes, so every entry is one line.  With --json
    every line is one JSON object: the snapshot first, then one per entry, then
    the summary.
    """
    out = Output(g)
    ref, base = split_ref(snapshot)
    repo = g.open(reading=True)
    with g.locked(repo, exclusive=False, command="ls"):
        sid, snap = repo.find_snapshot(ref, selection)
        starts = [lookup(repo, snap.tree, inside(base, p)) for p in paths or (base,)]

        def on_error(path: bytes, error: CasError) -> None:
            g.degraded = True
            out.warn(f"cannot list {path_text(path)}: {error}")

        out.message(snapshot_doc(sid, snap, message_type="snapshot", struct_type="snapshot"))
        entries = 0
        for top in starts:
            first = [top] if top.node is not None else []
            for entry in chain(first, walk(repo, top, recursive=recursive, on_error=on_error)):
                entries += 1
                _show(out, entry, long_, human_readable)
    g.warn_damaged(out)
    out.emit({"id": sid.hex(), "entries": entries})


def _show(out: Output, entry: Entry, long_: bool, human: bool) -> None:
    if out.json:
        out.message(node_doc(entry))
    else:  # the listing is the answer: -q does not hide it
        click.echo(long_line(entry, human) if long_ else path_text(entry.path))
