"""``cas mount``: browse the snapshots read-only through FUSE."""

from __future__ import annotations

import errno
import os
import shlex
import stat
import threading

import click

from cas.cli.common import Globals, Output, pass_globals
from cas.crypto import BlobType
from cas.errors import BlobNotFound, CasError, UsageError
from cas.format.snapshot import Snapshot
from cas.mount.vfs import CACHE_BYTES, SnapshotView
from cas.repo.repository import Repository


def register(cli: click.Group) -> None:
    """Add the command."""
    cli.add_command(mount)


class StaleMount(CasError):
    """{mountpoint} is a stale FUSE mount (the process that served it is gone); clear it with `fusermount3 -u {quoted}` (or `umount -l {quoted}`) and mount again"""  # noqa: E501


class RepositoryStore:
    """The view's :class:`cas.mount.vfs.SnapshotStore` over an open repository.

    Backups may add snapshots while the mount runs (they take shared locks
    too).  A snapshot is written after the index files naming its blobs, so
    reading the new index files when a new snapshot shows up makes its
    blobs findable.  The master index is not thread-safe: it is only
    changed under ``_lock``, and a lookup that misses while it changes is
    retried under the lock.
    """

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        # Listed before the first load, so an index file written meanwhile is read again
        # (harmless: known blobs keep their location) rather than never.
        self._index_files = set(repo.index_files())
        repo.load_index()

    def snapshot_ids(self) -> list[bytes]:
        return self.repo.snapshot_ids()

    def load_snapshot(self, snapshot_id: bytes) -> Snapshot:
        snap = self.repo.load_snapshot(snapshot_id)
        with self._lock:
            self._read_new_index_files()
        return snap

    def load_blob(
        self, blob_type: BlobType, blob_id: bytes, raw_length: int | None = None
    ) -> bytes:
        try:
            return self.repo.load_blob(blob_type, blob_id, raw_length)
        except BlobNotFound:
            with self._lock:
                self._read_new_index_files()
                return self.repo.load_blob(blob_type, blob_id, raw_length)

    def blob_id(self, blob_type: BlobType, data: bytes | memoryview) -> bytes:
        return self.repo.blob_id(blob_type, data)

    def stored_size(self, blob_id: bytes) -> int | None:
        try:
            return self.repo.locate(blob_id).length
        except BlobNotFound:
            return None

    def _read_new_index_files(self) -> None:
        for fid in sorted(set(self.repo.index_files()) - self._index_files):
            index_file = self.repo.read_index_file(fid)
            for pack_id, entries in index_file.packs.items():
                self.repo.index.add_pack(
                    pack_id, ((e.blob_id, e.offset, e.length) for e in entries)
                )
            self._index_files.add(fid)


def check_mountpoint(path: str) -> None:
    """Refuse a missing, non-directory, already mounted or stale mount point."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise StaleMount(mountpoint=path, quoted=shlex.quote(path)) from None
        if e.errno == errno.ENOENT:
            raise UsageError(f"mount point {path} does not exist") from None
        raise CasError(f"mount point {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mount point {path} is not a directory")
    if os.path.ismount(path):
        raise CasError(f"{path} is already a mount point")


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=str))
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other users use the mount (as root, or with user_allow_other in /etc/fuse.conf); "
    "the recorded permissions still apply.",
)
@click.option("--host", multiple=True, help="Only snapshots of this host.")
@click.option("--tag", multiple=True, help="Only snapshots with this tag.")
@click.option(
    "--cache-size",
    type=click.IntRange(min=1),
    default=CACHE_BYTES >> 20,
    show_default=True,
    metavar="MIB",
    help="Memory for decrypted file content.",
)
@click.option("--debug-fuse", is_flag=True, hidden=True, help="libfuse's request log on stderr.")
@pass_globals
def mount(
    g: Globals,
    mountpoint: str,
    allow_other: bool,
    host: tuple[str, ...],
    tag: tuple[str, ...],
    cache_size: int,
    debug_fuse: bool,
) -> None:
    """Browse snapshots read-only at MOUNTPOINT until Ctrl-C, SIGTERM or `fusermount3 -u`.

    MOUNTPOINT holds snapshots/<time>/ (and snapshots/latest), ids/<id>/,
    hosts/<host>/<time>/ and tags/<tag>/<time>/; new snapshots appear
    within seconds.  Runs in the foreground.
    """
    from cas.mount.fusefs import load_binding, serve

    out = Output(g)
    check_mountpoint(mountpoint)
    load_binding()  # no libfuse: say so before asking for a password
    repo = g.open()
    with g.locked(repo, exclusive=False, command="mount"):
        view = SnapshotView(
            RepositoryStore(repo), hosts=host, tags=tag, cache_bytes=cache_size << 20
        )
        try:
            view.refresh()
            for message in view.errors:
                out.warn(f"{message}; not shown")
            count = view.snapshot_count()

            def ready() -> None:
                quoted = shlex.quote(mountpoint)
                out.line(
                    f"{count} snapshots mounted at {mountpoint}; "
                    f"Ctrl-C or `fusermount3 -u {quoted}` unmounts"
                )

            serve(view, mountpoint, allow_other=allow_other, debug=debug_fuse, on_ready=ready)
        finally:
            view.close()
    out.emit(
        {"mountpoint": mountpoint, "snapshots": count, "unmounted": True},
        lambda: out.line(f"unmounted {mountpoint}"),
    )
