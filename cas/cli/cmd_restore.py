"""``cas restore``: bring a snapshot (or part of it) back onto the filesystem."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any

import click

from cas.cli.common import (
    Globals,
    Output,
    clock_text,
    completion,
    fs_text,
    human_bytes,
    pass_globals,
)
from cas.cli.options import LATEST_AMONG, Workers, snapshot_filter_options, workers_option
from cas.crypto import BlobType
from cas.errors import EXIT_ERROR, EXIT_WARNINGS, CasError, UsageError
from cas.format.snapshot import Snapshot
from cas.fs.patterns import PatternSet
from cas.ipc import usable_cores
from cas.manage.stats import StatsCollector
from cas.repo import Repository
from cas.restore.pool import AUTO_START_AFTER, WriterPool
from cas.restore.restorer import (
    WRITERS_AFTER_FILE_BYTES,
    RestoreOptions,
    Restorer,
    RestoreReporter,
    find_subtree,
)
from cas.selection import SnapshotFilter
from cas.wording import counted


class _Totals:
    """The bytes a restore of a tree will write: the snapshot's own count for a whole
    snapshot, else measured from the trees in a background thread (None until known,
    or when includes or excludes leave it unknown)."""

    def __init__(self, repo: Repository, snap: Snapshot, tree: bytes, whole: bool) -> None:
        self.bytes: int | None = None
        if whole and isinstance(snap.summary.get("bytes_total"), int):
            self.bytes = snap.summary["bytes_total"]
            return
        collector = StatsCollector(lambda t: repo.load_blob(BlobType.TREE, t), lambda _: None)

        def measure() -> None:
            with contextlib.suppress(CasError):
                self.bytes = collector.add_snapshot(b"", tree).restore_size

        threading.Thread(target=measure, name="cas-restore-size", daemon=True).start()


class _Progress(RestoreReporter):
    def __init__(self, out: Output, list_actions: bool, totals: _Totals | None = None) -> None:
        self.out = out
        self.list_actions = list_actions
        self.totals = totals
        self.start = time.monotonic()
        self.bytes = 0

    def action(self, what: str, path: bytes) -> None:
        if self.list_actions:
            self.out.line(f"{what:9} {fs_text(path)}")

    def wants_actions(self) -> bool:
        return self.list_actions

    def bytes_done(self, n: int) -> None:
        self.bytes += n
        self._show()

    def _show(self, force: bool = False) -> None:
        if not (force or self.out.progress_due()):
            return
        elapsed = time.monotonic() - self.start
        total = self.totals.bytes if self.totals is not None else None
        done = f"{human_bytes(self.bytes)} restored"
        if total:
            done = (
                f"{completion(self.bytes, total, elapsed)}  "
                f"{human_bytes(self.bytes)}/{human_bytes(total)} restored"
            )
        self.out.progress(f"[{clock_text(elapsed)}] {done}", force=force)

    def finish(self) -> None:
        """Show the end state before the summary."""
        if self.out.progress_enabled:
            self._show(force=True)

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
    repo = g.open(reading=True)
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
        pool, after, share = _writers(g, repo, opts, workers)
        progress = _Progress(out, dry_run)
        if pool is not None and not (sub.strip("/") or include or exclude) and _large(snap):
            # Certain to be used: started now, so that their start-up (interpreter and
            # imports, about 0.15 s of CPU each) runs beside the index load and the first
            # trees instead of after them, and they take the files from the first.
            pool.actions = progress.wants_actions()  # in their first frame
            pool.start()
            after = 0
        try:
            repo.load_index()
            tree, _ = find_subtree(repo, snap.tree, os.fsencode(sub))
        except BaseException:
            if pool is not None:
                pool.close()
            raise
        connections = g.connections or 4
        if out.shows_progress and not (include or exclude):
            progress.totals = _Totals(repo, snap, tree, whole=not sub.strip("/"))
        restorer = Restorer(
            repo,
            repo.file_digest,
            opts,
            progress,
            writers=pool,
            writers_after=after,
            write_share=share,
            **_loading(g, repo, connections),
        )
        started = time.time()
        try:
            summary = restorer.restore(tree, os.path.abspath(target), os.fsencode(sub.rstrip("/")))
            progress.finish()
        finally:
            if pool is not None:
                g.helper_requests.append(pool.requests())
    doc: dict[str, Any] = {
        "id": sid.hex(),
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
) -> tuple[WriterPool | None, int, bool]:
    """The writer processes for this restore, after how many files they start (with
    the default count, not for a small restore: starting them costs more than it
    saves), and whether this process writes files too: when ``--workers`` asks for
    fewer writers than there are usable cores, it writes the files of the parts of
    packs it takes (``Restorer(write_share=True)``).  The default is one writer per
    core without it: on two cores, main + one writer used a fifth less memory but
    took 6.2 s against 5.3 s for the linux restore on a quiet machine
    (docs/performance.md, "The main process writes a share").
    """
    plan = None if opts.dry_run else g.helpers(repo, workers.count)
    if plan is None:
        return None, 0, False
    share = plan.count < usable_cores()
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
    return pool, (0 if workers.explicit else AUTO_START_AFTER), share


def _large(snap: Snapshot) -> bool:
    """Whether a whole restore of ``snap`` starts writer processes however they are
    asked for: its backup's summary counts at least ``AUTO_START_AFTER`` files or as
    many times 256 KiB (what ``Restorer``'s ``writers_after`` waits for)."""
    s = snap.summary
    counts = [s.get(k) for k in ("files_new", "files_changed", "files_unchanged")]
    files = sum(c for c in counts if type(c) is int)
    size = s.get("bytes_total")
    big = type(size) is int and size >= AUTO_START_AFTER * WRITERS_AFTER_FILE_BYTES
    return files >= AUTO_START_AFTER or big


# Loading ahead in this process from a local repository (no --connections): one thread,
# this far ahead, in reads this large.  A linux restore to tmpfs on one core peaked at
# 84-89 MiB instead of 145-159 (four threads, 32 MiB ahead in reads of up to 8 MiB) for
# no more CPU; without a thread (as a writer process loads) it took four times as long.
LOCAL_THREADS = 1
LOCAL_BUDGET = 8 << 20
LOCAL_MAX_REQUEST = 1 << 20


def _loading(g: Globals, repo: Repository, connections: int) -> dict[str, int]:
    """How this process loads blobs ahead: from a local repository (no --connections) on
    ``LOCAL_THREADS`` with ``LOCAL_BUDGET``, else on ``connections`` threads."""
    if repo.is_local and not g.connections:
        return {
            "connections": LOCAL_THREADS,
            "budget": LOCAL_BUDGET,
            "max_request": LOCAL_MAX_REQUEST,
        }
    return {"connections": connections}


def _human(out: Output, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    verb = "would restore" if doc["dry_run"] else "restored"
    out.line(
        f"{verb} snapshot {doc['id'][:8]} to {doc['target']}: "
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
