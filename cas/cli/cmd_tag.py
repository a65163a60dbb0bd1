"""``cas tag``: change the tags of snapshots.

Snapshot files are immutable and named by their hash, so a changed snapshot
is a new file: it is stored first and the old one deleted after it (a crash
in between leaves both, never neither).  The new snapshot keeps the original
time, tree, paths and summary, and records in ``original`` the ID of the
snapshot as the backup wrote it (kept across later re-tagging).  Like
forget, this only adds and deletes snapshot files, so a shared lock does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from cas.cli.common import Globals, Output, pass_globals
from cas.cli.options import snapshot_filter_options
from cas.errors import UsageError
from cas.format.snapshot import Snapshot
from cas.repo import Repository
from cas.selection import SnapshotFilter, split_tags
from cas.wording import counted


@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[ID]...")
@click.option("--add", "add", multiple=True, metavar="TAG", help="Add this tag.")
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove this tag.")
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="TAG",
    help="Replace all tags by these (--set '' removes every tag).",
)
@snapshot_filter_options()
@pass_globals
def tag(
    g: Globals,
    snapshot_ids: tuple[str, ...],
    add: tuple[str, ...],
    remove: tuple[str, ...],
    set_: tuple[str, ...],
    selection: SnapshotFilter,
) -> None:
    """Add, remove or set tags of the snapshots given (all that match the filters if none).

    Each changed snapshot gets a new ID.
    """
    out = Output(g)
    if any(not t for t in (*add, *remove)):
        raise UsageError("a tag cannot be empty")
    given_set = bool(set_)
    add, remove, set_ = tuple(split_tags(add)), tuple(split_tags(remove)), tuple(split_tags(set_))
    if not (add or remove or given_set):
        raise UsageError("nothing to do: give --add, --remove or --set")
    if given_set and (add or remove):
        raise UsageError("--set replaces all tags and cannot be combined with --add/--remove")
    repo = g.open()
    changed: list[dict[str, Any]] = []
    unchanged = 0
    with g.locked(repo, exclusive=False, command="tag", deletes=True):
        for sid, snap in _chosen(repo, snapshot_ids, selection):
            tags = set(set_) if given_set else (set(snap.tags) | set(add)) - set(remove)
            if tags == set(snap.tags):
                unchanged += 1
                continue
            new_id = _rewrite(repo, sid, snap, sorted(tags))
            changed.append({"id": sid.hex(), "new_id": new_id.hex(), "tags": sorted(tags)})

    doc = {"changed": changed, "unchanged": unchanged}

    def human() -> None:
        for c in changed:
            out.line(f"{c['id'][:8]} -> {c['new_id'][:8]}  [{', '.join(c['tags'])}]")
        out.line(f"changed {counted(len(changed), 'snapshot')}, {unchanged} unchanged")

    out.emit(doc, human)


def _chosen(
    repo: Repository, refs: tuple[str, ...], selection: SnapshotFilter
) -> list[tuple[bytes, Snapshot]]:
    """The snapshots named (or all), oldest first, that pass the filters."""
    if refs:
        found = dict(repo.find_snapshot(r) for r in refs)
        snaps = sorted(found.items(), key=lambda p: (p[1].time_ns, p[0]))
    else:
        snaps = list(repo.iter_snapshots())
    return [(i, s) for i, s in snaps if selection.matches(s)]


def _rewrite(repo: Repository, sid: bytes, snap: Snapshot, tags: list[str]) -> bytes:
    """Store the re-tagged snapshot in place of the old one; returns the new ID."""
    extra = dict(snap.extra)
    original = extra.get("original")
    if not (isinstance(original, bytes) and len(original) == 32):
        extra["original"] = sid
    return repo.replace_snapshot(sid, dataclasses.replace(snap, tags=tags, extra=extra))
