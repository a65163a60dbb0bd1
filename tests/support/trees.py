"""A test tree holding every kind of metadata, and a comparison that does not use cas.

:func:`build_full_tree` needs root (chown to any id, mknod, trusted.* and
security.* xattrs, immutable and append-only flags) on a filesystem with
xattrs, POSIX ACLs, inode flags and holes (ext4, xfs, btrfs); it raises
``OSError`` where the environment lacks one of them, so callers can skip.

:func:`compare_trees` reads both trees with ``os``, ``stat`` and one ioctl
only, so a bug in cas's own metadata code cannot hide itself.  It walks both
through directory descriptors (``fstatat``, ``openat``), so trees deeper than
PATH_MAX compare like any other.  Files and
directories are read through ``O_NOATIME`` descriptors, so comparing does not
change the access times it compares.  ``readlink`` has no such way out, so
symlinks get an access time in the near future, which ``relatime`` leaves
alone when they are read (it updates one not after mtime/ctime, or a day old).

:func:`unlock_tree` clears immutable/append-only flags so a tree can be removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path

# Linux inode flags, from linux/fs.h (not from cas); ioctl numbers of the
# asm-generic 64-bit ABI (x86-64, arm64).
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FL_IMMUTABLE = 0x10
FL_APPEND = 0x20
FL_NODUMP = 0x40
FL_NOATIME = 0x80
# What chattr can set: s u c S i a d A, m, j t D T, C, P.  Flags the filesystem
# owns (extents, htree index, inline data) differ between equal trees.
USER_FLAGS = 0xFF | 0x400 | 0x4000 | 0x8000 | 0x10000 | 0x20000 | 0x800000 | 0x20000000

NUMERIC_UID = 12345  # ids without a name on a standard system
NUMERIC_GID = 23456
NOBODY = 65534

BLOCK = 4096

# Fixed odd nanosecond times from September 2001 on, one day apart.
_BASE_NS = 1_000_000_000_000_000_123


class _Times:
    """Hands out distinct (atime, mtime) pairs with odd nanoseconds."""

    def __init__(self) -> None:
        self.n = 0
        # Symlinks are read (readlink) by backup and by the comparison; relatime
        # then updates an atime that is a day old or not after mtime and ctime,
        # and ctime is "now", so their atime is in the near future.
        self.recent = (time.time_ns() // 10**9 + 3600) * 10**9

    def next(self, symlink: bool = False) -> tuple[int, int]:
        self.n += 1
        mtime = _BASE_NS + self.n * 86_400_000_000_007 + 2 * self.n + 1
        atime = self.recent + self.n * 1_000_003 + 1 if symlink else mtime - 3_600_000_000_011
        return atime, mtime


def _b(p: Path | bytes) -> bytes:
    return p if isinstance(p, bytes) else os.fsencode(p)


def _write(path: bytes, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def _pattern(n: int, seed: int) -> bytes:
    """``n`` non-zero bytes that do not repeat at any short period."""
    out = bytearray()
    x = seed * 2654435761 + 1
    while len(out) < n:
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        out += (x | 0x0101010101010101).to_bytes(8, "little")
    return bytes(out[:n])


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_* value: version 2, then (tag, perm, id) entries, sorted."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_UNDEF = 0xFFFFFFFF
# user::rw-, user:12345:rw-, group::r--, group:23456:r--, mask::rw-, other::---
_ACCESS_ACL = _acl(
    (0x01, 6, _UNDEF),
    (0x02, 6, NUMERIC_UID),
    (0x04, 4, _UNDEF),
    (0x08, 4, NUMERIC_GID),
    (0x10, 6, _UNDEF),
    (0x20, 0, _UNDEF),
)
# user::rwx, user:12345:rwx, group::r-x, group:23456:r-x, mask::rwx, other::---
_DEFAULT_ACL = _acl(
    (0x01, 7, _UNDEF),
    (0x02, 7, NUMERIC_UID),
    (0x04, 5, _UNDEF),
    (0x08, 5, NUMERIC_GID),
    (0x10, 7, _UNDEF),
    (0x20, 0, _UNDEF),
)
# security.capability, revision 2, effective: cap_net_raw (13) permitted.
_FILE_CAPS = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


def _open(path: bytes, flags: int, dir_fd: int | None = None) -> int:
    """``os.open`` with O_NOATIME, without it where we may not (not the owner, not root)."""
    try:
        return os.open(path, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError as e:
        if e.errno != errno.EPERM:
            raise
    return os.open(path, flags, dir_fd=dir_fd)


def _get_flags(path: bytes, dir_fd: int | None = None) -> int:
    fd = _open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd)
    try:
        raw = fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0))
    finally:
        os.close(fd)
    value: int = struct.unpack("I", raw)[0]
    return value


def _set_flags(path: bytes, flags: int) -> None:
    fd = _open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("I", flags))
    finally:
        os.close(fd)


def _set_acls(path: bytes, *, default: bool) -> None:
    """Through setfacl when installed, else as raw system.posix_acl_* values."""
    setfacl = shutil.which("setfacl")
    if setfacl:
        if default:
            args = ["-d", "-m", f"u:{NUMERIC_UID}:rwx,g:{NUMERIC_GID}:rx"]
        else:
            args = ["-m", f"u:{NUMERIC_UID}:rw,g:{NUMERIC_GID}:r,o::-"]
        done = subprocess.run([setfacl, *args, os.fsdecode(path)], capture_output=True)
        if done.returncode != 0:
            raise OSError(errno.EOPNOTSUPP, f"setfacl failed: {done.stderr.decode().strip()}")
    elif default:
        os.setxattr(path, b"system.posix_acl_default", _DEFAULT_ACL)
    else:
        os.setxattr(path, b"system.posix_acl_access", _ACCESS_ACL)


def _sparse(path: bytes, size: int, extents: list[tuple[int, int]], seed: int) -> None:
    """A file of ``size`` bytes with data only at the given (offset, length) extents."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i, (offset, length) in enumerate(extents):
            os.pwrite(fd, _pattern(length, seed + i), offset)
        os.ftruncate(fd, size)
        os.fsync(fd)  # allocate now, so st_blocks is final
    finally:
        os.close(fd)


def build_full_tree(root: Path) -> None:
    """Create ``root`` (must not exist) holding every file type and metadata item.

    Needs root on ext4/xfs/btrfs; raises ``OSError`` when something cannot be
    made here.  Immutable and append-only entries are created: call
    :func:`unlock_tree` before removing it.
    """
    r = _b(root)
    times = _Times()
    stamped: list[tuple[bytes, bool]] = []  # (path, is symlink), times set at the end
    flagged: list[tuple[bytes, int]] = []  # inode flags, set last of all
    linked: set[bytes] = set()  # later names of hardlinks: the inode is stamped once

    def mkdir(rel: bytes, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> bytes:
        p = r + b"/" + rel if rel else r
        os.mkdir(p, 0o700)
        os.chown(p, *owner)
        os.chmod(p, mode)
        stamped.append((p, False))
        return p

    def file(
        rel: bytes, data: bytes = b"", mode: int = 0o644, owner: tuple[int, int] = (0, 0)
    ) -> bytes:
        p = r + b"/" + rel
        _write(p, data, 0o600)
        os.chown(p, *owner)
        os.chmod(p, mode)  # after chown, which clears setuid/setgid
        stamped.append((p, False))
        return p

    def symlink(rel: bytes, target: bytes, owner: tuple[int, int] = (0, 0)) -> bytes:
        p = r + b"/" + rel
        os.symlink(target, p)
        os.lchown(p, *owner)
        stamped.append((p, True))
        return p

    def hardlink(existing: bytes, rel: bytes) -> None:
        p = r + b"/" + rel
        os.link(existing, p, follow_symlinks=False)
        linked.add(p)

    mkdir(b"", 0o755)

    # -- regular files, modes and owners
    file(b"regular", b"hello, world\n", 0o644, (NUMERIC_UID, NUMERIC_GID))
    file(b"empty", b"", 0o600)
    file(b"setuid", b"#!/bin/sh\n", 0o4755)
    file(b"setgid", b"#!/bin/sh\n", 0o2711, (0, NUMERIC_GID))
    file(b"setuid-setgid-sticky", b"x", 0o7777 & ~0o002)
    file(b"nobody", b"owned by nobody\n", 0o640, (NOBODY, NOBODY))
    file(b"no-permissions", b"secret\n", 0o000, (NUMERIC_UID, NUMERIC_GID))
    file(b"binary", _pattern(100_000, 1), 0o755)

    # -- directories
    mkdir(b"dirs")
    mkdir(b"dirs/empty", 0o700)
    mkdir(b"dirs/sticky", 0o1777)
    file(b"dirs/sticky/inside", b"in a sticky dir", 0o666, (NUMERIC_UID, NUMERIC_GID))
    mkdir(b"dirs/setgid", 0o2775, (NUMERIC_UID, NUMERIC_GID))
    file(b"dirs/setgid/inside", b"group inherited", 0o664, (NUMERIC_UID, NUMERIC_GID))
    mkdir(b"dirs/owned-by-nobody", 0o750, (NOBODY, NOBODY))
    nested = b"dirs/nested"
    mkdir(nested)
    for level in (b"/a", b"/b", b"/c", b"/d"):
        nested += level
        mkdir(nested, 0o751)
    file(nested + b"/leaf", b"deep")

    # -- symlinks
    mkdir(b"links")
    symlink(b"links/relative", b"../regular")
    symlink(b"links/absolute", b"/etc/hostname", (NUMERIC_UID, NUMERIC_GID))
    symlink(b"links/dangling", b"does/not/exist")
    symlink(b"links/non-utf8", b"caf\xe9/\xff\xfe\nend")
    symlink(b"links/long", b"/" + b"long-target/" * 40)
    symlink(b"links/to-dir", b"../dirs")

    # -- special files
    mkdir(b"special")
    fifo = r + b"/special/fifo"
    os.mkfifo(fifo, 0o620)
    os.chown(fifo, NUMERIC_UID, NUMERIC_GID)
    stamped.append((fifo, False))
    chardev = r + b"/special/null"
    os.mknod(chardev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    stamped.append((chardev, False))
    blockdev = r + b"/special/loop200"
    os.mknod(blockdev, stat.S_IFBLK | 0o660, os.makedev(7, 200))
    os.chown(blockdev, 0, 6)
    stamped.append((blockdev, False))
    wide = r + b"/special/wide"
    os.mknod(wide, stat.S_IFCHR | 0o600, os.makedev(511, 1048000))
    stamped.append((wide, False))
    sock = r + b"/special/socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(sock)
    os.chmod(sock, 0o755)
    stamped.append((sock, False))

    # -- hardlinks of every kind
    mkdir(b"hardlinks")
    mkdir(b"hardlinks/other")
    f = file(b"hardlinks/file-1", b"linked content\n", 0o640, (NUMERIC_UID, NUMERIC_GID))
    hardlink(f, b"hardlinks/file-2")
    hardlink(f, b"hardlinks/other/file-3")
    sl = symlink(b"hardlinks/symlink-1", b"file-1")
    hardlink(sl, b"hardlinks/symlink-2")
    ff = r + b"/hardlinks/fifo-1"
    os.mkfifo(ff, 0o600)
    stamped.append((ff, False))
    hardlink(ff, b"hardlinks/fifo-2")
    dv = r + b"/hardlinks/dev-1"
    os.mknod(dv, stat.S_IFCHR | 0o644, os.makedev(1, 5))
    stamped.append((dv, False))
    hardlink(dv, b"hardlinks/other/dev-2")
    imm = file(b"hardlinks/immutable-1", b"immutable and linked\n")
    hardlink(imm, b"hardlinks/immutable-2")
    flagged.append((imm, FL_IMMUTABLE))
    app = file(b"hardlinks/append-1", b"append-only and linked\n")
    hardlink(app, b"hardlinks/other/append-2")
    flagged.append((app, FL_APPEND))

    # -- extended attributes
    mkdir(b"xattrs")
    x = file(b"xattrs/user", b"with user xattrs")
    os.setxattr(x, b"user.text", b"some value")
    os.setxattr(x, b"user.binary", b"\x00\xff\n\x00")
    os.setxattr(x, b"user.empty", b"")
    os.setxattr(x, b"user.caf\xe9", b"name not UTF-8")
    x = file(b"xattrs/trusted", b"with a trusted xattr")
    os.setxattr(x, b"trusted.cas", b"\x01\x02\x03")
    x = file(b"xattrs/security", b"with security xattrs", 0o755, (NUMERIC_UID, NUMERIC_GID))
    os.setxattr(x, b"security.cas-test", b"label")
    os.setxattr(x, b"security.capability", _FILE_CAPS)
    x = file(b"xattrs/big", b"an xattr that needs its own block")
    os.setxattr(x, b"user.big", _pattern(3000, 7))
    x = mkdir(b"xattrs/dir")
    os.setxattr(x, b"user.on-dir", b"yes")
    x = symlink(b"xattrs/symlink", b"user")
    os.setxattr(x, b"trusted.on-symlink", b"yes", follow_symlinks=False)

    # -- POSIX ACLs
    mkdir(b"acls")
    x = file(b"acls/access", b"access ACL", 0o640)
    _set_acls(x, default=False)
    d = mkdir(b"acls/default-dir", 0o750)
    _set_acls(d, default=True)
    file(b"acls/default-dir/inherited", b"inherits the default ACL", 0o640)
    mkdir(b"acls/default-dir/subdir", 0o750)  # inherits both the access and the default ACL

    # -- inode flags (set after everything else)
    mkdir(b"flags")
    flagged.append((file(b"flags/append", b"append-only\n"), FL_APPEND))
    flagged.append((file(b"flags/immutable", b"immutable\n", 0o444), FL_IMMUTABLE))
    flagged.append((file(b"flags/nodump", b"nodump\n"), FL_NODUMP))
    flagged.append((file(b"flags/noatime", b"noatime\n"), FL_NOATIME))
    d = mkdir(b"flags/immutable-dir", 0o755)
    file(b"flags/immutable-dir/content", b"inside an immutable dir")
    mkdir(b"flags/immutable-dir/sub")
    file(b"flags/immutable-dir/sub/deeper", b"deeper")
    flagged.append((d, FL_IMMUTABLE))
    d = mkdir(b"flags/append-dir", 0o755)
    file(b"flags/append-dir/content", b"inside an append-only dir")
    flagged.append((d, FL_APPEND))
    d = mkdir(b"flags/nodump-noatime-dir", 0o755)
    file(b"flags/nodump-noatime-dir/plain", b"created before the dir got +dA")
    flagged.append((d, FL_NODUMP | FL_NOATIME))

    # -- sparse files (holes at 4 KiB-aligned places)
    mkdir(b"sparse")
    _sparse(r + b"/sparse/holes", 1 << 20, [(16 * BLOCK, BLOCK), (75 * BLOCK, 3 * BLOCK)], 11)
    _sparse(r + b"/sparse/leading-data", 600_000, [(0, 5 * BLOCK), (100 * BLOCK, 5000)], 21)
    _sparse(r + b"/sparse/all-hole", 8 << 20, [], 31)
    _sparse(r + b"/sparse/data-at-end", 3 << 20, [((3 << 20) - 2 * BLOCK, 2 * BLOCK)], 41)
    for rel in (b"holes", b"leading-data", b"all-hole", b"data-at-end"):
        stamped.append((r + b"/sparse/" + rel, False))

    # -- names
    mkdir(b"names")
    file(b"names/caf\xe9", b"latin-1 name")
    file(b"names/new\nline", b"newline in the name")
    file(b"names/" + b"n" * 255, b"255-byte name")
    long_dir = mkdir(b"names/" + b"d" * 255)
    file(long_dir[len(r) + 1 :] + b"/" + b"f" * 255, b"255 + 255")
    bad = mkdir(b"names/\xff\xfe-dir")
    symlink(bad[len(r) + 1 :] + b"/\x80link", b"\x80\x81")

    # Times: entries first, directories deepest first, so no later step moves them.
    done: set[tuple[int, int]] = set()
    for path, is_link in sorted(stamped, key=lambda e: (-e[0].count(b"/"), e[0])):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) in done:
            continue
        done.add((st.st_dev, st.st_ino))
        os.utime(path, ns=times.next(is_link), follow_symlinks=False)
    assert linked  # hardlinks share their first name's times
    for path, flags in flagged:
        _set_flags(path, _get_flags(path) | flags)


def settled_symlink(link: Path, target: str, n: int) -> None:
    """A symlink whose atime reading it will not move: a backup or comparison reads a
    link, which moves an atime that is not after mtime and ctime (relatime); an hour
    ahead, it stays.  ``n`` makes its times differ from other links'."""
    link.symlink_to(target)
    ahead = (int(time.time()) + 3600) * 10**9 + n
    os.utime(link, ns=(ahead, 1_600_000_000_000_000_000 + n), follow_symlinks=False)


def build_deep_tree(root: Path | bytes, depth: int) -> list[bytes]:
    """``root``/d/d/.../d, ``depth`` directories below ``root``, made with ``*at()`` calls.

    The deepest directory holds a file ``bottom``, a fifo and a symlink
    ``up`` -> ``../..``; the one halfway down a file ``middle``.  Full paths
    reach ``len(root) + 2 * depth`` bytes, beyond PATH_MAX for a depth of
    2,048 and more.  Returns the relative paths of the two files.
    """
    times = _Times()
    fd = os.open(_b(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1, depth + 1):
            os.mkdir(b"d", 0o755, dir_fd=fd)
            below = os.open(b"d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
            if level == depth // 2:
                _write_at(fd, b"middle", b"halfway down\n")
        _write_at(fd, b"bottom", _pattern(100_000, seed=4))
        os.mkfifo(b"fifo", 0o640, dir_fd=fd)
        os.symlink(b"../..", b"up", dir_fd=fd)
        # Backup reads the link (relatime would then move a past atime): see _Times.
        os.utime(b"up", ns=times.next(symlink=True), dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
    deep = b"/".join([b"d"] * depth)
    return [b"/".join([b"d"] * (depth // 2)) + b"/middle", deep + b"/bottom"]


def _write_at(dir_fd: int, name: bytes, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def open_deep(root: Path | bytes, rel: bytes, flags: int = os.O_RDONLY) -> int:
    """Open ``root``/``rel`` however long the path, one component at a time."""
    *dirs, name = rel.split(b"/")
    fd = os.open(_b(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in dirs:
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = below
        return os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def remove_tree(root: Path | bytes) -> None:
    """``rm -rf root`` for trees of any depth: no recursion, no path longer than one name.

    (``shutil.rmtree`` recurses once per level, so pytest's own clean-up of old
    temporary directories fails on a tree 4,000 levels deep.)
    """
    top = _b(root)
    if not os.path.lexists(top):
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    stack = [(b"", os.open(top, flags), [os.fsencode(n) for n in os.listdir(top)])]
    try:
        while stack:
            name, fd, names = stack[-1]
            if not names:
                stack.pop()
                os.close(fd)
                if stack:
                    os.rmdir(name, dir_fd=stack[-1][1])
                continue
            entry = names.pop()
            if stat.S_ISDIR(os.lstat(entry, dir_fd=fd).st_mode):
                below = os.open(entry, flags, dir_fd=fd)
                stack.append((entry, below, [os.fsencode(n) for n in os.listdir(below)]))
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        for _, fd, _ in stack:
            os.close(fd)
    os.rmdir(top)


def unlock_tree(root: Path | bytes) -> None:
    """Clear immutable and append-only flags under ``root`` (best effort), so it can be removed."""
    top = _b(root)
    if not os.path.lexists(top):
        return
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames, b""]:
            p = os.path.join(dirpath, name) if name else dirpath
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    flags = _get_flags(p)
                    if flags & (FL_IMMUTABLE | FL_APPEND):
                        _set_flags(p, flags & ~(FL_IMMUTABLE | FL_APPEND))


# -- comparison ----------------------------------------------------------------


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class _At:
    """An entry of a compared tree: ``name`` in the open directory ``dir_fd``."""

    def __init__(self, dir_fd: int | None, name: bytes) -> None:
        self.dir_fd, self.name = dir_fd, name
        # xattr calls take no dir_fd: reach the entry through /proc instead.
        self.path = name if dir_fd is None else b"/proc/self/fd/%d/%s" % (dir_fd, name)

    def lstat(self) -> os.stat_result:
        return os.lstat(self.name, dir_fd=self.dir_fd)

    def open(self, flags: int) -> int:
        return _open(self.name, flags, self.dir_fd)


def _content_differs(a: _At, b: _At) -> bool:
    fa = a.open(os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fb = b.open(os.O_RDONLY | os.O_NOFOLLOW)
        try:
            while True:
                x, y = os.read(fa, 1 << 20), os.read(fb, 1 << 20)
                if x != y:
                    return True
                if not x:
                    return False
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _xattrs(at: _At) -> dict[bytes, bytes]:
    out = {}
    for name in os.listxattr(at.path, follow_symlinks=False):
        key = os.fsencode(name)
        out[key] = os.getxattr(at.path, key, follow_symlinks=False)
    return out


def _show(rel: bytes) -> str:
    return repr(rel.decode("utf-8", "backslashreplace")) if rel else "'.'"


def compare_trees(a: Path | bytes, b: Path | bytes) -> list[str]:
    """Every difference between the trees ``a`` and ``b``, one line each; [] when equal.

    Compared for every entry, including the two roots: type, permission bits
    (with setuid/setgid/sticky), owner and group ids, atime and mtime in
    nanoseconds, xattrs (POSIX ACLs included); for non-directories the size
    and allocated blocks (sparseness); file content; symlink targets; device
    numbers; chattr flags of files and directories; and which names are
    hardlinks of one another.
    """
    top_a, top_b = _b(a), _b(b)
    diffs: list[str] = []
    groups_a: dict[tuple[int, int], list[bytes]] = {}
    groups_b: dict[tuple[int, int], list[bytes]] = {}
    # Depth first; each directory pair stays open while its entries are compared.
    stack: list[tuple[bytes, int, int, list[bytes]]] = []
    entry: tuple[bytes, _At, _At] | None = (b"", _At(None, top_a), _At(None, top_b))
    try:
        while entry is not None or stack:
            if entry is None:
                rel, fd_a, fd_b, names = stack[-1]
                if not names:
                    stack.pop()
                    os.close(fd_a)
                    os.close(fd_b)
                    continue
                name = names.pop()
                entry = (rel + b"/" + name if rel else name, _At(fd_a, name), _At(fd_b, name))
            rel, at_a, at_b = entry
            entry = None
            try:
                sa = at_a.lstat()
            except FileNotFoundError:
                diffs.append(f"{_show(rel)}: only in {os.fsdecode(top_b)}")
                continue
            try:
                sb = at_b.lstat()
            except FileNotFoundError:
                diffs.append(f"{_show(rel)}: only in {os.fsdecode(top_a)}")
                continue
            diffs += _compare_entry(rel, at_a, at_b, sa, sb)
            if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
                continue
            if stat.S_ISDIR(sa.st_mode):
                fd_a = at_a.open(_DIR)
                fd_b = at_b.open(_DIR)
                both = {os.fsencode(n) for n in os.listdir(fd_a) + os.listdir(fd_b)}
                stack.append((rel, fd_a, fd_b, sorted(both, reverse=True)))
            else:
                groups_a.setdefault((sa.st_dev, sa.st_ino), []).append(rel)
                groups_b.setdefault((sb.st_dev, sb.st_ino), []).append(rel)
    finally:
        for _, fd_a, fd_b, _ in stack:
            os.close(fd_a)
            os.close(fd_b)
    links_a = {frozenset(g) for g in groups_a.values() if len(g) > 1}
    links_b = {frozenset(g) for g in groups_b.values() if len(g) > 1}
    for g in sorted(links_a - links_b, key=sorted):
        diffs.append(f"hardlinked only in a: {sorted(_show(p) for p in g)}")
    for g in sorted(links_b - links_a, key=sorted):
        diffs.append(f"hardlinked only in b: {sorted(_show(p) for p in g)}")
    return diffs


def _compare_entry(rel: bytes, a: _At, b: _At, sa: os.stat_result, sb: os.stat_result) -> list[str]:
    out: list[str] = []

    def check(what: str, x: object, y: object) -> None:
        if x != y:
            out.append(f"{_show(rel)}: {what} {x!r} != {y!r}")

    check("type", stat.S_IFMT(sa.st_mode), stat.S_IFMT(sb.st_mode))
    if out:
        return out
    mode = sa.st_mode
    check("mode", oct(stat.S_IMODE(mode)), oct(stat.S_IMODE(sb.st_mode)))
    check("uid", sa.st_uid, sb.st_uid)
    check("gid", sa.st_gid, sb.st_gid)
    check("mtime_ns", sa.st_mtime_ns, sb.st_mtime_ns)
    check("atime_ns", sa.st_atime_ns, sb.st_atime_ns)
    if not stat.S_ISDIR(mode):  # a directory's size and blocks depend on its history
        check("size", sa.st_size, sb.st_size)
        check("blocks", sa.st_blocks, sb.st_blocks)
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        check("rdev", sa.st_rdev, sb.st_rdev)
    if stat.S_ISLNK(mode):
        check("target", os.readlink(a.name, dir_fd=a.dir_fd), os.readlink(b.name, dir_fd=b.dir_fd))
    if stat.S_ISREG(mode) and sa.st_size == sb.st_size and _content_differs(a, b):
        out.append(f"{_show(rel)}: content differs")
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        flags_a, flags_b = _get_flags(a.name, a.dir_fd), _get_flags(b.name, b.dir_fd)
        check("flags", hex(flags_a & USER_FLAGS), hex(flags_b & USER_FLAGS))
    check("xattrs", _xattrs(a), _xattrs(b))
    return out
