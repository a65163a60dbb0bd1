"""FUSE adapter: serves a :class:`cas.mount.vfs.SnapshotView` through libfuse 3 (mfusepy).

Only translation lives here: paths to inodes, :class:`cas.mount.vfs.Attr` to stat
dicts, raw byte names to and from mfusepy's ``str`` (UTF-8 with
surrogateescape, which round-trips any bytes).  The mount is read-only
(``ro``: the kernel answers every write with EROFS), uses the view's inode
numbers (``use_ino``, so hardlinks share one), checks permissions in the
kernel against the recorded modes and POSIX ACLs (``default_permissions``
and the POSIX ACL capability) and lets the kernel keep file pages and
attributes cached (content never changes).  ``lsattr`` gets the recorded
inode flags through the FS_IOC_GETFLAGS ioctl, and ``lseek`` answers SEEK_DATA and
SEEK_HOLE from the holes the view finds (so ``cp`` and ``rsync -S`` keep them).

Directory listings carry each entry's attributes (readdirplus), so a
``find`` or ``ls -l`` costs one request per directory rather than one per
name; mfusepy has no hook for that, so :func:`_fuse_class` overrides its
libfuse 3 readdir callback (mfusepy is pinned below 4 for this).

libfuse runs the request loop in the foreground on several threads and
handles SIGINT, SIGTERM and SIGHUP itself: the loop stops and the
filesystem is unmounted before :func:`serve` returns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import time
from collections.abc import Callable
from typing import Any

from cas.errors import CasError
from cas.mount.vfs import Attr, SnapshotView

__all__ = ["FS_IOC_GETFLAGS", "FuseUnavailable", "MountFailed", "load_binding", "serve"]

# _IOR('f', 1, long) and its 32-bit twin: what lsattr asks.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC32_GETFLAGS = 0x80046601

# Kernel caching of names and attributes.  Snapshot content never changes;
# the top directories change when backups are added, and are re-read on
# every readdir and on every lookup of a name the kernel does not know.
ATTR_TIMEOUT = 60.0
ENTRY_TIMEOUT = 60.0

MAX_IDLE_THREADS = 10  # libfuse's default, given explicitly
PLUS_MEMORY = 1 << 16  # directories whose last readdirplus time is remembered

# fuse_conn_info.want bit (libfuse 3 fuse_common.h): let the kernel enforce
# and serve POSIX ACLs (system.posix_acl_*) from our xattrs.
FUSE_CAP_POSIX_ACL = 1 << 19

# libfuse 3 readdir flags: the kernel asks for attributes too (readdirplus),
# and the filler is told that they are given.
FUSE_READDIR_PLUS = 1
FUSE_FILL_DIR_PLUS = 2

_ENC = "utf-8"
_ERR = "surrogateescape"


class FuseUnavailable(CasError):
    """FUSE is not available: {detail}"""


class MountFailed(CasError):
    """cannot mount at {mountpoint}: {detail}"""


def load_binding() -> Any:
    """Import mfusepy bound to libfuse 3 (it would pick libfuse 2 first when both are there)."""
    if (
        "FUSE_LIBRARY_PATH" not in os.environ
        and "FUSE_LIBRARY_NAME" not in os.environ
        and ctypes.util.find_library("fuse3")
    ):
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy  # type: ignore[import-untyped]
    except ImportError:
        raise FuseUnavailable("the Python package mfusepy is not installed") from None
    except OSError as e:
        raise FuseUnavailable(
            f"{e} (install libfuse 3: apt-get install fuse3, dnf install fuse3)"
        ) from None
    return mfusepy


def _b(path: str) -> bytes:
    return path.encode(_ENC, _ERR)


def _s(name: bytes) -> str:
    return name.decode(_ENC, _ERR)


def stat_dict(a: Attr) -> dict[str, int]:
    """An Attr as the stat dict mfusepy fills ``struct stat`` from (times in ns)."""
    return {
        "st_ino": a.ino,
        "st_mode": a.mode,
        "st_nlink": a.nlink,
        "st_uid": a.uid,
        "st_gid": a.gid,
        "st_size": a.size,
        "st_blocks": a.blocks,
        "st_blksize": a.blksize,
        "st_rdev": a.rdev,
        "st_atime": a.atime_ns,
        "st_mtime": a.mtime_ns,
        "st_ctime": a.ctime_ns,
    }


class Operations:
    """The mfusepy operations object: every callback a one-line hop into the view."""

    use_ns = True  # times are integers of nanoseconds

    def __init__(self, view: SnapshotView, on_ready: Callable[[], None] | None = None) -> None:
        self.view = view
        self.on_ready = on_ready
        self.mounted = False
        self._plus_sent: dict[bytes, float] = {}  # directory -> when its attrs were last sent
        self._plain: set[bytes] = set()  # directories being listed without attrs

    def init_with_config(self, conn: Any, config: Any) -> None:
        self.mounted = True
        if conn is not None and conn.capable & FUSE_CAP_POSIX_ACL:
            conn.want |= FUSE_CAP_POSIX_ACL
        if self.on_ready is not None:
            self.on_ready()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        ino = fh if fh else self.view.resolve(_b(path))
        return stat_dict(self.view.getattr(ino))

    def readlink(self, path: str) -> str:
        return _s(self.view.readlink(self.view.resolve(_b(path))))

    def opendir(self, path: str) -> int:
        return self.view.resolve(_b(path))

    def readdir(self, path: str, fh: int) -> list[Any]:
        ino = fh or self.view.resolve(_b(path))
        entries: list[Any] = [".", ".."]
        entries += [
            (_s(e.name), {"st_ino": e.ino, "st_mode": e.mode}, 0) for e in self.view.readdir(ino)
        ]
        return entries

    def readdir_entries(self, path: str, fh: int) -> list[tuple[bytes, int, int]]:
        """(name, inode, mode) of ``.``, ``..`` (inode 0: not known here) and every entry."""
        ino = fh or self.view.resolve(_b(path))
        return [(b".", 0, 0), (b"..", 0, 0), *self.view.readdir(ino)]

    def attrs(self, ino: int) -> dict[str, int]:
        """The stat dict of an inode."""
        return stat_dict(self.view.getattr(ino))

    def attrs_wanted(self, path: bytes, offset: int) -> bool:
        """Whether a readdirplus of the directory at ``path`` should carry attributes.

        The kernel asks for them on every listing from the start, but it
        still holds the entries it was given less than ENTRY_TIMEOUT ago (an
        entry sent without attributes leaves the one it has alone).  Within
        half that time a listing goes out as plain names, which is far cheaper.
        """
        if offset:  # a continuation: as its listing started
            return path not in self._plain
        now = time.monotonic()
        last = self._plus_sent.get(path)
        if last is not None and now - last < ENTRY_TIMEOUT / 2:
            self._plain.add(path)
            return False
        self._plain.discard(path)
        if len(self._plus_sent) >= PLUS_MEMORY:
            self._plus_sent.clear()
        self._plus_sent[path] = now
        return True

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return self.view.resolve(_b(path))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return self.view.read(fh or self.view.resolve(_b(path)), offset, size)

    def release(self, path: str, fh: int) -> int:
        return 0

    def listxattr(self, path: str) -> list[str]:
        return [_s(n) for n in self.view.listxattr(self.view.resolve(_b(path)))]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.view.getxattr(self.view.resolve(_b(path)), _b(name))

    def ioctl(self, path: str, cmd: int, arg: Any, fh: int, flags: int, data: Any) -> int:
        if cmd not in (FS_IOC_GETFLAGS, FS_IOC32_GETFLAGS) or not data:
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))
        value = self.view.getflags(fh or self.view.resolve(_b(path)))
        ctypes.c_uint.from_address(data).value = value & 0xFFFFFFFF
        return 0

    def lseek(self, path: str, offset: int, whence: int, fh: int) -> int:
        """SEEK_DATA and SEEK_HOLE from the view's holes; the kernel answers the others."""
        if whence not in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return self.view.seek(fh or self.view.resolve(_b(path)), offset, whence == os.SEEK_DATA)

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def serve(
    view: SnapshotView,
    mountpoint: str,
    *,
    allow_other: bool = False,
    debug: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Mount ``view`` read-only at ``mountpoint`` and serve until unmounted or signalled."""
    fuse = load_binding()
    options: dict[str, Any] = {
        "foreground": True,
        "ro": True,
        "default_permissions": True,
        "use_ino": True,
        "kernel_cache": True,
        "attr_timeout": ATTR_TIMEOUT,
        "entry_timeout": ENTRY_TIMEOUT,
        "fsname": "cas",
        "subtype": "cas",
        # Without it libfuse 3.14.0 logs "Ignoring invalid max threads value".
        "max_idle_threads": MAX_IDLE_THREADS,
    }
    if allow_other:
        options["allow_other"] = True
    if debug:
        options["debug"] = True
    ops = Operations(view, on_ready)
    try:
        _fuse_class(fuse)(ops, mountpoint, encoding=_ENC, errors=_ERR, **options)
    except RuntimeError as e:
        # fuse_main returns non-zero also when a signal ended the loop; once the
        # filesystem was mounted, libfuse has unmounted it again either way.
        if not ops.mounted:
            raise MountFailed(mountpoint=mountpoint, detail=f"libfuse error {e}") from None


def _fuse_class(fuse: Any) -> Any:
    """mfusepy's FUSE, with directory listings that carry attributes (readdirplus).

    mfusepy passes libfuse only each name's type, so the kernel looks up
    every entry of a listed directory once more, one request per name.
    Entries given with their attributes and an offset go to the kernel with
    the listing, and ``ls -l`` or ``find`` need no further requests.
    """

    class Fuse(fuse.FUSE):  # type: ignore[misc]
        def readdir_fuse_3(
            self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
        ) -> int:
            ops: Operations = self.operations
            fh = fip.contents.fh if fip else 0
            entries = ops.readdir_entries(_s(path or b""), fh)
            plus = bool(flags & FUSE_READDIR_PLUS) and ops.attrs_wanted(path or b"", offset)
            st = fuse.c_stat()
            # Offsets are positions in the listing: the kernel continues a long
            # listing from the last offset it received.
            for pos in range(offset, len(entries)):
                name, ino, mode = entries[pos]
                ctypes.memset(ctypes.addressof(st), 0, ctypes.sizeof(st))
                fill = 0
                if plus and ino:
                    fuse.set_st_attrs(st, ops.attrs(ino), use_ns=True)
                    fill = FUSE_FILL_DIR_PLUS
                else:
                    st.st_ino, st.st_mode = ino, mode
                if filler(buf, name, st if ino else None, pos + 1, fill) != 0:
                    break
            return 0

        def lseek(self, path: bytes | None, offset: int, whence: int, fip: Any) -> int:
            # libfuse 3's lseek (since 3.8), which mfusepy declares but does not wrap.
            ops: Operations = self.operations
            fh = fip.contents.fh if fip else 0
            return ops.lseek(_s(path or b""), offset, whence, fh)

    return Fuse
