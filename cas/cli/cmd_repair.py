"""``cas repair index|snapshots`` and ``cas unlock``."""

from __future__ import annotations

import dataclasses

import click

from cas.cli.common import Globals, Output, pass_globals
from cas.errors import UsageError
from cas.manage.repair import repair_snapshots
from cas.repo.rebuild import rebuild_index, salvage_packs
from cas.wording import counted


@click.group()
def repair() -> None:
    """Repair a damaged repository (run 'cas check' first)."""


@repair.command("index")
@pass_globals
def repair_index(g: Globals) -> None:
    """Rebuild the index from the headers of all packs."""
    out = Output(g)
    repo = g.open()
    with g.locked(repo, exclusive=False, command="repair", deletes=True):
        result = rebuild_index(repo, out.report)
    doc = dataclasses.asdict(result)

    def human() -> None:
        out.line(
            f"indexed {counted(result.blobs_indexed, 'blob')} in "
            f"{counted(result.packs_indexed, 'pack')}, "
            f"replacing {counted(result.index_files_replaced, 'index file')}"
        )
        for p in result.unreadable_packs:
            out.line(f"unreadable pack left out: {p}")

    out.emit(doc, human)


@repair.command("packs")
@click.argument("pack_ids", nargs=-1, required=True, metavar="PACK_ID...")
@pass_globals
def repair_packs(g: Globals, pack_ids: tuple[str, ...]) -> None:
    """Salvage the readable blobs of damaged packs into new packs and drop the damaged
    packs (their IDs, or unique prefixes, as 'cas check' names them)."""
    out = Output(g)
    repo = g.open()
    with g.locked(repo, exclusive=True, command="repair", deletes=True):
        known = set(repo.pack_sizes()) | {
            p for f in repo.active_index_files().values() for p in f.packs
        }
        chosen = {_one_pack(known, ref) for ref in pack_ids}
        result = salvage_packs(repo, chosen, out.report)
    doc = dataclasses.asdict(result)

    def human() -> None:
        out.line(
            f"salvaged {counted(result.blobs_salvaged, 'blob')} of "
            f"{counted(len(result.packs), 'pack')} into "
            f"{counted(result.packs_written, 'new pack')}; "
            f"{counted(len(result.blobs_lost), 'blob')} lost"
        )
        for blob in result.blobs_lost:
            out.line(f"  lost: {blob}")
        for blob in result.blobs_elsewhere:
            out.line(f"  damaged here, kept in another pack: {blob}")
        if result.blobs_lost:
            out.line(
                "next: back up the same paths again (what the source still has is stored "
                "again), then 'cas repair snapshots' for what it no longer has"
            )

    out.emit(doc, human)


def _one_pack(known: set[bytes], ref: str) -> bytes:
    """The pack a full ID or unique prefix names."""
    ref = ref.lower().removeprefix("data/").rsplit("/", 1)[-1]
    matches = [p for p in known if p.hex().startswith(ref)] if ref else []
    if len(matches) != 1:
        raise UsageError(f"{ref!r} matches {len(matches)} packs; give a pack ID or unique prefix")
    return matches[0]


@repair.command("snapshots")
@click.option("--forget", is_flag=True, help="Remove the damaged originals after rewriting.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be done; write nothing.")
@pass_globals
def repair_snaps(g: Globals, forget: bool, dry_run: bool) -> None:
    """Rewrite snapshots that refer to lost data, with stubs for damaged files."""
    out = Output(g)
    repo = g.open()
    with g.locked(repo, exclusive=False, command="repair", deletes=not dry_run):
        result = repair_snapshots(repo, forget=forget, dry_run=dry_run)
    doc = dataclasses.asdict(result)

    def human() -> None:
        for old, new in result.snapshots_rewritten.items():
            out.line(
                f"snapshot {old[:8]} would be rewritten"
                if dry_run
                else f"snapshot {old[:8]} rewritten as {new[:8]}"
            )
        for p in result.damaged_paths:
            out.line(f"  damaged: {p}")
        verb = "would remove" if dry_run else "removed"
        for sid in result.removed_damaged:
            out.line(f"{verb} damaged snapshot {sid[:8]} (its file cannot be read)")
        out.line(
            f"checked {counted(result.snapshots_checked, 'snapshot')}, "
            f"{'would rewrite' if dry_run else 'rewrote'} {len(result.snapshots_rewritten)}"
        )

    out.emit(doc, human)


@click.command()
@click.option("--remove-all", is_flag=True, help="Remove every lock, even live ones.")
@pass_globals
def unlock(g: Globals, remove_all: bool) -> None:
    """Remove stale locks (those of dead or silent processes); rarely needed."""
    out = Output(g)
    repo = g.open()
    removed = repo.remove_all_locks() if remove_all else repo.remove_stale_locks()
    out.emit({"removed": removed}, lambda: out.line(f"removed {counted(len(removed), 'lock')}"))
