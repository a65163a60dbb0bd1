"""``cas find``: entries of snapshots by name or mtime, or the users of stored objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from cas.browse.finder import Finder, Match, Query, resolve_ids
from cas.cli.common import Globals, Output, pass_globals
from cas.cli.nodeview import local_time, long_line, node_doc, path_text, snapshot_doc
from cas.cli.options import snapshot_filter_options
from cas.crypto import BlobType
from cas.errors import CasError, UsageError
from cas.format.snapshot import Snapshot
from cas.repo import Repository
from cas.selection import SnapshotFilter
from cas.wording import counted


@click.command()
@click.argument("patterns", nargs=-1, type=click.Path(path_type=bytes), metavar="[PATTERN]...")
@click.option(
    "--snapshot",
    "-s",
    "snapshot_refs",
    multiple=True,
    help="Only this snapshot (repeatable; 'latest' is narrowed by --host/--tag/--path).",
)
@snapshot_filter_options()
@click.option("--ignore-case", "-i", is_flag=True, help="Patterns ignore case.")
@click.option("--newest", metavar="TIME", help="Only entries modified at or before TIME.")
@click.option("--oldest", metavar="TIME", help="Only entries modified at or after TIME.")
@click.option("-l", "--long", "long_", is_flag=True, help="Type and mode, owner, size, mtime.")
@click.option("--blob", "blob_ids", multiple=True, help="Files and dirs using this blob.")
@click.option("--tree", "tree_ids", multiple=True, help="Directories with this tree.")
@click.option("--pack", "pack_ids", multiple=True, help="Entries using any blob of this pack.")
@pass_globals
def find(
    g: Globals,
    patterns: tuple[bytes, ...],
    snapshot_refs: tuple[str, ...],
    selection: SnapshotFilter,
    ignore_case: bool,
    newest: str | None,
    oldest: str | None,
    long_: bool,
    blob_ids: tuple[str, ...],
    tree_ids: tuple[str, ...],
    pack_ids: tuple[str, ...],
) -> None:
    """Find entries in all snapshots (or --snapshot ..., --host/--tag/--path) whose
    name matches a PATTERN, grouped per snapshot, oldest first.  A pattern with a
    slash matches the whole path (anchored at the root when it starts with /);
    * and ? never cross a slash, ** does, as in --exclude.

    --blob, --tree and --pack ID (unique prefixes) trace stored objects, such as
    the ones a `cas check` finding names, to the files and directories that use
    them.  With --json every line is one JSON object: one per snapshot with matches,
    then the summary.
    """
    out = Output(g)
    if not (patterns or blob_ids or tree_ids or pack_ids or newest or oldest):
        raise UsageError(
            "what to find? give a PATTERN, --blob, --tree, --pack, --newest or --oldest"
        )
    repo = g.open(reading=True)
    with g.locked(repo, exclusive=False, command="find"):
        blobs, trees = _objects(repo, blob_ids, tree_ids, pack_ids)
        query = Query(
            patterns=patterns,
            ignore_case=ignore_case,
            newest_ns=_time(newest, "--newest") if newest else None,
            oldest_ns=_time(oldest, "--oldest") if oldest else None,
            blobs=blobs,
            trees=trees,
        )

        def on_error(path: bytes, error: CasError) -> None:
            g.degraded = True
            out.warn(f"cannot search below {path_text(path)}: {error}")

        finder = Finder(repo, query, on_error)
        total = groups = 0
        for sid, snap in _snapshots(repo, snapshot_refs, selection):
            matches = list(finder.find(snap.tree))
            if not matches:
                continue
            groups += 1
            total += len(matches)
            _show(out, sid, snap, matches, long_)
    g.warn_damaged(out)
    out.emit(
        {"entries": total, "snapshots": groups},
        lambda: out.line(f"{counted(total, 'entry')} in {counted(groups, 'snapshot')}"),
    )


def _snapshots(
    repo: Repository, refs: tuple[str, ...], selection: SnapshotFilter
) -> list[tuple[bytes, Snapshot]]:
    if refs:
        chosen = dict(repo.find_snapshot(r, selection) for r in refs)
        return sorted(chosen.items(), key=lambda p: (p[1].time_ns, p[0]))
    return [(sid, s) for sid, s in repo.iter_snapshots() if selection.matches(s)]


def _objects(
    repo: Repository,
    blob_ids: tuple[str, ...],
    tree_ids: tuple[str, ...],
    pack_ids: tuple[str, ...],
) -> tuple[set[bytes], set[bytes]]:
    """The blob and tree IDs to trace: as given (prefixes resolved in the index), and
    every blob of each pack given."""
    if not (blob_ids or tree_ids or pack_ids):
        return set(), set()
    index: dict[bytes, BlobType] = {}
    by_pack: dict[bytes, set[bytes]] = {}
    for idx in repo.active_index_files().values():
        for pid, entries in idx.packs.items():
            members = by_pack.setdefault(pid, set())
            for e in entries:
                index[e.blob_id] = e.type
                members.add(e.blob_id)
    blob_ids, tree_ids, pack_ids = _bare(blob_ids), _bare(tree_ids), _bare(pack_ids)
    blobs = set(resolve_ids(blob_ids, lambda: index.keys(), "blob"))
    trees = set(
        resolve_ids(tree_ids, lambda: [b for b, t in index.items() if t == BlobType.TREE], "tree")
    )
    if pack_ids:
        packs = resolve_ids(pack_ids, lambda: by_pack.keys() | repo.pack_sizes().keys(), "pack")
        for pid in packs:
            if pid in by_pack:
                blobs |= by_pack[pid]
            else:  # a pack no index names: its own header says what it holds
                blobs |= {e.blob_id for e in repo.read_pack_header(pid)}
    return blobs, trees


def _bare(ids: tuple[str, ...]) -> tuple[str, ...]:
    """IDs as `check` names objects ("blob:9d6c...", "data/a7/a7c7...") taken as given."""
    return tuple(i.rsplit("/", 1)[-1].rsplit(":", 1)[-1] for i in ids)


def _time(text: str, option: str) -> int:
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option}: not a time: {text!r} (examples: 2026-01-31, '2026-01-31 12:00:00')"
        ) from None
    return int(dt.timestamp() * 1_000_000_000)


def _show(out: Output, sid: bytes, snap: Snapshot, matches: list[Match], long_: bool) -> None:
    if out.json:
        docs: list[dict[str, Any]] = []
        for m in matches:
            doc = node_doc(m.entry)
            if m.ids:
                doc["ids"] = [i.hex() for i in m.ids]
            docs.append(doc)
        out.message(
            snapshot_doc(
                sid, snap, message_type="snapshot_matches", hits=len(matches), matches=docs
            )
        )
        return
    when = local_time(snap.time_ns)
    click.echo(f"Found matching entries in snapshot {sid.hex()[:8]} from {when}")
    for m in matches:
        line = long_line(m.entry) if long_ else path_text(m.entry.path)
        if m.ids:
            line += f"  ({', '.join(i.hex()[:12] for i in m.ids)})"
        click.echo(line)
    click.echo("")
