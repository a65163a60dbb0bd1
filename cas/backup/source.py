"""Reading one source file of a backup: opened as the walk saw it, holes skipped.

Used by the backup's main process (cas/backup/archiver.py) and by its worker
processes (cas/backup/worker.py), which import this module rather than the
archiver: a worker then starts without the archiver's imports (the anomaly
check, snapshots, trees, patterns), which it never uses.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Protocol

from cas.fs import dirfd
from cas.protocols import Digest

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIGEST_READ = 4 << 20  # bytes per read when a file is only hashed (same_digest)


class SourceReader:
    """``read(n)`` (and ``readinto``) over an open regular file that skips the
    holes of sparse files.

    Holes found with SEEK_DATA/SEEK_HOLE come back as zeros without a read,
    so the content (and every chunk and digest) is the same as reading the
    whole file; ``bytes_read`` counts only what was really read.  Past the
    size seen at the start, and wherever the filesystem cannot report holes,
    it simply reads.
    """

    def __init__(self, fd: int, st: SourceStat) -> None:
        self.fd = fd
        self.size = st.st_size  # holes are looked for only below this
        self.pos = 0
        self.bytes_read = 0
        # A file with as many allocated bytes as its size has no holes worth a syscall.
        self._sparse = st.st_blocks * 512 < st.st_size
        self._hole_end = 0  # [pos, _hole_end) is a known hole
        self._data_end = 0 if self._sparse else -1  # [pos, _data_end) is known data; -1: all
        self._ended = False  # a short read at or past ``size``: the end, no pread to confirm

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position; b"" at the end of the file."""
        if self._ended:
            return b""
        hole, n = self._next(n)
        if hole:
            return bytes(n)
        data = os.pread(self.fd, n, self.pos)
        self._done(len(data), n)
        return data

    __call__ = read  # a ``read(n)`` for those that wrap it (cas/chunking/chunker.py)

    def readinto(self, view: memoryview) -> int:
        """``read`` into the front of ``view`` (no bytes object); the bytes put
        there, 0 at the end of the file (the chunker's own buffer, iter_chunks)."""
        if self._ended:
            return 0
        hole, n = self._next(len(view))
        if hole:
            view[:n] = bytes(n)
            return n
        got = os.preadv(self.fd, [view[:n]], self.pos)
        self._done(got, n)
        return got

    def _next(self, n: int) -> tuple[bool, int]:
        """(True, m): the next ``m`` bytes, at most ``n``, are a hole, now skipped;
        (False, m): read ``m`` bytes at ``pos`` next."""
        while self._sparse and self.pos < self.size:
            if self.pos < self._hole_end:
                m = min(n, self._hole_end - self.pos)
                self.pos += m
                return True, m
            if self.pos < self._data_end:
                n = min(n, self._data_end - self.pos)
                break
            self._probe()
        # Ask for what the file holds (plus a little, to see it grow or end):
        # pread allocates the full request first, 16 MiB for a 1 KiB file.
        return False, min(n, max(self.size - self.pos, 0) + 4096)

    def _done(self, got: int, n: int) -> None:
        """``got`` of the ``n`` bytes asked for at ``pos`` were read."""
        self.pos += got
        self.bytes_read += got
        # A regular file reads short only at its end.  Below the size seen at
        # the start (it shrank, or an odd filesystem) the next pread confirms it.
        self._ended = got < n and self.pos >= self.size

    def _probe(self) -> None:
        """Find whether a hole or data starts at ``pos``, and where it ends."""
        try:
            start = os.lseek(self.fd, self.pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no SEEK_DATA here: just read
                self._sparse = False
                return
            # No data up to the end: a hole to the end (of the file as it is now).
            self._hole_end = min(self.size, os.fstat(self.fd).st_size)
            if self._hole_end <= self.pos:
                self._sparse = False  # shrunk: let read() find the end
            return
        if start > self.pos:
            self._hole_end = min(start, self.size)
            return
        try:
            self._data_end = os.lseek(self.fd, self.pos, os.SEEK_HOLE)
        except OSError:
            self._sparse = False
            return
        if self._data_end <= self.pos:  # truncated in between
            self._sparse = False


class SourceStat(Protocol):
    """What reading a file needs of the ``lstat`` seen before it was opened."""

    @property
    def st_dev(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_blocks(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ctime_ns(self) -> int: ...


def open_source(opener: dirfd.Opener, name: bytes, dir_fd: int, st: SourceStat) -> int:
    """The regular file ``name`` in ``dir_fd``, opened for reading (not through a
    symlink, without blocking on a FIFO put in its place); OSError if it cannot be
    opened or is no longer the file ``st`` describes (ESTALE)."""
    fd = opener.open(name, _FILE_FLAGS, dir_fd)
    try:
        opened = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise OSError(errno.ESTALE, "replaced while it was backed up")
    return fd


def read_small(fd: int, st: SourceStat, limit: int) -> tuple[bytes | None, int]:
    """The whole content of the open file ``st`` describes, in one pread, when it is
    shorter than ``limit`` (a chunker's minimum chunk: one chunk then, none when empty)
    and has no holes; and the bytes read.  None for any other file, or one that grew
    past its size while read: read it the normal way (SourceReader and the chunker)."""
    if st.st_size >= limit or st.st_blocks * 512 < st.st_size:
        return None, 0
    data = os.pread(fd, st.st_size + 1, 0)  # one byte more: a file that grew
    if len(data) > st.st_size:
        return None, len(data)
    return data, len(data)


def same_digest(fd: int, st: SourceStat, digest: Digest, expected: bytes) -> tuple[bool, int]:
    """Whether the open file's whole-file digest is ``expected``, and the bytes read.

    A file whose ctime or inode moved (chmod, chown, new xattrs, ``cp -a``, a
    restore) but whose size and mtime did not must be read; one pass of the
    whole-file digest (BLAKE3, spec §6.2) is much cheaper than chunking it and
    hashing and looking up every chunk.  Any doubt (a change while reading, a
    read error, another digest) answers False: the file is then read the
    normal way, which reports errors.
    """
    reader = SourceReader(fd, st)
    try:
        while data := reader.read(_DIGEST_READ):
            digest.update(data)
        after = os.fstat(fd)
    except OSError:
        return False, reader.bytes_read
    same = reader.pos == st.st_size and not moved(after, st) and digest.digest() == expected
    return same, reader.bytes_read


def moved(after: SourceStat, before: SourceStat) -> bool:
    """Whether a file's size, mtime or ctime differ between two stats of it."""
    return (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
