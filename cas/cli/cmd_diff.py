"""``cas diff``: what changed between two snapshots (or two directories of them)."""

from __future__ import annotations

from typing import Any

import click

from cas.browse.differ import METADATA, Change, Differ, DiffStats, Side
from cas.browse.nav import lookup
from cas.cli.common import Globals, Output, human_bytes, pass_globals
from cas.cli.nodeview import json_path, path_text, split_ref
from cas.cli.options import LATEST_AMONG, snapshot_filter_options
from cas.errors import CasError
from cas.selection import SnapshotFilter


@click.command()
@click.argument("first", metavar="SNAPSHOT1[:/path]")
@click.argument("second", metavar="SNAPSHOT2[:/path]")
@click.option("--metadata", is_flag=True, help="Also list metadata-only changes (U).")
@snapshot_filter_options(only=LATEST_AMONG)
@pass_globals
def diff(g: Globals, first: str, second: str, metadata: bool, selection: SnapshotFilter) -> None:
    """List what changed from SNAPSHOT1 to SNAPSHOT2, restic's way: + added,
    - removed, M content modified, T type changed, U metadata only (with
    --metadata), then a summary of counts and bytes added and removed.

    File data is not read: contents are compared by their blob IDs, and
    directories with the same tree ID are skipped.  With --json every line is
    one JSON object: one per change, then the summary (the statistics).
    """
    out = Output(g)
    (ref1, path1), (ref2, path2) = split_ref(first), split_ref(second)
    repo = g.open(reading=True)
    with g.locked(repo, exclusive=False, command="diff"):
        sid1, snap1 = repo.find_snapshot(ref1, selection)
        sid2, snap2 = repo.find_snapshot(ref2, selection)
        old = lookup(repo, snap1.tree, path1)
        new = lookup(repo, snap2.tree, path2)

        def on_error(path: bytes, error: CasError) -> None:
            g.degraded = True
            out.warn(f"cannot compare below {path_text(path)}: {error}")

        differ = Differ(repo, on_error)
        for change in differ.changes(old, new):
            if change.kind == METADATA and not metadata:
                continue
            _show(out, change)
    doc = _stats_doc(differ.stats)
    doc.update(source_snapshot=sid1.hex(), target_snapshot=sid2.hex())
    out.emit(doc, lambda: _human(out, differ.stats), answer=True)


def _show(out: Output, c: Change) -> None:
    if out.json:
        doc: dict[str, Any] = {"message_type": "change", "modifier": c.kind}
        doc.update(json_path(c.path))
        if c.fields:
            doc["fields"] = list(c.fields)
        if c.old is not None and c.new is not None and c.old.type != c.new.type:
            doc["types"] = [c.old.type, c.new.type]
        out.message(doc)
    else:  # the changes are the answer: -q does not hide them
        click.echo(f"{c.kind}    {path_text(c.path)}{'/' if c.is_dir else ''}")


def _side(s: Side, n_bytes: int) -> dict[str, int]:
    return {
        "files": s.files,
        "dirs": s.dirs,
        "others": s.others,
        "data_blobs": len(s.blobs),
        "bytes": n_bytes,
    }


def _stats_doc(s: DiffStats) -> dict[str, Any]:
    return {
        "changed_files": s.modified,
        "type_changed": s.type_changed,
        "metadata_changed": s.metadata_changed,
        "added": _side(s.added, s.bytes_added),
        "removed": _side(s.removed, s.bytes_removed),
    }


def _human(out: Output, s: DiffStats) -> None:
    out.line("")
    out.line(
        f"Files:       {s.added.files:5} new, {s.removed.files:5} removed, {s.modified:5} changed"
    )
    out.line(f"Dirs:        {s.added.dirs:5} new, {s.removed.dirs:5} removed")
    out.line(f"Others:      {s.added.others:5} new, {s.removed.others:5} removed")
    out.line(f"Type changed: {s.type_changed}, metadata only: {s.metadata_changed}")
    out.line(f"Added:   {human_bytes(s.bytes_added)}")
    out.line(f"Removed: {human_bytes(s.bytes_removed)}")
