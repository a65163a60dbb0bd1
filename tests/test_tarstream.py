"""cas/browse/tarstream.py: archives read back by Python's tarfile (an independent reader)."""

from __future__ import annotations

import io
import struct
import tarfile

import pytest

from cas.browse import tarstream as ts

_ACL = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", *e)
    for e in [
        (0x01, 6, 0xFFFFFFFF),
        (0x02, 4, 1000),
        (0x04, 4, 0xFFFFFFFF),
        (0x08, 5, 23456),
        (0x10, 6, 0xFFFFFFFF),
        (0x20, 0, 0xFFFFFFFF),
    ]
)


def written(*members: tuple[ts.Member, list[bytes]]) -> bytes:
    buf = io.BytesIO()
    w = ts.TarWriter(buf)
    for m, content in members:
        w.add(m, content)
    w.close()
    return buf.getvalue()


def read(raw: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), encoding="utf-8", errors="surrogateescape") as t:
        for m in t:
            f = t.extractfile(m) if m.isreg() else None
            out.append((m, f.read() if f else None))
    return out


def test_every_field_reads_back() -> None:
    long_name = b"dir/" + b"n" * 200 + b"/caf\xe9\nname"
    raw = written(
        (ts.Member(b"dir", ts.DIRECTORY, 0o1777, mtime_ns=-1_500_000_000), []),
        (
            ts.Member(
                long_name,
                ts.REGULAR,
                0o4755,
                uid=5_000_000,
                gid=7,
                uname="\u00fcser",
                gname="g",
                size=5,
                mtime_ns=1_000_000_000_123_456_789,
                atime_ns=42,
                xattrs=[(b"user.a=b%", b"\0\xff"), (ts.ACL_ACCESS, _ACL)],
            ),
            [b"he", b"llo"],
        ),
        (ts.Member(b"dir/l", ts.SYMLINK, 0o777, linkname=b"t" * 300), []),
        (ts.Member(b"dir/c", ts.CHARDEV, 0o600, rdev_major=511, rdev_minor=1048000), []),
        (ts.Member(b"dir/b", ts.BLOCKDEV, 0o600, rdev_major=1 << 22, rdev_minor=3), []),
        (ts.Member(b"dir/p", ts.FIFO, 0o620), []),
        (ts.Member(b"dir/h", ts.HARDLINK, 0o644, linkname=long_name), []),
    )
    assert len(raw) % ts.RECORD == 0
    got = read(raw)
    d, f, link, chardev, blockdev, fifo, hard = (m for m, _ in got)
    assert d.isdir() and d.name == "dir" and d.mode == 0o1777
    assert d.pax_headers["mtime"] == "-1.500000000"
    assert f.name.encode("utf-8", "surrogateescape") == long_name
    assert (f.mode, f.uid, f.gid, f.uname, f.gname) == (0o4755, 5_000_000, 7, "\u00fcser", "g")
    assert f.pax_headers["mtime"] == "1000000000.123456789"
    assert f.pax_headers["atime"] == "0.000000042"
    assert f.pax_headers["SCHILY.xattr.user.a%3Db%25"] == "\0\udcff"
    acl = "user::rw-,user:1000:r--,group::r--,group:23456:r-x,mask::rw-,other::---"
    assert f.pax_headers["SCHILY.acl.access"] == acl
    assert "SCHILY.xattr.system.posix_acl_access" not in f.pax_headers
    assert got[1][1] == b"hello"
    assert link.issym() and link.linkname == "t" * 300
    assert (chardev.devmajor, chardev.devminor) == (511, 1048000)
    assert blockdev.isblk() and (blockdev.devmajor, blockdev.devminor) == (1 << 22, 3)
    assert fifo.isfifo() and fifo.mode == 0o620
    assert hard.islnk() and hard.linkname.encode("utf-8", "surrogateescape") == long_name


def test_sparse_members_hold_only_their_data() -> None:
    size = 10 * 4096 + 100
    ext = [(4096, 4096), (3 * 4096, 5000)]
    raw = written(
        (ts.Member(b"s", ts.REGULAR, size=size, extents=ext), [b"a" * 4096, b"b" * 5000]),
        (ts.Member(b"all-hole", ts.REGULAR, size=1 << 20, extents=[]), []),
    )
    assert len(raw) <= 2 * ts.RECORD  # the holes take no room (the file is 41 KiB)
    (m, data), (h, hole) = read(raw)
    assert m.name == "s" and m.size == size and m.sparse == [*ext, (size, 0)]
    assert data == bytes(4096) + b"a" * 4096 + bytes(4096) + b"b" * 5000 + bytes(size - 17288)
    assert h.size == 1 << 20 and hole == bytes(1 << 20)


def test_sizes_beyond_the_header_fields() -> None:
    huge = 20 << 30  # 20 GiB: more than 11 octal digits hold
    raw = written(
        (
            ts.Member(b"sparse-huge", ts.REGULAR, size=huge, extents=[(huge - 4096, 4096)]),
            [b"x" * 4096],
        ),
    )
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        (m,) = t.getmembers()  # (not read: 20 GiB of zeros)
    assert m.size == huge and m.sparse == [(huge - 4096, 4096)]
    assert "size" not in m.pax_headers  # what is stored is small: no size record
    # A plain member that large announces its size in a pax record (content not written).
    buf = io.BytesIO()
    w = ts.TarWriter(buf)
    with pytest.raises(ts.IntegrityError):
        w.add(ts.Member(b"big", ts.REGULAR, size=huge), [b"short"])
    assert b" size=%d\n" % huge in buf.getvalue()


def test_content_must_match_the_size() -> None:
    for content in ([b"abc"], [b"abcdef"]):
        w = ts.TarWriter(io.BytesIO())
        try:
            w.add(ts.Member(b"f", ts.REGULAR, size=5), content)
        except ts.IntegrityError as e:
            assert "'f'" in str(e)
        else:
            raise AssertionError("a wrong size was written")


def test_malformed_acls_stay_xattrs() -> None:
    assert ts.acl_text(b"\x02\x00\x00\x00\x01\x00") is None
    assert ts.acl_text(struct.pack("<IHHI", 2, 0x40, 7, 0)) is None
    assert ts.acl_text(struct.pack("<IHHI", 2, 0x01, 7, 0)) == "user::rwx"
