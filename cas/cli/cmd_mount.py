"""``cas mount``: browse the snapshots read-only through FUSE."""

from __future__ import annotations

import errno
import os
import shlex
import stat

import click

from cas.cli.common import Globals, Output, pass_globals
from cas.cli.options import snapshot_filter_options
from cas.errors import CasError, UsageError
from cas.mount.vfs import CACHE_BYTES, SnapshotView
from cas.repo.store import RepositoryStore
from cas.selection import SnapshotFilter
from cas.wording import counted


class StaleMount(CasError):
    """{mountpoint} is a stale FUSE mount (the process that served it is gone); clear it with `fusermount3 -u {quoted}` (or `umount -l {quoted}`) and mount again"""  # noqa: E501


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
@snapshot_filter_options()
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
    selection: SnapshotFilter,
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
    repo = g.open(reading=True)
    with g.locked(repo, exclusive=False, command="mount"):
        view = SnapshotView(
            RepositoryStore(repo), selection=selection, cache_bytes=cache_size << 20
        )
        try:
            view.refresh()
            for message in view.errors:
                out.warn(f"{message}; not shown")
            count = view.snapshot_count()

            def ready() -> None:
                out.message(
                    {"message_type": "mounted", "mountpoint": mountpoint, "snapshots": count}
                )
                quoted = shlex.quote(mountpoint)
                out.line(
                    f"{counted(count, 'snapshot')} mounted at {mountpoint}; "
                    f"Ctrl-C or `fusermount3 -u {quoted}` unmounts"
                )

            serve(view, mountpoint, allow_other=allow_other, debug=debug_fuse, on_ready=ready)
        finally:
            view.close()
    out.emit(
        {"mountpoint": mountpoint, "snapshots": count, "unmounted": True},
        lambda: out.line(f"unmounted {mountpoint}"),
    )
