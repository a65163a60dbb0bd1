"""``cas dump``: a file of a snapshot to stdout, or a directory as a tar or zip stream."""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from typing import Any, BinaryIO

import click

from cas import sparse
from cas.browse.dumper import Blobs, Dumper, DumpSummary, failing
from cas.browse.nav import lookup
from cas.cli.common import Globals, Output, human_bytes, pass_globals
from cas.cli.nodeview import inside, json_path, path_text, split_ref
from cas.cli.options import LATEST_AMONG, snapshot_filter_options
from cas.crypto import BlobType
from cas.errors import BlobNotFound, CasError, UsageError
from cas.repo import Repository
from cas.selection import SnapshotFilter
from cas.wording import counted


@click.command()
@click.argument("snapshot", metavar="SNAPSHOT[:/path]")
@click.argument("path", type=click.Path(path_type=bytes), required=False)
@click.option(
    "--archive",
    "-a",
    type=click.Choice(["tar", "zip"]),
    default=None,
    help="Archive format for a directory (default tar); given for a file, the file is "
    "archived too.",
)
@click.option(
    "--target",
    "-t",
    type=click.Path(dir_okay=False, path_type=bytes),
    help="Write to this file instead of stdout.",
)
@snapshot_filter_options(only=LATEST_AMONG)
@pass_globals
def dump(
    g: Globals,
    snapshot: str,
    path: bytes | None,
    archive: str | None,
    target: bytes | None,
    selection: SnapshotFilter,
) -> None:
    """Write PATH of a snapshot to stdout: a file's bytes as they are (also the /stdin
    file of a `backup --stdin`), a directory (or a symlink, device, fifo) as a tar or
    zip archive.

    The tar keeps what `tar --xattrs --xattrs-include='*' --acls --numeric-owner -xpf`
    restores as root: owners (ids and names), modes with setuid/setgid/sticky,
    nanosecond times, symlinks, hardlinks, devices, fifos, xattrs, POSIX ACLs and
    holes (GNU sparse 1.0).  Not in it: sockets, inode flags (chattr), ctimes.
    GNU tar sets atimes to the time of extraction unless given -G.  With --json
    (and --target) a summary is printed.
    """
    out = Output(g)
    ref, base = split_ref(snapshot)
    where = base if path is None else inside(base, path)
    if g.json and target is None:
        raise UsageError("--json needs --target: the dump itself goes to stdout")
    repo = g.open(reading=True)
    with g.locked(repo, exclusive=False, command="dump"):
        sid, snap = repo.find_snapshot(ref, selection)
        entry = lookup(repo, snap.tree, where)
        as_file = entry.node is not None and entry.node.type == "file" and archive is None
        if not as_file and target is None and sys.stdout.isatty():
            raise UsageError("stdout is a terminal: redirect it or give --target FILE")

        def on_error(p: bytes, error: CasError) -> None:
            g.degraded = True
            out.warn(
                f"{path_text(p)} is empty in the archive, its directory cannot be read: {error}"
            )

        dumper = Dumper(_blobs(repo), on_error)
        with ExitStack() as stack:
            stack.callback(dumper.close)
            sink: BinaryIO = (
                stack.enter_context(open(target, "wb")) if target else sys.stdout.buffer
            )
            if as_file:
                assert entry.node is not None
                summary = DumpSummary(members=1)
                with failing(entry.path):
                    for chunk in dumper.content(entry.node):
                        sink.write(chunk)
                        summary.content_bytes += len(chunk)
                sink.flush()
            elif archive == "zip":
                summary = dumper.zip(entry, sink)
            else:
                summary = dumper.tar(entry, sink)
    for p, why in summary.skipped:
        click.echo(f"note: not in the archive: {path_text(p)} ({why})", err=True)
    doc: dict[str, Any] = {
        "id": sid.hex(),
        **json_path(where),
        "format": "file" if as_file else (archive or "tar"),
        "members": summary.members,
        "bytes": summary.content_bytes,
        "sparse_files": summary.sparse_files,
        "hardlinks": summary.hardlinks,
        "skipped": [{**json_path(p), "why": why} for p, why in summary.skipped],
        "warnings": out.warnings,
    }
    if target is not None:  # stdout is free for a summary
        doc["target"] = os.fsdecode(target)
        what = (
            "the file" if as_file else f"a {doc['format']} of {counted(summary.members, 'entry')}"
        )
        out.emit(
            doc,
            lambda: out.line(
                f"wrote {what} ({human_bytes(summary.content_bytes)}) to {path_text(target)}"
            ),
        )


def _blobs(repo: Repository) -> Blobs:
    zeros = sparse.ZeroIds(lambda data: repo.blob_id(BlobType.DATA, data))

    def stored_size(blob_id: bytes) -> int | None:
        try:
            return repo.locate(blob_id).length
        except BlobNotFound:
            return None

    return Blobs(repo, zeros.is_zero, stored_size)
