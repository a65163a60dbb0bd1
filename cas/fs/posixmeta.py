"""POSIX metadata: an lstat result becomes a Node, and a Node's metadata goes back on disk.

This is the layer between the tree format and backup/restore.  It does no
repository or content I/O: backup hands it ``lstat`` results, restore hands it
nodes and freshly created paths.  All paths are bytes, so names that are not
UTF-8 survive byte-exact.

Metadata that cannot be read or applied is reported as warning strings, never
raised: one unreadable xattr must not fail a whole backup or restore.  Only
programming errors (a node type this module does not create) raise.

Restore order inside :func:`apply_metadata` matters and is deliberate:

1. ownership: ``chown`` clears setuid/setgid and ``security.capability``, so it
   comes before both the mode and the xattrs;
2. xattrs, including POSIX ACLs: setting an access ACL rewrites the group
   permission bits (to the ACL mask) and may clear setgid;
3. mode: after the ACL, the recorded ``st_mode`` (whose group bits already are
   the mask) is exactly what the file had, setuid/setgid/sticky included;
4. atime/mtime: any of the above changes only ctime, but content written later
   would not, so the caller writes content first;
5. inode flags last: once immutable or append-only, nothing else may change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import platform
import pwd
import socket
import stat
import struct
import uuid

from cas.errors import FormatError
from cas.format.tree import Node
from cas.fs.dirfd import proc_path

__all__ = [
    "FLAG_APPEND",
    "FLAG_COMPR",
    "FLAG_DIRSYNC",
    "FLAG_IMMUTABLE",
    "FLAG_JOURNAL_DATA",
    "FLAG_NOATIME",
    "FLAG_NOCOW",
    "FLAG_NODUMP",
    "FLAG_NOTAIL",
    "FLAG_PROJINHERIT",
    "FLAG_SECRM",
    "FLAG_SYNC",
    "FLAG_TOPDIR",
    "FLAG_UNRM",
    "RESTORABLE_FLAGS",
    "NameCache",
    "allocated_bytes",
    "apply_metadata",
    "create_special",
    "fd_flags",
    "get_flags",
    "node_from_stat",
    "set_flags",
]

# Linux inode flags (linux/fs.h, the letters chattr uses).
FLAG_SECRM = 0x00000001  # s: secure deletion
FLAG_UNRM = 0x00000002  # u: undelete
FLAG_COMPR = 0x00000004  # c: compress
FLAG_SYNC = 0x00000008  # S: synchronous updates
FLAG_IMMUTABLE = 0x00000010  # i
FLAG_APPEND = 0x00000020  # a: append only
FLAG_NODUMP = 0x00000040  # d: no dump
FLAG_NOATIME = 0x00000080  # A
FLAG_NOCOMP = 0x00000400  # m: do not compress
FLAG_JOURNAL_DATA = 0x00004000  # j
FLAG_NOTAIL = 0x00008000  # t
FLAG_DIRSYNC = 0x00010000  # D
FLAG_TOPDIR = 0x00020000  # T
FLAG_EXTENTS = 0x00080000  # e: set by the filesystem, never restored
FLAG_NOCOW = 0x00800000  # C
FLAG_DAX = 0x02000000  # x
FLAG_PROJINHERIT = 0x20000000  # P

# What restore sets: the flags chattr can change.  Flags the filesystem owns
# (extents, inline data, encrypted, indexed directory, verity, casefold on a
# non-empty directory) are left as the target filesystem has them.
RESTORABLE_FLAGS = (
    FLAG_SECRM
    | FLAG_UNRM
    | FLAG_COMPR
    | FLAG_SYNC
    | FLAG_IMMUTABLE
    | FLAG_APPEND
    | FLAG_NODUMP
    | FLAG_NOATIME
    | FLAG_NOCOMP
    | FLAG_JOURNAL_DATA
    | FLAG_NOTAIL
    | FLAG_DIRSYNC
    | FLAG_TOPDIR
    | FLAG_NOCOW
    | FLAG_DAX
    | FLAG_PROJINHERIT
)

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"


def type_name(mode: int) -> str:
    """The tree node type of an ``st_mode`` ("file", "dir", ...), or "unknown"."""
    return _TYPES.get(stat.S_IFMT(mode), "unknown")


_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}

# "This filesystem (or file) has no inode flags / no xattrs": not worth a warning.
_UNSUPPORTED = frozenset({errno.ENOTTY, errno.ENOTSUP, errno.EOPNOTSUPP})
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})

# AF_UNIX sun_path is 108 bytes; CPython wants room for the terminating NUL.
_SUN_PATH_MAX = 107


def _ioc_numbers() -> tuple[int, int]:
    """FS_IOC_GETFLAGS and FS_IOC_SETFLAGS: _IOR/_IOW('f', 1/2, long) for this machine.

    Most architectures use the asm-generic encoding; a few use 3 direction bits
    with 13 size bits and different read/write values.
    """
    size = struct.calcsize("l")
    machine = platform.machine().lower()
    if machine.startswith(("ppc", "powerpc", "mips", "sparc", "alpha")):
        dir_shift, ior, iow = 29, 2, 4
    else:
        dir_shift, ior, iow = 30, 2, 1
    base = (size << 16) | (ord("f") << 8)
    return (ior << dir_shift) | base | 1, (iow << dir_shift) | base | 2


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = _ioc_numbers()


def allocated_bytes(st: os.stat_result) -> int:
    """Bytes the file occupies on disk; less than ``st_size`` for sparse files."""
    return st.st_blocks * 512


class NameCache:
    """Memoized user and group lookups in both directions; ``None`` when there is no match.

    One instance serves a whole backup or restore, so each id or name costs
    one passwd/group lookup at most.
    """

    def __init__(self) -> None:
        self._user_names: dict[int, str | None] = {}
        self._group_names: dict[int, str | None] = {}
        self._uids: dict[str, int | None] = {}
        self._gids: dict[str, int | None] = {}

    def user_name(self, uid: int) -> str | None:
        """The name of user ``uid`` on this system."""
        try:
            return self._user_names[uid]
        except KeyError:
            pass
        try:
            name: str | None = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            name = None
        self._user_names[uid] = name
        return name

    def group_name(self, gid: int) -> str | None:
        """The name of group ``gid`` on this system."""
        try:
            return self._group_names[gid]
        except KeyError:
            pass
        try:
            name: str | None = grp.getgrgid(gid).gr_name
        except (KeyError, OverflowError):
            name = None
        self._group_names[gid] = name
        return name

    def uid(self, name: str) -> int | None:
        """The uid of user ``name`` on this system."""
        try:
            return self._uids[name]
        except KeyError:
            pass
        try:
            uid: int | None = pwd.getpwnam(name).pw_uid
        except (KeyError, ValueError):  # ValueError: embedded NUL
            uid = None
        self._uids[name] = uid
        return uid

    def gid(self, name: str) -> int | None:
        """The gid of group ``name`` on this system."""
        try:
            return self._gids[name]
        except KeyError:
            pass
        try:
            gid: int | None = grp.getgrnam(name).gr_gid
        except (KeyError, ValueError):
            gid = None
        self._gids[name] = gid
        return gid


def _show(path: bytes) -> str:
    """``path`` for a one-line message: as is when printable, else as an escaped repr."""
    text = os.fsdecode(path)
    if text.isprintable():
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:  # surrogate-escaped bytes that are not UTF-8
            pass
    return repr(text)


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


# -- backup side ---------------------------------------------------------------


def node_from_stat(
    name: bytes,
    st: os.stat_result,
    *,
    path: bytes,
    names: NameCache,
    read_xattrs: bool = True,
    read_flags: bool = True,
    fd: int | None = None,
    dir_fd: int | None = None,
) -> tuple[Node, list[str]]:
    """The node for the entry ``name`` whose ``lstat`` is ``st`` and whose full path is ``path``.

    Returns the node (content fields left empty) and warnings for metadata that
    could not be read.  An ``OSError`` from ``readlink`` propagates: the
    symlink changed or vanished since ``lstat``, which the caller handles like
    any vanished entry.  A file type Linux does not have raises ``ValueError``.

    With ``fd`` (the entry, open) or ``dir_fd`` (its directory, open) the
    entry is read through them and ``path`` only names it in warnings, so it
    may be longer than PATH_MAX.
    """
    fmt = stat.S_IFMT(st.st_mode)
    try:
        kind = _TYPES[fmt]
    except KeyError:
        raise ValueError(f"{_show(path)}: unknown file type {fmt:#o}") from None
    warnings: list[str] = []
    node = Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=names.user_name(st.st_uid),
        group=names.group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink,
    )
    if kind == "file":
        node.size = st.st_size
    elif kind == "symlink":
        node.target = os.readlink(path) if dir_fd is None else os.readlink(name, dir_fd=dir_fd)
        node.size = len(node.target)
    elif kind in ("chardev", "blockdev"):
        node.rdev = st.st_rdev
    if read_xattrs:
        if fd is not None:
            node.xattrs = _read_xattrs(fd, path, warnings)
        else:
            node.xattrs = _read_xattrs(
                path if dir_fd is None else proc_path(dir_fd, name), path, warnings
            )
    if read_flags and kind in ("file", "dir"):
        if dir_fd is None:
            node.flags = _read_flags(path, st, warnings)
        else:
            node.flags = _read_flags(name, st, warnings, dir_fd=dir_fd, shown=path)
    return node, warnings


def fd_metadata(fd: int, path: bytes) -> tuple[list[tuple[bytes, bytes]], int, list[str]]:
    """The xattrs and inode flags of the open file ``fd`` (``path`` names it in
    warnings), and warnings for what could not be read."""
    warnings: list[str] = []
    xattrs = _read_xattrs(fd, path, warnings)
    try:
        flags = _ioctl_get_flags(fd)
    except OSError as e:
        flags = 0
        warnings.append(f"could not read inode flags of {_show(path)}: {_reason(e)}")
    return xattrs, flags, warnings


def _read_xattrs(where: bytes | int, path: bytes, warnings: list[str]) -> list[tuple[bytes, bytes]]:
    """The xattrs of ``where`` (a path, not followed if a symlink, or an open descriptor)."""
    # A descriptor cannot be combined with follow_symlinks.
    follow = {} if isinstance(where, int) else {"follow_symlinks": False}
    try:
        attr_names = os.listxattr(where, **follow)
    except OSError as err:
        if err.errno not in _NO_XATTRS:
            warnings.append(f"could not list extended attributes of {_show(path)}: {_reason(err)}")
        return []
    result: list[tuple[bytes, bytes]] = []
    for attr in sorted(os.fsencode(a) for a in attr_names):
        try:
            value = os.getxattr(where, attr, **follow)
        except OSError as err:
            if err.errno != errno.ENODATA:  # removed since listxattr: not an error
                warnings.append(
                    f"could not read extended attribute {_show(attr)} of {_show(path)}: "
                    f"{_reason(err)}"
                )
            continue
        result.append((attr, value))
    return result


def _read_flags(
    path: bytes,
    st: os.stat_result,
    warnings: list[str],
    *,
    dir_fd: int | None = None,
    shown: bytes | None = None,
) -> int:
    shown = path if shown is None else shown
    try:
        fd = _open_for_flags(path, dir_fd)
    except OSError as err:
        warnings.append(f"could not read inode flags of {_show(shown)}: {_reason(err)}")
        return 0
    try:
        now = os.fstat(fd)
        if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            warnings.append(f"could not read inode flags of {_show(shown)}: replaced during backup")
            return 0
        return _ioctl_get_flags(fd)
    except OSError as err:
        warnings.append(f"could not read inode flags of {_show(shown)}: {_reason(err)}")
        return 0
    finally:
        os.close(fd)


# -- inode flags ---------------------------------------------------------------


def _open_for_flags(path: bytes, dir_fd: int | None = None) -> int:
    # O_NONBLOCK: never hang on a leased file; O_NOFOLLOW: flags of this inode only.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
    return os.open(path, flags, dir_fd=dir_fd)


def _ioctl_get_flags(fd: int) -> int:
    """The flags of ``fd``; 0 where the filesystem has none."""
    # The kernel reads and writes an int although the ioctl number says long.
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0))
    except OSError as err:
        if err.errno in _UNSUPPORTED:
            return 0
        raise
    value: int = struct.unpack("I", raw)[0]
    return value


def fd_flags(fd: int) -> int:
    """The Linux inode flags of the open file or directory ``fd``; 0 where there are none.

    For a caller that has the file open anyway (backup reads flags and content
    through one descriptor, so an unreadable file costs one failed open).
    """
    return _ioctl_get_flags(fd)


def get_flags(path: bytes, *, dir_fd: int | None = None) -> int:
    """The Linux inode flags of the file or directory ``path`` (not following symlinks).

    Returns 0 where the filesystem does not support flags; raises ``OSError``
    when ``path`` cannot be opened.  ``path`` is relative to ``dir_fd`` if given.
    """
    fd = _open_for_flags(path, dir_fd)
    try:
        return _ioctl_get_flags(fd)
    finally:
        os.close(fd)


def set_flags(path: bytes, flags: int, *, dir_fd: int | None = None) -> None:
    """Set the Linux inode flags of the file or directory ``path`` to exactly ``flags``.

    Raises ``OSError``, e.g. ENOTTY/EOPNOTSUPP where the filesystem lacks flags
    and EPERM for immutable/append-only without CAP_LINUX_IMMUTABLE.  ``path``
    is relative to ``dir_fd`` if given.
    """
    fd = _open_for_flags(path, dir_fd)
    try:
        _ioctl_set_flags(fd, flags)
    finally:
        os.close(fd)


def _ioctl_set_flags(fd: int, flags: int) -> None:
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("I", flags & 0xFFFFFFFF))


# -- restore side --------------------------------------------------------------


def create_special(path: bytes, node: Node, *, dir_fd: int | None = None) -> None:
    """Create the fifo, device, socket or symlink that ``node`` describes at ``path``.

    The new entry gets a private mode; :func:`apply_metadata` sets the real
    one.  Raises ``OSError`` (``FileExistsError`` when ``path`` exists, EPERM
    for devices without CAP_MKNOD), ``FormatError`` for a symlink node without
    a target and ``ValueError`` for files and directories, which the restorer
    creates itself.  ``path`` is relative to ``dir_fd`` if given.
    """
    if node.type == "symlink":
        if node.target is None:
            raise FormatError(what="tree node", detail=f"symlink {_show(node.name)} has no target")
        os.symlink(node.target, path, dir_fd=dir_fd)
    elif node.type == "fifo":
        os.mkfifo(path, 0o600, dir_fd=dir_fd)
    elif node.type == "chardev":
        os.mknod(path, stat.S_IFCHR | 0o600, node.rdev, dir_fd=dir_fd)
    elif node.type == "blockdev":
        os.mknod(path, stat.S_IFBLK | 0o600, node.rdev, dir_fd=dir_fd)
    elif node.type == "socket":
        if dir_fd is not None:
            _create_socket_at(dir_fd, path)
        elif len(path) <= _SUN_PATH_MAX:
            _bind(path)
        else:
            parent, base = os.path.split(path)
            parent_fd = os.open(parent or b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _create_socket_at(parent_fd, base)
            finally:
                os.close(parent_fd)
    else:
        raise ValueError(f"create_special cannot create a {node.type!r}")


def _create_socket_at(dir_fd: int, name: bytes) -> None:
    """Leave a socket inode at ``name`` in ``dir_fd``, as ``bind`` does, however deep.

    sun_path holds 107 bytes, so the socket is bound under a short temporary
    name reached through ``/proc/self/fd/N``, then hard-linked to its real
    name and the temporary name removed.  No ``chdir``, so other threads are
    unaffected; ``link`` fails when ``name`` exists, as ``mkfifo`` would.
    """
    temp = b".cas-sock-" + uuid.uuid4().hex[:12].encode()
    _bind(proc_path(dir_fd, temp))
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.unlink(temp, dir_fd=dir_fd)


def _bind(address: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), address) from err
            raise


def apply_metadata(
    path: bytes,
    node: Node,
    *,
    names: NameCache,
    numeric_owner: bool = False,
    is_root: bool,
    restore_flags: bool = True,
    dir_fd: int | None = None,
    shown: bytes | None = None,
    fd: int | None = None,
    created_by: tuple[int, int] | None = None,
) -> list[str]:
    """Apply ``node``'s owner, xattrs, mode, times and flags to ``path``; return warnings.

    Ownership goes by name when the name exists here (unless ``numeric_owner``),
    else by id.  Not as root, an owner the system refuses to set is skipped
    without a warning (as restic does) unless ``numeric_owner`` asked for owners.
    ``path`` must already exist with its content written; call this for a
    directory only after its contents are restored, because it may make the
    directory immutable or append-only and it sets its mtime.  Access ACLs
    present on ``path`` but not in ``node`` (inherited from a default ACL) are
    removed, so the restored permissions are the recorded ones.

    With ``dir_fd``, ``path`` is a name inside that open directory and
    ``shown`` (its full path, which may exceed PATH_MAX) names it in warnings.
    With ``fd`` (the file or directory itself, open; not for symlinks) every
    change goes through it and ``path`` is not looked up at all.

    ``created_by``: the entry was just created by this process, as (uid, gid),
    in a directory that passes nothing on (no default ACL, no inheritable
    inode flags, no setgid): it has that owner, no xattrs and no flags, so
    only what differs from that is changed (three system calls fewer per file).
    """
    at = _At(path, dir_fd, path if shown is None else shown, fd)
    warnings: list[str] = []
    _apply_owner(at, node, names, numeric_owner, is_root, warnings, created_by)
    if created_by is None or node.xattrs:
        _apply_xattrs(at, node, warnings)
    if node.type != "symlink":  # Linux has no lchmod; a symlink's mode means nothing
        try:
            at.chmod(stat.S_IMODE(node.mode))
        except OSError as err:
            warnings.append(f"could not restore mode of {_show(at.shown)}: {_reason(err)}")
    try:
        at.utime(node.atime_ns, node.mtime_ns)
    except OSError as err:
        warnings.append(f"could not restore times of {_show(at.shown)}: {_reason(err)}")
    if (
        restore_flags
        and node.type in ("file", "dir")
        and (created_by is None or node.flags & RESTORABLE_FLAGS)
    ):
        _apply_flags(at, node.flags, warnings)
    return warnings


class _At:
    """An entry to change, named ``shown``: the open descriptor ``fd`` if given, else
    ``path`` relative to ``dir_fd`` (or the cwd), never following a symlink."""

    def __init__(self, path: bytes, dir_fd: int | None, shown: bytes, fd: int | None) -> None:
        self.path, self.dir_fd, self.shown, self.fd = path, dir_fd, shown, fd
        # xattr calls take no dir_fd: reach the entry through /proc instead.
        self.xattr_path = path if dir_fd is None else proc_path(dir_fd, path)

    def lstat(self) -> os.stat_result:
        if self.fd is not None:
            return os.fstat(self.fd)
        return os.lstat(self.path, dir_fd=self.dir_fd)

    def lchown(self, uid: int, gid: int) -> None:
        if self.fd is not None:
            os.chown(self.fd, uid, gid)
        elif self.dir_fd is None:
            os.lchown(self.path, uid, gid)
        else:
            os.chown(self.path, uid, gid, dir_fd=self.dir_fd, follow_symlinks=False)

    def chmod(self, mode: int) -> None:
        if self.fd is not None:
            os.chmod(self.fd, mode)
        else:
            os.chmod(self.path, mode, dir_fd=self.dir_fd)

    def utime(self, atime_ns: int, mtime_ns: int) -> None:
        if self.fd is not None:
            os.utime(self.fd, ns=(atime_ns, mtime_ns))
        else:
            os.utime(self.path, ns=(atime_ns, mtime_ns), dir_fd=self.dir_fd, follow_symlinks=False)

    def listxattr(self) -> list[str]:
        if self.fd is not None:
            return os.listxattr(self.fd)
        return os.listxattr(self.xattr_path, follow_symlinks=False)

    def setxattr(self, attr: bytes, value: bytes) -> None:
        if self.fd is not None:
            os.setxattr(self.fd, attr, value)
        else:
            os.setxattr(self.xattr_path, attr, value, follow_symlinks=False)

    def removexattr(self, attr: bytes) -> None:
        if self.fd is not None:
            os.removexattr(self.fd, attr)
        else:
            os.removexattr(self.xattr_path, attr, follow_symlinks=False)

    def get_flags(self) -> int:
        if self.fd is not None:
            return _ioctl_get_flags(self.fd)
        return get_flags(self.path, dir_fd=self.dir_fd)

    def set_flags(self, flags: int) -> None:
        if self.fd is not None:
            _ioctl_set_flags(self.fd, flags)
        else:
            set_flags(self.path, flags, dir_fd=self.dir_fd)


def _apply_owner(
    at: _At,
    node: Node,
    names: NameCache,
    numeric_owner: bool,
    is_root: bool,
    warnings: list[str],
    created_by: tuple[int, int] | None = None,
) -> None:
    uid, gid = node.uid, node.gid
    if not numeric_owner:
        if node.user is not None:
            uid = _first(names.uid(node.user), uid)
        if node.group is not None:
            gid = _first(names.gid(node.group), gid)
    if created_by == (uid, gid):
        return  # just created with this owner
    if not is_root:
        # An unprivileged chown can at most hand a file to one of our own
        # groups; skip it when there is nothing to change.
        try:
            st = at.lstat()
        except OSError as err:
            warnings.append(f"could not restore owner of {_show(at.shown)}: {_reason(err)}")
            return
        if (st.st_uid, st.st_gid) == (uid, gid):
            return
    try:
        at.lchown(uid, gid)
        return
    except OSError as err:
        first_error = err
    if not is_root and first_error.errno == errno.EPERM:
        try:  # at least the group, if it is one of ours
            at.lchown(-1, gid)
        except OSError:
            group_set = False
        else:
            group_set = True
        if not numeric_owner:
            # As restic, cp -a and rsync -a: a user cannot give files away, and
            # was not asked to (--numeric-owner asks), so that is no warning.
            return
        if group_set:
            warnings.append(f"could not restore owner of {_show(at.shown)}: only its group")
            return
    warnings.append(f"could not restore owner of {_show(at.shown)}: {_reason(first_error)}")


def _first(value: int | None, default: int) -> int:
    return default if value is None else value


def _apply_xattrs(at: _At, node: Node, warnings: list[str]) -> None:
    wanted = {k for k, _ in node.xattrs}
    if ACL_ACCESS not in wanted or ACL_DEFAULT not in wanted:
        _remove_inherited_acls(at, wanted)
    for attr, value in node.xattrs:
        try:
            at.setxattr(attr, value)
        except OSError as err:
            warnings.append(
                f"could not restore extended attribute {_show(attr)} of {_show(at.shown)}: "
                f"{_reason(err)}"
            )


def _remove_inherited_acls(at: _At, wanted: set[bytes]) -> None:
    # Best effort: failing here leaves the default-ACL-derived permissions,
    # which are what a plain restore without ACL support would give anyway.
    try:
        present = {os.fsencode(a) for a in at.listxattr()}
    except OSError:
        return
    for attr in (ACL_ACCESS, ACL_DEFAULT):
        if attr in present and attr not in wanted:
            with contextlib.suppress(OSError):
                at.removexattr(attr)


def _apply_flags(at: _At, flags: int, warnings: list[str]) -> None:
    try:
        current = at.get_flags()
        wanted = (current & ~RESTORABLE_FLAGS) | (flags & RESTORABLE_FLAGS)
        if wanted != current:
            at.set_flags(wanted)
    except OSError as err:
        warnings.append(f"could not restore inode flags of {_show(at.shown)}: {_reason(err)}")
