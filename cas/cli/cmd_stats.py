"""``cas stats``: restore size, unique data, stored size and the ratios between them."""

from __future__ import annotations

from typing import Any

import click

from cas.cli.common import Globals, Output, human_bytes, pass_globals
from cas.cli.options import snapshot_filter_options
from cas.crypto import BlobType
from cas.manage.stats import StatsCollector
from cas.selection import SnapshotFilter
from cas.wording import counted


@click.command()
@click.argument("snapshot_ids", nargs=-1, metavar="[ID]...")
@snapshot_filter_options()
@pass_globals
def stats(
    g: Globals,
    snapshot_ids: tuple[str, ...],
    selection: SnapshotFilter,
) -> None:
    """Sizes of the snapshots given (default: the whole repository).

    restore size: what restoring every chosen snapshot would write (hardlinks
    once); raw data: plaintext of the distinct blobs they use; stored size:
    those blobs as stored (compressed and encrypted). dedup ratio = restore
    size / raw data; compression ratio = raw data / stored size.
    """
    out = Output(g)
    whole = not snapshot_ids and selection == SnapshotFilter()
    repo = g.open(reading=True)
    with g.locked(repo, exclusive=False, command="stats"):
        if snapshot_ids:
            found = dict(repo.find_snapshot(r) for r in snapshot_ids)
            snaps = sorted(found.items(), key=lambda p: (p[1].time_ns, p[0]))
        else:
            snaps = list(repo.iter_snapshots())
        snaps = [(i, s) for i, s in snaps if selection.matches(s)]
        repo.load_index()

        def stored_length(blob_id: bytes) -> int | None:
            loc = repo.index.get(blob_id)
            return None if loc is None else loc.length

        collector = StatsCollector(lambda t: repo.load_blob(BlobType.TREE, t), stored_length)
        for i, (sid, snap) in enumerate(snaps):
            out.progress(f"snapshot {i + 1}/{len(snaps)}")
            collector.add_snapshot(sid, snap.tree)
        result = collector.result()
        for tree, why in sorted(result.unreadable_trees.items()):
            g.degraded = True
            out.warn(
                f"tree {tree.hex()[:8]} counted as empty, it cannot be read ({why}); "
                "'cas check' names the way back"
            )
        doc: dict[str, Any] = {"scope": "repository" if whole else "snapshots"}
        doc.update(result.as_dict())
        if whole:
            pack_sizes = repo.pack_sizes()
            doc["repository"] = {
                "packs": len(pack_sizes),
                "pack_bytes": sum(pack_sizes.values()),
                "indexed_blobs": len(repo.index),
            }

    out.emit(doc, lambda: _human(out, doc), answer=True)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _human(out: Output, doc: dict[str, Any]) -> None:
    if doc["scope"] == "snapshots":
        for s in doc["snapshots"]:
            out.line(
                f"{s['id'][:8]}  {human_bytes(s['restore_size']):>10}  "
                f"{counted(s['files'], 'file')}"
            )
    out.line(f"snapshots:          {doc['snapshot_count']}")
    out.line(
        f"restore size:       {human_bytes(doc['restore_size'])} in {counted(doc['files'], 'file')}"
    )
    out.line(
        f"raw data:           {human_bytes(doc['raw_data'])} in "
        f"{counted(doc['data_blobs'] + doc['tree_blobs'], 'blob')} "
        f"(trees {human_bytes(doc['raw_tree'])} in {doc['tree_blobs']})"
    )
    out.line(f"stored size:        {human_bytes(doc['stored_size'])}")
    out.line(f"dedup ratio:        {_ratio(doc['dedup_ratio'])}")
    out.line(f"compression ratio:  {_ratio(doc['compression_ratio'])}")
    if doc["missing_blobs"]:
        out.line(f"missing blobs:      {doc['missing_blobs']} (not in the index; run check)")
    if "repository" in doc:
        r = doc["repository"]
        out.line(
            f"repository:         {counted(r['packs'], 'pack')}, {human_bytes(r['pack_bytes'])}, "
            f"{counted(r['indexed_blobs'], 'blob')} indexed"
        )
