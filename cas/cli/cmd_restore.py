"""``cas restore``: bring a snapshot (or part of it) back onto the filesystem."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from cas.cli.common import Globals, Output, fs_text, human_bytes, pass_globals
from cas.cli.options import LATEST_AMONG, Workers, snapshot_filter_options, workers_option
from cas.errors import EXIT_ERROR, EXIT_WARNINGS, UsageError
from cas.fs.patterns import PatternSet
from cas.repo import Repository
from cas.restore.pool import AUTO_START_AFTER, WriterPool
from cas.restore.restorer import RestoreOptions, Restorer, RestoreReporter, find_subtree
from cas.selection import SnapshotFilter
from cas.wording import counted


def register(cli: click.Group) -> None:
    """Add the command."""
    cli.add_command(restore)


class _Progress(RestoreReporter):
    def __init__(self, out: Output, list_actions: bool) -> None:
        self.out = out
        self.list_actions = list_actions
        self.start = time.monotonic()
        self.bytes = 0

    def action(self, what: str, path: bytes) -> None:
        if self.list_actions:
            self.out.line(f"{what:9} {fs_text(path)}")

    def bytes_done(self, n: int) -> None:
        self.bytes += n
        if not self.out.progress_due():
            return
        elapsed = time.monotonic() - self.start
        self.out.progress(
            f"[{int(elapsed) // 60}:{int(elapsed) % 60:02d}] {human_bytes(self.bytes)} restored"
        )

    def warning(self, message: str) -> None:
        self.out.warn(message)


@click.command()
@click.argument("snapshot_arg", required=False, metavar="[SNAPSHOT]")
@click.option(
    "--snapshot",
    "-s",
    "snapshot_opt",
    help="The snapshot, as the SNAPSHOT argument says (give one or the other).",
)
@snapshot_filter_options(only=LATEST_AMONG)
@click.option(
    "--target",
    "-t",
    required=True,
    type=click.Path(path_type=bytes),
    help="Directory to restore into.",
)
@click.option("--include", "-i", multiple=True, help="Restore only matching paths.")
@click.option("--exclude", "-e", multiple=True, help="Do not restore matching paths.")
@click.option(
    "--numeric-owner",
    is_flag=True,
    help="Restore owners by id, ignoring names (not as root: warn of each owner the "
    "system refuses; without it those are skipped silently, as restic does).",
)
@click.option(
    "--verify", is_flag=True, help="Re-read restored files and compare with the snapshot."
)
@click.option(
    "--delete", is_flag=True, help="Remove files in the target that are not in the snapshot."
)
@click.option("--dry-run", "-n", is_flag=True, help="Only list what would change.")
@workers_option("write files")
@pass_globals
def restore(
    g: Globals,
    snapshot_arg: str | None,
    snapshot_opt: str | None,
    selection: SnapshotFilter,
    target: bytes,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    numeric_owner: bool,
    verify: bool,
    delete: bool,
    dry_run: bool,
    workers: Workers,
) -> None:
    """Restore SNAPSHOT into --target: a snapshot of /a/b lands in TARGET/a/b.

    SNAPSHOT is an ID (a unique prefix) or 'latest' (the latest one, among those of
    --host, --tag and --path when given), optionally followed by :/path/inside to
    restore only that subtree's contents.
    """
    out = Output(g)
    if snapshot_arg and snapshot_opt:
        raise UsageError(
            f"two snapshots given ({snapshot_arg!r} and --snapshot {snapshot_opt!r}): "
            "give the snapshot once"
        )
    ref = snapshot_opt or snapshot_arg
    if not ref:
        raise UsageError("which snapshot? give its ID or 'latest' (restore latest --target DIR)")
    ref, _, sub = ref.partition(":")
    repo = g.open()
    opts = RestoreOptions(
        includes=PatternSet([os.fsencode(p) for p in include]),
        excludes=PatternSet([os.fsencode(p) for p in exclude]),
        numeric_owner=numeric_owner,
        dry_run=dry_run,
        delete=delete,
        verify=verify,
    )
    with g.locked(repo, exclusive=False, command="restore"):
        sid, snap = repo.find_snapshot(ref, selection)
        repo.load_index()
        tree, _ = find_subtree(repo, snap.tree, os.fsencode(sub))
        connections = g.connections or 4
        pool, after = _writers(g, repo, opts, workers)
        restorer = Restorer(
            repo,
            repo.file_digest,
            opts,
            _Progress(out, dry_run),
            connections=connections,
            writers=pool,
            writers_after=after,
        )
        started = time.time()
        try:
            summary = restorer.restore(tree, os.path.abspath(target), os.fsencode(sub.rstrip("/")))
        finally:
            if pool is not None:
                g.helper_requests.append(pool.requests())
    doc: dict[str, Any] = {
        "snapshot_id": sid.hex(),
        "target": fs_text(os.path.abspath(target)),
        "dry_run": dry_run,
        "summary": {**summary.as_dict(), "duration": round(time.time() - started, 3)},
        "warnings": out.warnings,
    }
    out.emit(doc, lambda: _human(out, doc))
    if summary.failed:
        sys.exit(EXIT_ERROR)
    if out.warnings:
        sys.exit(EXIT_WARNINGS)


def _writers(
    g: Globals, repo: Repository, opts: RestoreOptions, workers: Workers
) -> tuple[WriterPool | None, int]:
    """The writer processes for this restore and after how many files they start: with
    the default count, not for a small restore (starting them costs more than it saves)."""
    plan = None if opts.dry_run else g.helpers(repo, workers.count)
    if plan is None:
        return None, 0
    pool = WriterPool(
        plan.spec,
        plan.count,
        numeric_owner=opts.numeric_owner,
        verify=opts.verify,
        delete=opts.delete,
        # Reading a local repository, a writer reads its blobs itself, without
        # loading threads: on the linux restore four threads per writer took 10%
        # longer than one, and one 5% longer than none (they contend for its GIL).
        connections=plan.per_process(0),
    )
    return pool, (0 if workers.explicit else AUTO_START_AFTER)


def _human(out: Output, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    verb = "would restore" if doc["dry_run"] else "restored"
    out.line(
        f"{verb} snapshot {doc['snapshot_id'][:8]} to {doc['target']}: "
        f"{counted(s['files_restored'], 'file')} ({human_bytes(s['bytes_written'])}), "
        f"{s['files_unchanged']} unchanged, {counted(s['dirs'], 'dir')}, "
        f"{counted(s['symlinks'], 'symlink')}, {s['special']} special, "
        f"{counted(s['hardlinks'], 'hardlink')} in {s['duration']:.1f}s"
    )
    if s["deleted"]:
        verb = "would delete" if doc["dry_run"] else "deleted"
        out.line(f"{verb} {counted(s['deleted'], 'entry')}")
    if s["verified"]:
        out.line(f"verified {counted(s['verified'], 'file')}")
    if s["failed"]:
        out.line(f"{counted(len(s['failed']), 'entry')} could not be restored:")
        for p in s["failed"]:
            out.line(f"  {p}")
