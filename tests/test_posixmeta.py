"""posixmeta on a real filesystem: lstat -> Node -> create/apply -> lstat must agree.

These tests expect to run as root (chown to arbitrary ids, mknod, trusted.*
xattrs, immutable/append-only flags); each one that needs a capability the
environment lacks skips with the reason.  Non-root restore is simulated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cas.errors import FormatError
from cas.format.tree import Node, decode_tree, encode_tree
from cas.fs import posixmeta
from cas.fs.posixmeta import (
    FLAG_APPEND,
    FLAG_IMMUTABLE,
    FLAG_NOATIME,
    FLAG_NODUMP,
    FLAG_SYNC,
    RESTORABLE_FLAGS,
    NameCache,
    allocated_bytes,
    apply_metadata,
    create_special,
    get_flags,
    node_from_stat,
    set_flags,
)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (chown, mknod, trusted.*)")

MTIME = 1_600_000_000_123_456_789
ATIME = 1_500_000_000_987_654_321

ODD_NAMES = [
    pytest.param(b"caf\xe9", id="latin1"),
    pytest.param(b"line\nbreak", id="newline"),
    pytest.param(b"n" * 255, id="255-bytes"),
]


def b(p: Path) -> bytes:
    return os.fsencode(p)


@pytest.fixture
def names() -> NameCache:
    return NameCache()


@pytest.fixture
def unflag() -> Iterator[Callable[[bytes], None]]:
    """Register paths whose inode flags must be cleared so pytest can delete them."""
    paths: list[bytes] = []
    yield paths.append
    for p in reversed(paths):
        with contextlib.suppress(OSError):
            set_flags(p, get_flags(p) & ~RESTORABLE_FLAGS)


def _flags_supported(directory: Path) -> str | None:
    """None when ``directory`` can hold +d/+i/+a; else why not."""
    probe = directory / ".flag-probe"
    probe.write_bytes(b"")
    try:
        set_flags(b(probe), get_flags(b(probe)) | FLAG_NODUMP)
        if not get_flags(b(probe)) & FLAG_NODUMP:
            return "filesystem accepts but ignores inode flags"
        set_flags(b(probe), get_flags(b(probe)) | FLAG_IMMUTABLE)
        set_flags(b(probe), get_flags(b(probe)) & ~(FLAG_IMMUTABLE | FLAG_NODUMP))
    except OSError as err:
        return f"inode flags unsupported here: {err.strerror}"
    finally:
        with contextlib.suppress(OSError):
            set_flags(b(probe), get_flags(b(probe)) & ~RESTORABLE_FLAGS)
        probe.unlink()
    return None


@pytest.fixture
def flags_ok(tmp_path: Path) -> None:
    reason = _flags_supported(tmp_path)
    if reason:
        pytest.skip(reason)


def _xattrs_supported(path: Path, name: bytes = b"user.probe") -> bool:
    try:
        os.setxattr(b(path), name, b"1")
        os.removexattr(b(path), name)
    except OSError:
        return False
    return True


def read_node(path: bytes, names: NameCache) -> Node:
    node, warnings = node_from_stat(os.path.basename(path), os.lstat(path), path=path, names=names)
    assert warnings == []
    # Every node must survive the tree format byte-exact, once the archiver has added
    # what spec §11.3 requires of its type (a directory's subtree, a file's content).
    complete = dataclasses.replace(node)
    if node.type == "dir":
        complete.subtree = bytes(32)
    elif node.type == "file" and node.size:
        complete.content, complete.sizes = [bytes(32)], [node.size]
    (decoded,) = decode_tree(encode_tree([complete]))
    assert decoded == complete
    return node


def restore(dst: bytes, node: Node, names: NameCache, **kw: bool) -> list[str]:
    """Create ``dst`` like the restorer would, then apply ``node``'s metadata."""
    if node.type == "file":
        with open(dst, "wb") as f:
            f.truncate(node.size)
    elif node.type == "dir":
        os.mkdir(dst, 0o700)
    else:
        create_special(dst, node)
    kw.setdefault("is_root", IS_ROOT)
    return apply_metadata(dst, node, names=names, **kw)


COMPARED = ("type", "mode", "uid", "gid", "user", "group", "size", "rdev", "target", "xattrs")


def assert_same(a: Node, c: Node, *, times: bool = True) -> None:
    for f in COMPARED:
        assert getattr(a, f) == getattr(c, f), f
    assert a.flags & RESTORABLE_FLAGS == c.flags & RESTORABLE_FLAGS
    if times:
        assert (a.mtime_ns, a.atime_ns) == (c.mtime_ns, c.atime_ns)


def set_times(p: bytes) -> None:
    os.utime(p, ns=(ATIME, MTIME), follow_symlinks=False)


def roundtrip(src: bytes, dst: bytes, names: NameCache) -> tuple[Node, Node]:
    a = read_node(src, names)
    assert restore(dst, a, names) == []
    c = read_node(dst, names)
    assert c.name == os.path.basename(dst)
    assert_same(a, c)
    return a, c


# -- every file type -----------------------------------------------------------


@needs_root
@pytest.mark.parametrize(
    ("kind", "mode", "owner"),
    [
        ("file", 0o4755, (1234, 5678)),
        ("file", 0o2711, (0, 0)),
        ("file", 0o000, (65534, 65534)),
        ("dir", 0o2750, (1234, 5678)),
        ("dir", 0o1777, (0, 0)),
        ("fifo", 0o640, (1234, 5678)),
        ("socket", 0o600, (1234, 5678)),
    ],
)
def test_roundtrip_types_modes_owners(
    tmp_path: Path, names: NameCache, kind: str, mode: int, owner: tuple[int, int]
) -> None:
    src = b(tmp_path / "src")
    if kind == "file":
        Path(os.fsdecode(src)).write_bytes(b"hello")
    elif kind == "dir":
        os.mkdir(src)
    elif kind == "fifo":
        os.mkfifo(src)
    else:
        create_special(src, Node(name=b"src", type="socket"))
    os.chown(src, *owner)
    os.chmod(src, mode)  # after chown, which clears setuid/setgid
    set_times(src)
    a, c = roundtrip(src, b(tmp_path / "dst"), names)
    assert a.type == kind
    assert (c.mode, c.uid, c.gid, c.mtime_ns, c.atime_ns) == (mode, *owner, MTIME, ATIME)
    assert c.size == (5 if kind == "file" else 0)
    assert stat.S_IFMT(os.lstat(tmp_path / "dst").st_mode) == stat.S_IFMT(
        os.lstat(tmp_path / "src").st_mode
    )


@needs_root
@pytest.mark.parametrize(
    ("kind", "fmt", "rdev"),
    [
        ("chardev", stat.S_IFCHR, os.makedev(1, 3)),
        ("blockdev", stat.S_IFBLK, os.makedev(7, 200)),
        ("chardev", stat.S_IFCHR, os.makedev(511, 1048000)),  # wide major/minor
    ],
)
def test_roundtrip_devices(
    tmp_path: Path, names: NameCache, kind: str, fmt: int, rdev: int
) -> None:
    src = b(tmp_path / "src")
    try:
        os.mknod(src, fmt | 0o640, rdev)
    except PermissionError:
        pytest.skip("mknod not permitted here (no CAP_MKNOD)")
    os.chown(src, 1234, 5678)
    set_times(src)
    a, c = roundtrip(src, b(tmp_path / "dst"), names)
    assert (a.type, a.rdev, c.rdev, c.mode, c.size) == (kind, rdev, rdev, 0o640, 0)


@needs_root
def test_roundtrip_symlink_non_utf8_target(tmp_path: Path, names: NameCache) -> None:
    src = b(tmp_path) + b"/l\xffnk"
    target = b"../caf\xe9/\xff\xfe\nx"
    os.symlink(target, src)
    os.lchown(src, 1234, 5678)
    set_times(src)
    a, c = roundtrip(src, b(tmp_path) + b"/c\xe9opy", names)
    assert (a.type, a.target, c.target, c.size) == ("symlink", target, target, len(target))
    assert (c.uid, c.gid, c.mtime_ns) == (1234, 5678, MTIME)
    assert os.readlink(b(tmp_path) + b"/c\xe9opy") == target


def test_hard_links_and_identity(tmp_path: Path, names: NameCache) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"x")
    os.link(p, tmp_path / "g")
    node = read_node(b(p), names)
    st = os.lstat(p)
    assert (node.links, node.inode, node.device) == (2, st.st_ino, st.st_dev)
    assert node.ctime_ns == st.st_ctime_ns
    assert node.user == names.user_name(st.st_uid)


def test_sizes(tmp_path: Path, names: NameCache) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_bytes(b"x" * 10_000)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(10 << 20)
    assert read_node(b(d), names).size == 0
    assert read_node(b(sparse), names).size == 10 << 20
    st = os.lstat(sparse)
    assert allocated_bytes(st) == st.st_blocks * 512 < st.st_size


@pytest.mark.parametrize("name", ODD_NAMES)
@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo", "socket"])
def test_odd_names(tmp_path: Path, names: NameCache, name: bytes, kind: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = b(tmp_path / "a") + b"/" + name
    if kind == "file":
        with open(src, "wb") as f:
            f.write(b"data")
    elif kind == "dir":
        os.mkdir(src)
    elif kind == "symlink":
        os.symlink(name, src)
    elif kind == "fifo":
        os.mkfifo(src)
    else:
        create_special(src, Node(name=name, type="socket"))
    set_times(src)
    dst = b(tmp_path / "b") + b"/" + name
    a, _ = roundtrip(src, dst, names)
    assert a.name == name
    assert os.listdir(b(tmp_path / "b")) == [name]


def test_socket_with_long_path_leaves_no_temporary(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 200)
    deep.mkdir()
    path = b(deep) + b"/" + b"s" * 255
    assert len(path) > 400
    create_special(path, Node(name=b"s" * 255, type="socket"))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.listdir(b(deep)) == [b"s" * 255]


@pytest.mark.parametrize("long", [False, True], ids=["short", "long"])
@pytest.mark.parametrize("kind", ["socket", "fifo", "symlink"])
def test_create_special_refuses_existing(tmp_path: Path, kind: str, long: bool) -> None:
    name = b"x" * (200 if long else 1)
    path = b(tmp_path) + b"/" + name
    Path(os.fsdecode(path)).write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        create_special(path, Node(name=name, type=kind, target=b"t"))
    assert Path(os.fsdecode(path)).read_bytes() == b"keep"
    assert os.listdir(tmp_path) == [os.fsdecode(name)]


def test_create_special_rejects_files_and_bad_symlinks(tmp_path: Path) -> None:
    for kind in ("file", "dir"):
        with pytest.raises(ValueError):
            create_special(b(tmp_path / "x"), Node(name=b"x", type=kind))
    with pytest.raises(FormatError):
        create_special(b(tmp_path / "x"), Node(name=b"x", type="symlink"))
    assert not os.path.lexists(tmp_path / "x")


# -- ownership -----------------------------------------------------------------


@needs_root
def test_owner_restored_by_name(tmp_path: Path, names: NameCache) -> None:
    nobody, nogroup = names.uid("nobody"), names.gid("nogroup") or names.gid("nobody")
    if nobody is None or nogroup is None:
        pytest.skip("no 'nobody' user / 'nogroup' group on this system")
    group = "nogroup" if names.gid("nogroup") is not None else "nobody"
    node = Node(name=b"f", type="file", mode=0o644, uid=4321, gid=8765, user="nobody", group=group)
    dst = b(tmp_path / "f")
    assert restore(dst, node, names) == []
    st = os.lstat(dst)
    assert (st.st_uid, st.st_gid) == (nobody, nogroup)


@needs_root
def test_numeric_owner_keeps_raw_ids(tmp_path: Path, names: NameCache) -> None:
    node = Node(name=b"f", type="file", mode=0o644, uid=4321, gid=8765, user="nobody", group="root")
    dst = b(tmp_path / "f")
    assert restore(dst, node, names, numeric_owner=True) == []
    st = os.lstat(dst)
    assert (st.st_uid, st.st_gid) == (4321, 8765)


@needs_root
def test_unknown_names_fall_back_to_ids(tmp_path: Path, names: NameCache) -> None:
    node = Node(
        name=b"f", type="file", uid=4321, gid=8765, user="cas-no-such-user", group="cas-no-grp"
    )
    dst = b(tmp_path / "f")
    assert restore(dst, node, names) == []
    st = os.lstat(dst)
    assert (st.st_uid, st.st_gid) == (4321, 8765)


@needs_root
def test_setuid_survives_owner_change_and_capability_survives_chown(
    tmp_path: Path, names: NameCache
) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"#!")
    # VFS_CAP_REVISION_2, effective; permitted CAP_NET_BIND_SERVICE (bit 10).
    cap = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
    os.chown(src, 1234, 5678)
    try:
        os.setxattr(b(src), b"security.capability", cap)
    except OSError as err:
        pytest.skip(f"cannot set file capabilities here: {err.strerror}")
    os.chmod(src, 0o6755)
    _, c = roundtrip(b(src), b(tmp_path / "dst"), names)
    assert c.mode == 0o6755
    assert dict(c.xattrs)[b"security.capability"] == cap


def test_non_root_owner_failure_is_a_warning_when_owners_were_asked_for(
    tmp_path: Path, names: NameCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --numeric-owner (owners asked for); without it, see the next test."""
    calls: list[tuple[int, int]] = []

    def refuse(path: bytes, uid: int, gid: int) -> None:
        calls.append((uid, gid))
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    monkeypatch.setattr(os, "lchown", refuse)
    name = b"caf\xe9\nx"
    dst = b(tmp_path) + b"/" + name
    node = Node(name=name, type="file", mode=0o640, uid=4321, gid=8765, mtime_ns=MTIME)
    warnings = restore(dst, node, names, is_root=False, numeric_owner=True)
    assert len(warnings) == 1
    assert warnings[0].startswith("could not restore owner of ")
    assert "\n" not in warnings[0] and "caf\\udce9" in warnings[0]
    assert calls == [(4321, 8765), (-1, 8765)]  # the group alone is tried too
    st = os.lstat(dst)  # everything else still applied
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME)


def test_non_root_owner_failure_is_skipped_silently_by_default(
    tmp_path: Path, names: NameCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, item 5: as restic (and cp -a), a user cannot give files away and was
    not asked to: no warning; the group is still set when it is one of the user's."""
    calls: list[tuple[int, int]] = []

    def refuse(path: bytes, uid: int, gid: int) -> None:
        calls.append((uid, gid))
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    monkeypatch.setattr(os, "lchown", refuse)
    dst = b(tmp_path / "f")
    node = Node(name=b"f", type="file", mode=0o640, uid=4321, gid=8765, mtime_ns=MTIME)
    assert restore(dst, node, names, is_root=False) == []
    assert calls == [(4321, 8765), (-1, 8765)]
    st = os.lstat(dst)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, MTIME)


def test_non_root_skips_chown_when_owner_matches(
    tmp_path: Path, names: NameCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("lchown called")

    monkeypatch.setattr(os, "lchown", fail)
    node = Node(name=b"f", type="file", mode=0o600, uid=os.geteuid(), gid=os.getegid())
    assert restore(b(tmp_path / "f"), node, names, is_root=False, numeric_owner=True) == []


def test_non_root_group_only(
    tmp_path: Path, names: NameCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    def group_only(path: bytes, uid: int, gid: int) -> None:
        if uid != -1:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)

    monkeypatch.setattr(os, "lchown", group_only)
    node = Node(name=b"f", type="file", uid=4321, gid=os.getegid())
    warnings = restore(b(tmp_path / "f"), node, names, is_root=False, numeric_owner=True)
    assert len(warnings) == 1 and "only its group" in warnings[0]


def test_name_cache_memoizes(monkeypatch: pytest.MonkeyPatch) -> None:
    names = NameCache()
    assert names.user_name(0) == "root"
    assert names.uid("root") == 0
    assert names.group_name(0) == "root"
    assert names.gid("root") == 0
    assert names.user_name(2_000_000_000) is None
    assert names.uid("cas-no-such-user") is None
    assert names.gid("bad\x00name") is None

    def boom(*args: object) -> None:
        raise AssertionError("lookup not memoized")

    for fn in ("getpwuid", "getpwnam"):
        monkeypatch.setattr(posixmeta.pwd, fn, boom)
    for fn in ("getgrgid", "getgrnam"):
        monkeypatch.setattr(posixmeta.grp, fn, boom)
    assert (names.user_name(0), names.uid("root"), names.group_name(0), names.gid("root")) == (
        "root",
        0,
        "root",
        0,
    )
    assert names.user_name(2_000_000_000) is None and names.uid("cas-no-such-user") is None


# -- xattrs and ACLs -----------------------------------------------------------


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL xattr value: version 2, then (tag u16, perm u16, id u32) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_UNDEF = 0xFFFFFFFF
# user::rwx, user:1234:rwx, group::r-x, mask::r-x, other::r--
ACL_NAMED_USER = _acl(
    (0x01, 7, _UNDEF), (0x02, 7, 1234), (0x04, 5, _UNDEF), (0x10, 5, _UNDEF), (0x20, 4, _UNDEF)
)
# user::rwx, group::r-x, group:5678:rwx, mask::rwx, other::---
ACL_NAMED_GROUP = _acl(
    (0x01, 7, _UNDEF), (0x04, 5, _UNDEF), (0x08, 7, 5678), (0x10, 7, _UNDEF), (0x20, 0, _UNDEF)
)


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_user_xattrs_binary_values(tmp_path: Path, names: NameCache, kind: str) -> None:
    if not _xattrs_supported(tmp_path):
        pytest.skip("no user.* xattrs on this filesystem")
    src = b(tmp_path / "src")
    if kind == "file":
        Path(os.fsdecode(src)).write_bytes(b"")
    elif kind == "dir":
        os.mkdir(src)
    attrs = {
        b"user.zeta": b"\x00\xff\n\x00",
        b"user.caf\xe9": b"latin-1 name",
        b"user.empty": b"",
        b"user.big": bytes(range(256)) * 4,  # ext4 keeps all xattrs in one 4 KiB block
    }
    for k, v in attrs.items():
        os.setxattr(src, k, v)
    a, c = roundtrip(src, b(tmp_path / "dst"), names)
    assert a.xattrs == sorted(attrs.items())
    assert c.xattrs == a.xattrs


@needs_root
def test_trusted_and_security_xattrs(tmp_path: Path, names: NameCache) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"")
    if not _xattrs_supported(src, b"trusted.probe"):
        pytest.skip("no trusted.* xattrs here")
    os.setxattr(b(src), b"trusted.cas", b"\x01\x02")
    _, c = roundtrip(b(src), b(tmp_path / "dst"), names)
    assert (b"trusted.cas", b"\x01\x02") in c.xattrs


@needs_root
def test_symlink_xattrs(tmp_path: Path, names: NameCache) -> None:
    # user.* is not allowed on symlinks; trusted.* is.
    src = b(tmp_path / "l")
    os.symlink(b"t", src)
    try:
        os.setxattr(src, b"trusted.l", b"v", follow_symlinks=False)
    except OSError as err:
        pytest.skip(f"no xattrs on symlinks here: {err.strerror}")
    _, c = roundtrip(src, b(tmp_path / "m"), names)
    assert c.xattrs == [(b"trusted.l", b"v")]


def _acls_supported(path: Path) -> bool:
    try:
        os.setxattr(b(path), b"system.posix_acl_access", ACL_NAMED_USER)
    except OSError:
        return False
    os.removexattr(b(path), b"system.posix_acl_access")
    os.chmod(path, 0o755)
    return True


def test_posix_acls_by_hand(tmp_path: Path, names: NameCache) -> None:
    d = tmp_path / "src"
    d.mkdir()
    if not _acls_supported(d):
        pytest.skip("filesystem without POSIX ACLs")
    os.setxattr(b(d), b"system.posix_acl_access", ACL_NAMED_USER)
    os.setxattr(b(d), b"system.posix_acl_default", ACL_NAMED_GROUP)
    os.chmod(d, 0o2750)  # rewrites the mask to r-x, as chmod g=rx does
    set_times(b(d))
    a, c = roundtrip(b(d), b(tmp_path / "dst"), names)
    x = dict(c.xattrs)
    assert x[b"system.posix_acl_default"] == ACL_NAMED_GROUP
    assert x[b"system.posix_acl_access"] == dict(a.xattrs)[b"system.posix_acl_access"]
    assert c.mode == 0o2750


def test_inherited_acl_is_removed(tmp_path: Path, names: NameCache) -> None:
    parent = tmp_path / "p"
    parent.mkdir()
    if not _acls_supported(parent):
        pytest.skip("filesystem without POSIX ACLs")
    os.setxattr(b(parent), b"system.posix_acl_default", ACL_NAMED_GROUP)
    node = Node(name=b"f", type="file", mode=0o600, mtime_ns=MTIME, atime_ns=ATIME)
    dst = b(parent / "f")
    with open(dst, "wb"):
        pass
    assert b"system.posix_acl_access" in [os.fsencode(n) for n in os.listxattr(dst)]
    assert apply_metadata(dst, node, names=names, is_root=IS_ROOT) == []
    assert os.listxattr(dst) == []
    assert stat.S_IMODE(os.lstat(dst).st_mode) == 0o600


@pytest.mark.skipif(shutil.which("setfacl") is None, reason="setfacl not installed (acl package)")
def test_posix_acls_with_setfacl(tmp_path: Path, names: NameCache) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:5678:r", str(src)], check=True)
    roundtrip(b(src), b(tmp_path / "dst"), names)
    out = subprocess.run(
        ["getfacl", "-n", "--omit-header", str(tmp_path / "dst")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "user:1234:rw-" in out and "group:5678:r--" in out


def test_xattr_read_errors_are_warnings(
    tmp_path: Path, names: NameCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = b(tmp_path / "f")
    open(p, "wb").close()

    def unsupported(*args: object, **kw: object) -> list[str]:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "listxattr", unsupported)
    node, warnings = node_from_stat(b"f", os.lstat(p), path=p, names=names)
    assert (node.xattrs, warnings) == ([], [])

    def denied(*args: object, **kw: object) -> list[str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "listxattr", denied)
    node, warnings = node_from_stat(b"f", os.lstat(p), path=p, names=names)
    assert node.xattrs == [] and len(warnings) == 1
    assert "extended attributes" in warnings[0] and "Permission denied" in warnings[0]

    monkeypatch.setattr(os, "listxattr", lambda *a, **k: ["user.gone", "user.bad"])

    def getxattr(path: bytes, attr: bytes, **kw: object) -> bytes:
        code = errno.ENODATA if attr == b"user.gone" else errno.EIO
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "getxattr", getxattr)
    node, warnings = node_from_stat(b"f", os.lstat(p), path=p, names=names)
    assert node.xattrs == [] and len(warnings) == 1 and "user.bad" in warnings[0]

    node, warnings = node_from_stat(b"f", os.lstat(p), path=p, names=names, read_xattrs=False)
    assert (node.xattrs, warnings) == ([], [])


def test_xattr_write_errors_are_warnings(tmp_path: Path, names: NameCache) -> None:
    # user.* on a symlink is refused by the kernel (EPERM).
    node = Node(name=b"l", type="symlink", target=b"t", xattrs=[(b"user.x", b"1")])
    warnings = restore(b(tmp_path / "l"), node, names)
    assert len(warnings) == 1 and "user.x" in warnings[0]
    assert os.readlink(tmp_path / "l") == "t"


# -- inode flags ---------------------------------------------------------------


def test_flags_roundtrip(
    tmp_path: Path, names: NameCache, flags_ok: None, unflag: Callable[[bytes], None]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cases = {
        b"nodump": (b"file", FLAG_NODUMP | FLAG_NOATIME),
        b"immutable": (b"file", FLAG_IMMUTABLE),
        b"append": (b"file", FLAG_APPEND | FLAG_NODUMP),
        b"appenddir": (b"dir", FLAG_APPEND),
        b"immutabledir": (b"dir", FLAG_IMMUTABLE),
    }
    for side in (b"a", b"b"):
        for name in cases:
            unflag(b(tmp_path) + b"/" + side + b"/" + name)
    for name, (kind, flags) in cases.items():
        src = b(tmp_path / "a") + b"/" + name
        if kind == b"file":
            Path(os.fsdecode(src)).write_bytes(b"content")
        else:
            os.mkdir(src)
        os.chmod(src, 0o640)
        set_times(src)
        set_flags(src, get_flags(src) | flags)
        a, c = roundtrip(src, b(tmp_path / "b") + b"/" + name, names)
        assert a.flags & RESTORABLE_FLAGS == flags
        assert c.flags & RESTORABLE_FLAGS == flags
        assert (c.mtime_ns, c.mode) == (MTIME, 0o640)  # flags were set after the rest
    with pytest.raises(PermissionError):
        Path(os.fsdecode(b(tmp_path / "b/immutable"))).write_bytes(b"x")
    with pytest.raises(PermissionError):
        (tmp_path / "b/immutabledir/new").write_bytes(b"x")
    (tmp_path / "b/appenddir/new").write_bytes(b"x")  # append-only: add, never remove
    with pytest.raises(PermissionError):
        (tmp_path / "b/appenddir/new").unlink()


def test_flags_clear_restorable_bits_only(
    tmp_path: Path, names: NameCache, flags_ok: None, unflag: Callable[[bytes], None]
) -> None:
    p = b(tmp_path / "f")
    open(p, "wb").close()
    unflag(p)
    set_flags(p, get_flags(p) | FLAG_NODUMP)
    fs_owned = get_flags(p) & ~RESTORABLE_FLAGS  # e.g. extents on ext4
    node = Node(name=b"f", type="file", mode=0o644, flags=FLAG_NOATIME)
    assert apply_metadata(p, node, names=names, is_root=IS_ROOT) == []
    assert get_flags(p) == fs_owned | FLAG_NOATIME
    node.flags = 0
    assert apply_metadata(p, node, names=names, is_root=IS_ROOT, restore_flags=False) == []
    assert get_flags(p) == fs_owned | FLAG_NOATIME


def test_flags_not_read_or_set_for_specials(tmp_path: Path, names: NameCache) -> None:
    fifo = b(tmp_path / "fifo")
    node = Node(name=b"fifo", type="fifo", mode=0o600, flags=FLAG_NODUMP)
    assert restore(fifo, node, names) == []  # a fifo is never opened
    assert read_node(fifo, names).flags == 0


def test_flags_unsupported_are_zero_and_warn_on_restore(
    tmp_path: Path, names: NameCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = b(tmp_path / "f")
    open(p, "wb").close()

    def no_ioctl(*args: object) -> bytes:
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    monkeypatch.setattr(posixmeta.fcntl, "ioctl", no_ioctl)
    assert get_flags(p) == 0
    node, warnings = node_from_stat(b"f", os.lstat(p), path=p, names=names)
    assert (node.flags, warnings) == (0, [])
    node.flags = 0
    assert apply_metadata(p, node, names=names, is_root=IS_ROOT) == []  # nothing to set
    node.flags = FLAG_NODUMP
    warnings = apply_metadata(p, node, names=names, is_root=IS_ROOT)
    assert len(warnings) == 1 and "inode flags" in warnings[0]
    with pytest.raises(OSError):
        set_flags(p, FLAG_NODUMP)


def test_flags_read_error_is_a_warning(tmp_path: Path, names: NameCache) -> None:
    p, other = b(tmp_path / "f"), b(tmp_path / "other")
    open(p, "wb").close()
    open(other, "wb").close()
    st = os.lstat(p)
    os.unlink(p)  # vanished between lstat and open
    node, warnings = node_from_stat(b"f", st, path=p, names=names, read_xattrs=False)
    assert node.flags == 0 and len(warnings) == 1 and "inode flags" in warnings[0]
    # replaced by another file between lstat and open
    os.rename(other, p)
    node, warnings = node_from_stat(b"f", st, path=p, names=names, read_xattrs=False)
    assert len(warnings) == 1 and "replaced" in warnings[0]


def test_flags_on_tmpfs(names: NameCache, unflag: Callable[[bytes], None]) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    probe = subprocess.run(["stat", "-f", "-c", "%T", str(shm)], capture_output=True, text=True)
    if probe.stdout.strip() != "tmpfs":
        pytest.skip("/dev/shm is not tmpfs")
    d = shm / f"cas-test-{os.getpid()}"
    d.mkdir()
    try:
        p = b(d / "f")
        open(p, "wb").close()
        unflag(p)
        # tmpfs keeps only a/i/d/A (Linux >= 6.0); others are EOPNOTSUPP.
        node = Node(name=b"f", type="file", mode=0o644, flags=FLAG_SYNC)
        warnings = apply_metadata(p, node, names=names, is_root=IS_ROOT)
        assert len(warnings) == 1 and "inode flags" in warnings[0]
    finally:
        shutil.rmtree(d)


# -- warnings name the path safely ---------------------------------------------


def test_warning_for_missing_path(tmp_path: Path, names: NameCache) -> None:
    p = b(tmp_path) + b"/gone\xff\n"
    node = Node(name=b"gone", type="file", mode=0o644, flags=FLAG_NODUMP)
    warnings = apply_metadata(p, node, names=names, is_root=IS_ROOT)
    assert warnings
    for w in warnings:
        assert "\n" not in w and "gone\\udcff\\n" in w
        w.encode("utf-8")  # printable as is
