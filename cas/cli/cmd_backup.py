"""``cas backup``: save paths (or standard input) as a new snapshot."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import click

from cas import __version__
from cas.backup import anomaly
from cas.cli.common import (
    Globals,
    Output,
    fs_text,
    human_bytes,
    pass_globals,
)
from cas.cli.options import ExcludeOptions, Workers, exclude_options, workers_option
from cas.crypto import BlobType
from cas.errors import EXIT_WARNINGS, UsageError
from cas.format import compress
from cas.selection import split_tags
from cas.wording import counted

if TYPE_CHECKING:
    # Imported in ``backup`` once the repository is open: the key derivation (Argon2id,
    # 32 MiB) comes on top of what the process has imported by then
    # (tests/test_unlock_heap.py).
    from cas.backup.dryrun import DryRunWriter
    from cas.backup.localtrees import LocalTrees
    from cas.backup.pool import SaverPool
    from cas.format.snapshot import Snapshot
    from cas.protocols import BlobWriter
    from cas.repo import Repository
    from cas.repo.filescache import LastBackup


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=bytes))
@exclude_options
@click.option("--stdin", "use_stdin", is_flag=True, help="Back up standard input as one file.")
@click.option("--stdin-filename", default="stdin", show_default=True, help="File name for --stdin.")
@click.option("--tag", multiple=True, help="Tag the snapshot (repeatable; a,b is two tags).")
@click.option("--host", default=None, help="Host name to record (default: this machine's).")
@click.option(
    "--parent",
    default=None,
    help="Snapshot to compare with (default, and 'latest': the latest with the same "
    "host, as --host gives it, and the same paths).",
)
@click.option("--force", is_flag=True, help="Read every file, even unchanged ones.")
@click.option(
    "--compression",
    default="auto",
    show_default=True,
    metavar="auto|off|fastest|max|1..22",
    help="zstd level for new blobs: auto is 3 with incompressible blobs stored as they are.",
)
@click.option("--dry-run", "-n", is_flag=True, help="Do everything but write to the repository.")
@click.option(
    "--no-scan",
    is_flag=True,
    help="Do not count the source first (the status line then has no totals, "
    "percentage or time left).",
)
@click.option(
    "--anomaly-thresholds",
    default=None,
    metavar="off|NAME=VALUE,...",
    help="When a change is flagged as unusual (exit 3): 'off', or e.g. "
    "modified=0.6,min-files=100 (docs/anomalies.md). Env: CAS_ANOMALY_THRESHOLDS.",
)
@workers_option("read, chunk and store new and changed files")
@pass_globals
def backup(
    g: Globals,
    paths: tuple[bytes, ...],
    excludes: ExcludeOptions,
    use_stdin: bool,
    stdin_filename: str,
    tag: tuple[str, ...],
    host: str | None,
    parent: str | None,
    force: bool,
    compression: str,
    dry_run: bool,
    no_scan: bool,
    anomaly_thresholds: str | None,
    workers: Workers,
) -> None:
    """Back up PATHs into a new snapshot; only data the repository lacks is uploaded.

    On a terminal (or with -v) a background scan counts the files and bytes to
    back up first, so the status line shows totals, a percentage and the time
    left; --no-scan skips it.
    """
    verbose = g.verbose  # -v (-vv) before or after the command name: each entry as decided
    out = Output(g)
    level = compression_level(compression)
    if use_stdin == bool(paths):
        raise UsageError("give PATHs to back up, or --stdin (not both)")
    if use_stdin and ("/" in stdin_filename or not stdin_filename):
        raise UsageError("--stdin-filename must be a plain file name")
    abs_paths = [os.path.abspath(p) for p in paths]
    for p in abs_paths:
        if not os.path.lexists(p):
            raise UsageError(f"{fs_text(p)} does not exist")
    build_opts = excludes.backup_options_later(force=force)  # UsageError now, if any
    thresholds = anomaly.Thresholds.from_env(anomaly_thresholds)
    scan = None
    if out.shows_progress and not (no_scan or use_stdin):
        from cas.backup.scanner import SourceScan

        opts = build_opts()
        scan = SourceScan(abs_paths, opts)  # started now: it counts while the repository opens
        scan.start()
    repo = g.open(write_only=True)
    from cas.backup.archiver import Archiver, stdin_node
    from cas.backup.dryrun import DryRunWriter
    from cas.backup.localtrees import LocalTrees
    from cas.backup.pool import AUTO_START_BYTES, AUTO_START_FILES, WorkerFailed
    from cas.chunking.worker import ChunkWorker
    from cas.cli.backup_progress import BackupProgress
    from cas.cli.nodeview import anomaly_doc
    from cas.format.snapshot import Snapshot
    from cas.format.tree import encode_tree
    from cas.repo.filescache import LastBackup

    opts = build_opts()
    repo.compression_level = level
    hostname = host or socket.gethostname()
    snap_paths = [b"/" + stdin_filename.encode()] if use_stdin else abs_paths
    # A write-only key (spec §4.4) cannot read snapshots or trees: it compares with its
    # own last backup of these paths, kept in the client state (the files cache).
    files_cache = None
    if not repo.keys.CAN_OPEN_DATA:
        if parent not in (None, "latest"):
            raise UsageError(
                "--parent needs a full key: a write-only key cannot read snapshots, and "
                "compares with its own last backup of the same host and paths"
            )
        files_cache = None if use_stdin else repo.files_cache(hostname, snap_paths)
    chunker = repo.chunker()
    # Large files are chunked in a helper process (fastcdc holds the GIL).
    helper = ChunkWorker(repo.keys, chunker.params)
    pool = None if dry_run or use_stdin else _pool(g, repo, workers)
    with (
        g.locked(repo, exclusive=False, command="backup"),
        contextlib.closing(helper),
        _closing_pool(g, pool),
    ):
        repo.load_index()
        dry = DryRunWriter(repo) if dry_run else None
        writer: BlobWriter = dry or repo
        local: LocalTrees | None = None
        last: LastBackup | None = None
        history: list[Mapping[str, Any]]
        if not repo.keys.CAN_OPEN_DATA:
            last = files_cache.load(repo.keys) if files_cache is not None else None
            local = LocalTrees(writer, last.trees if last is not None else {})
            writer = local
            parent_id = last.snapshot if last is not None else None
            parent_tree = last.tree if last is not None else None
            parent_files = last.files if last is not None else None
            history = list(last.history) if last is not None else []
        else:
            parent_id, parent_snap, snaps = _find_parent(repo, parent, hostname, snap_paths)
            parent_tree = parent_snap.tree if parent_snap is not None else None
            parent_files = anomaly.file_count(parent_snap) if parent_snap is not None else None
            history = anomaly.history_of(snaps)
        progress = BackupProgress(out, verbose, scan)
        after = (0, 0) if workers.explicit else (AUTO_START_FILES, AUTO_START_BYTES)
        archiver = Archiver(
            writer, chunker, opts, progress, offload=helper, pool=pool, pool_after=after
        )
        started = time.time()
        if use_stdin:
            node = stdin_node(stdin_filename.encode(), sys.stdin.buffer.read, archiver)
            tree, _ = writer.save_blob(BlobType.TREE, encode_tree([node]))
        else:
            try:
                tree = archiver.backup(abs_paths, parent_tree)
                progress.finish()
            except WorkerFailed:
                # What the workers stored goes into an index file: the next run reuses it.
                with contextlib.suppress(Exception):
                    repo.flush()
                raise
        summary = archiver.summary.as_dict()
        summary["workers"] = archiver.workers_used
        stats = repo.stats if not dry_run else None
        snap = Snapshot(
            time_ns=int(started * 1e9),
            tree=tree,
            paths=snap_paths,
            hostname=hostname,
            username=getpass.getuser(),
            uid=os.getuid(),
            gid=os.getgid(),
            tags=sorted(set(split_tags(tag))),
            parent=parent_id,
            program=f"cas {__version__}",
            summary=summary,
        )
        summary["duration"] = round(time.time() - started, 3)
        snap.summary = summary
        found: list[anomaly.Anomaly] = []
        if not use_stdin:
            archiver.changes.new_bytes = archiver.summary.data_added
            found = _judge(repo, archiver.changes, parent_files, history, thresholds, dry_run)
            snap.extra["changes"] = archiver.changes.as_doc()
            if found:
                snap.extra["anomalies"] = [a.as_doc() for a in found]
        snapshot_id = writer.save_snapshot(snap)
        if stats is not None:
            summary["data_added_stored"] = stats.stored_bytes
            summary["packs_written"] = stats.packs
        if files_cache is not None and local is not None and dry is None:
            kept = [dict(h) for h in history] + ([] if found else [snap.extra["changes"]])
            files_cache.save(
                LastBackup(
                    snapshot_id, snap.time_ns, tree, anomaly.file_count(snap), local.saved, kept
                )
            )
    doc: dict[str, Any] = {
        "id": None if dry_run else snapshot_id.hex(),
        "dry_run": dry_run,
        "parent": parent_id.hex() if parent_id else None,
        "summary": summary,
        "warnings": out.warnings,
        "anomalies": [anomaly_doc(a, judged=True) for a in found],
    }
    for a in found:
        out.warn(f"unusual backup: {a.message}", record=False)
    for fid, why in sorted(repo.damaged_index_files.items()):
        # Its blobs were unknown to this backup, which stored again what it needed.
        out.warn(
            f"index file {fid.hex()[:8]} skipped, it cannot be read ({why}); "
            "'cas repair index' replaces it"
        )
    if dry is not None:
        doc["estimate"] = _estimate(repo, dry)
    out.emit(doc, lambda: _human(out, doc))
    if out.warnings or found:
        sys.exit(EXIT_WARNINGS)


def _pool(g: Globals, repo: Repository, workers: Workers) -> SaverPool | None:
    """The worker processes of this backup (None: everything in this process)."""
    plan = g.helpers(repo, workers.count)
    if plan is None:
        return None
    from cas.backup.pool import SaverPool

    params = repo.chunker().params
    return SaverPool(
        plan.spec,
        plan.count,
        claim=repo.claim_blobs,
        adopt=repo.adopt_pack,
        add_sealed=repo.add_sealed,
        level=repo.compression_level,
        pack_size=repo.config.pack_size,
        chunker=(params.min_size, params.avg_size, params.max_size, params.algorithm),
        # Uploads per worker: two locally (one packs while the other syncs), else a share.
        connections=plan.per_process(1),
    )


@contextlib.contextmanager
def _closing_pool(g: Globals, pool: SaverPool | None) -> Iterator[None]:
    """Stop the workers at the end, and count their storage requests."""
    try:
        yield
    finally:
        if pool is not None:
            pool.close()
            g.helper_requests.append(pool.requests())


COMPRESSION_NAMES = {"auto": compress.DEFAULT_LEVEL, "off": None, "fastest": 1, "max": 19}


def compression_level(name: str) -> int | None:
    """The zstd level a ``--compression`` value names (None: store as is)."""
    if name in COMPRESSION_NAMES:
        return COMPRESSION_NAMES[name]
    if name.isdigit() and 1 <= int(name) <= 22:
        return int(name)
    raise UsageError(f"--compression {name!r}: use auto, off, fastest, max or a level 1..22")


def _find_parent(
    repo: Repository, ref: str | None, hostname: str, paths: list[bytes]
) -> tuple[bytes | None, Snapshot | None, list[Snapshot]]:
    """The parent: the snapshot ``ref`` names, else (no ``ref`` or 'latest') the latest
    snapshot of this host (--host) with the same paths, as restic chooses it; and those
    snapshots of the host and paths, oldest first (the history of the anomaly check)."""
    same = [
        (sid, snap)
        for sid, snap in repo.recorded_snapshots()
        if snap.hostname == hostname and sorted(snap.paths) == sorted(paths)
    ]
    history = [snap for _, snap in same]
    if ref and ref != "latest":
        sid, snap = repo.find_snapshot(ref)
        return sid, snap, history
    return (same[-1][0], same[-1][1], history) if same else (None, None, history)


def _judge(
    repo: Repository,
    changes: anomaly.Changes,
    parent_files: int | None,
    history: list[Mapping[str, Any]],
    thresholds: anomaly.Thresholds,
    dry_run: bool,
) -> list[anomaly.Anomaly]:
    """Complete this backup's figures and flag what is far outside the history (the
    ``changes`` of earlier unflagged backups of the host and paths, oldest first)."""
    changes.parent_files = parent_files
    if not dry_run:
        repo.wait()  # every new blob sealed: its compressed size is known
        changes.new_bytes = repo.stats.data_raw_bytes
        if repo.compression_level is not None:
            changes.incompressible_bytes = repo.stats.data_incompressible_bytes
    return anomaly.detect(changes.as_doc(), history, thresholds)


def _estimate(repo: Repository, writer: DryRunWriter) -> dict[str, Any]:
    """What the backup this dry run stood in for would store, upload and cost."""
    return writer.estimate(repo.price_table(), repo.storage_class()).as_dict()


def _human_estimate(out: Output, e: dict[str, Any]) -> None:
    cold = f" (data packs in {e['storage_class']})" if e["storage_class"] != "STANDARD" else ""
    approx = "about " if e["compression_sampled"] else ""
    upload, storage = _usd(e["upload_cost_usd"]), _usd(e["storage_cost_usd_per_month"])
    out.line(
        f"estimate: {approx}{human_bytes(e['bytes_stored'])} stored in "
        f"{counted(e['data_packs'] + e['tree_packs'], 'pack')}{cold}; "
        f"{counted(e['put_requests'], 'PUT request')}; "
        f"upload {upload}, storage {storage}/month"
    )


def _usd(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 1 else f"${amount:.6f}".rstrip("0").rstrip(".")


def _human(out: Output, doc: dict[str, Any]) -> None:
    s = doc["summary"]
    if doc["parent"]:
        out.line(f"using parent snapshot {doc['parent'][:8]}")
    out.line(
        f"files: {s['files_new']} new, {s['files_changed']} changed, "
        f"{s['files_unchanged']} unchanged"
    )
    out.line(
        f"dirs:  {s['dirs_new']} new, {s['dirs_changed']} changed, {s['dirs_unchanged']} unchanged"
    )
    stored = s.get("data_added_stored")
    stored_txt = f" ({human_bytes(stored)} stored)" if stored is not None else ""
    verb = "would add" if doc["dry_run"] else "added"
    out.line(f"{verb} {human_bytes(s['data_added'])} to the repository{stored_txt}")
    out.line(
        f"processed {human_bytes(s['bytes_total'])}, read {human_bytes(s['bytes_read'])} "
        f"in {s['duration']:.1f}s"
    )
    if "estimate" in doc:
        _human_estimate(out, doc["estimate"])
    if doc["id"]:
        out.line(f"snapshot {doc['id'][:8]} saved")
    if doc["anomalies"]:
        kinds = ", ".join(a["kind"] for a in doc["anomalies"])
        out.line(
            f"flagged as unusual ({kinds}; see the warnings): forget keeps the snapshot "
            "before it until told --allow-anomalous"
        )
    if doc["warnings"]:
        n = len(doc["warnings"])
        out.line(f"{n} warning{'s' if n != 1 else ''}: some entries were not saved (see above)")
