"""A streaming POSIX tar (pax) writer that keeps everything GNU tar can restore.

Python's :mod:`tarfile` rounds times to microseconds through floats and writes
no sparse members, so headers are written here (POSIX.1-2001 pax, as GNU tar
reads them):

- every name, link target, owner and group name at any length and in any bytes
  (``path``, ``linkpath``, ``uname``, ``gname`` records, raw bytes as GNU tar
  writes them: no ``hdrcharset``, which GNU tar does not know and warns about),
  and ids of any size (``uid``, ``gid``);
- ``mtime`` and ``atime`` in nanoseconds;
- permission bits with setuid, setgid and sticky;
- hardlinks (type ``1``), symlinks, character and block devices (major and minor
  in octal, or base-256 when they do not fit), fifos, directories;
- extended attributes as ``SCHILY.xattr.NAME`` (the form GNU tar and bsdtar
  write), POSIX ACLs as ``SCHILY.acl.access`` and ``SCHILY.acl.default`` text
  (what ``tar --acls`` reads), converted from their ``system.posix_acl_*``
  values;
- sparse files in the GNU pax format 1.0: a map of the data extents at the
  start of the member's data, then only the data.

Content is given as an iterable of byte strings and written as it comes, so no
member is ever held in memory.  The writer checks that a member's content has
exactly the size its header announced.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from cas.errors import IntegrityError

BLOCK = 512
RECORD = 20 * BLOCK  # archives end on a whole record, as tar writes them

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHARDEV = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"
PAX_HEADER = b"x"

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"

# struct posix_acl_xattr_entry tags (linux/posix_acl_xattr.h)
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}
_ACL_NAMED = (0x02, 0x08)


@dataclass
class Member:
    """One archive member: its header fields (content goes to :meth:`TarWriter.add`)."""

    name: bytes  # path inside the archive, relative, no trailing slash
    type: bytes  # REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO
    mode: int = 0o644  # permission bits incl. setuid/setgid/sticky
    uid: int = 0
    gid: int = 0
    uname: str | None = None
    gname: str | None = None
    size: int = 0  # bytes of content (of a regular file; its real size when sparse)
    mtime_ns: int = 0
    atime_ns: int | None = None
    linkname: bytes = b""  # symlink target, or the earlier member a hardlink names
    rdev_major: int = 0
    rdev_minor: int = 0
    xattrs: Sequence[tuple[bytes, bytes]] = ()
    # (offset, length) of the data of a sparse file, ascending; None: not sparse
    extents: list[tuple[int, int]] | None = None
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)  # more pax records


class TarWriter:
    """Writes members to ``out`` (a binary stream, need not be seekable)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.written = 0

    def add(self, m: Member, content: Iterable[bytes] = ()) -> None:
        """Write ``m``'s headers, then its content (regular files only): the bytes of
        the whole file, or of its extents in order when ``m.extents`` is set."""
        records, stored = self._records(m)
        ustar_name = m.name + (b"/" if m.type == DIRECTORY else b"")
        if m.extents is not None:
            ustar_name = b"GNUSparseFile.0/" + m.name.rsplit(b"/", 1)[-1]
            sparse_map = _sparse_map(m.extents, m.size)
            stored = len(sparse_map) + sum(n for _, n in m.extents)
            if stored > 0o77777777777:
                records.append((b"size", b"%d" % stored))
        if records:
            self._write_pax(m.name, records)
        self._write(_header(m, ustar_name, stored))
        if m.type != REGULAR:
            return
        done = 0
        if m.extents is not None:
            self._write(sparse_map)
            done = len(sparse_map)
        for chunk in content:
            done += len(chunk)
            if done > stored:
                raise IntegrityError(what=_shown(m.name), detail="more content than its size")
            self._write(chunk)
        if done != stored:
            raise IntegrityError(
                what=_shown(m.name), detail=f"content is {done} bytes, not {stored}"
            )
        self._pad()

    def close(self) -> None:
        """The end-of-archive blocks, up to a whole record; flush."""
        self._write(bytes(2 * BLOCK))
        if self.written % RECORD:
            self._write(bytes(RECORD - self.written % RECORD))
        self.out.flush()

    # -- internals -----------------------------------------------------------------

    def _records(self, m: Member) -> tuple[list[tuple[bytes, bytes]], int]:
        """The pax records ``m`` needs, and its data size (of a regular file)."""
        rec: list[tuple[bytes, bytes]] = []
        name = m.name + (b"/" if m.type == DIRECTORY else b"")
        if m.extents is not None:
            rec += [
                (b"GNU.sparse.major", b"1"),
                (b"GNU.sparse.minor", b"0"),
                (b"GNU.sparse.name", m.name),
                (b"GNU.sparse.realsize", b"%d" % m.size),
            ]
        elif not _fits_ustar_name(name):
            rec.append((b"path", name))
        if len(m.linkname) > 100 or not m.linkname.isascii():
            rec.append((b"linkpath", m.linkname))
        for key, num in ((b"uid", m.uid), (b"gid", m.gid)):
            if num > 0o7777777 or num < 0:
                rec.append((key, b"%d" % num))
        for key, text in ((b"uname", m.uname), (b"gname", m.gname)):
            if text is not None:
                raw = text.encode("utf-8", "surrogateescape")
                if len(raw) > 31 or not raw.isascii():
                    rec.append((key, raw))
        rec.append((b"mtime", _pax_time(m.mtime_ns)))
        if m.atime_ns is not None:
            rec.append((b"atime", _pax_time(m.atime_ns)))
        stored = m.size if m.type == REGULAR else 0
        if stored > 0o77777777777 and m.extents is None:  # a sparse one's is set by add()
            rec.append((b"size", b"%d" % stored))
        for key, value in m.xattrs:
            if key in (ACL_ACCESS, ACL_DEFAULT):
                acl = acl_text(value)
                if acl is not None:
                    kind = b"access" if key == ACL_ACCESS else b"default"
                    rec.append((b"SCHILY.acl." + kind, acl.encode()))
                    continue
            rec.append((b"SCHILY.xattr." + _xattr_keyword(key), value))
        rec += m.extra
        return rec, stored

    def _write_pax(self, name: bytes, records: list[tuple[bytes, bytes]]) -> None:
        body = b"".join(_pax_record(k, v) for k, v in records)
        base = name.rsplit(b"/", 1)[-1][:80]
        head = Member(name=b"PaxHeaders/" + base, type=PAX_HEADER, size=len(body))
        self._write(_header(head, head.name, len(body)))
        self._write(body)
        self._pad()

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _pad(self) -> None:
        if self.written % BLOCK:
            self._write(bytes(BLOCK - self.written % BLOCK))


def _shown(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def _fits_ustar_name(name: bytes) -> bool:
    return len(name) <= 100 and name.isascii()


def _xattr_keyword(name: bytes) -> bytes:
    """GNU tar's escaping of an xattr name in a pax keyword: ``%`` and ``=``."""
    return name.replace(b"%", b"%25").replace(b"=", b"%3D")


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``"LEN KEY=VALUE\\n"``, where LEN counts the whole record, its own digits too."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def _pax_time(ns: int) -> bytes:
    """Seconds with nine decimals, as pax times are written ("-1.500000000" for -1.5 s)."""
    sign = b"-" if ns < 0 else b""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return sign + b"%d.%09d" % (sec, frac)


def _number(value: int, width: int) -> bytes:
    """A numeric header field: octal digits and a NUL, or GNU base-256 when it does not
    fit (or is negative)."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o" % (width - 1, value) + b"\0"
    if value < 0:
        value &= (1 << (8 * width - 1)) - 1
        return bytes([0xFF]) + value.to_bytes(width - 1, "big")[-(width - 1) :]
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _header(m: Member, name: bytes, size: int) -> bytes:
    """A ustar header block; fields too long for it are in the pax records before it."""
    prefix, short = b"", name
    if len(name) > 100:
        cut = name.rfind(b"/", 0, 156)
        if cut > 0 and len(name) - cut - 1 <= 100:
            prefix, short = name[:cut], name[cut + 1 :]
        else:
            short = name[:100]
    uname = (m.uname or "").encode("utf-8", "surrogateescape")[:32]
    gname = (m.gname or "").encode("utf-8", "surrogateescape")[:32]
    fields = [
        short.ljust(100, b"\0"),
        _number(m.mode & 0o7777, 8),
        _number(m.uid, 8),
        _number(m.gid, 8),
        _number(size, 12),
        _number(max(0, m.mtime_ns // 1_000_000_000), 12),
        b" " * 8,
        m.type,
        m.linkname[:100].ljust(100, b"\0"),
        b"ustar\x0000",
        uname.ljust(32, b"\0"),
        gname.ljust(32, b"\0"),
        _number(m.rdev_major, 8),
        _number(m.rdev_minor, 8),
        prefix[:155].ljust(155, b"\0"),
        bytes(12),
    ]
    block = bytearray(b"".join(fields))
    assert len(block) == BLOCK
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def _sparse_map(extents: list[tuple[int, int]], size: int) -> bytes:
    """The GNU sparse 1.0 map: count, then offset and length of each extent, one
    decimal per line, zero-padded to a block.  A last (size, 0) entry makes the file
    end in its trailing hole, as GNU tar writes it."""
    entries = list(extents)
    if not entries or entries[-1][0] + entries[-1][1] < size:
        entries.append((size, 0))
    text = b"%d\n" % len(entries) + b"".join(b"%d\n%d\n" % e for e in entries)
    return text + bytes(-len(text) % BLOCK)


def acl_text(value: bytes) -> str | None:
    """A ``system.posix_acl_*`` value as ACL text with numeric ids
    ("user::rw-,user:1000:r--,group::r--,mask::r--,other::---"), as
    ``acl_from_text`` and so ``tar --acls`` read it; None if it is malformed."""
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        return None
    parts = []
    for off in range(4, len(value), 8):
        tag, perm, uid = struct.unpack_from("<HHI", value, off)
        kind = _ACL_TAGS.get(tag)
        if kind is None:
            return None
        who = str(uid) if tag in _ACL_NAMED else ""
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        parts.append(f"{kind}:{who}:{rwx}")
    return ",".join(parts)
