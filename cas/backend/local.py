"""A repository in a local directory: one file per object.

Durability and atomicity come from the classic sequence: write a hidden
temporary file in the target directory, fsync it, hard-link it to its final
name, remove the temporary name, fsync the directory.  ``link`` (unlike
``rename``) fails if the target exists, which makes writes write-once without
a check-then-act race.  Temporary names start with "." and object names may
not, so ``list`` never returns a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cas.backend.base import (
    Backend,
    ObjectInfo,
    UnfinishedUpload,
    check_name,
    check_prefix,
    scan_pieces,
)
from cas.backend.registry import BackendFactory
from cas.errors import AccessDenied, BackendError, ObjectExists, ObjectNotFound, UsageError

_TEMP_PREFIX = ".tmp-"
_DIR_MODE = 0o700

# Filesystems without hard links (FAT, some network shares) report these from
# link(); there we fall back to check-then-rename.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK})


class LocalBackend:
    """Objects as files under ``root``; ``data/ab/cd..`` maps to ``root/data/ab/cd..``.

    Files are created 0600 and directories 0700 whatever the umask, because a
    repository holds key files.  Thread-safe: it keeps no state but the root.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self._root = Path(root)

    @property
    def location(self) -> str:
        """The root directory."""
        return str(self._root)

    def create(self) -> None:
        """Create the root directory and any missing parents; an existing root is fine."""
        try:
            self._root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as err:
            raise _os_error("create directory", self._root, err) from err
        if not self._root.is_dir():
            raise BackendError(f"cannot create directory {self._root}: a file is in the way")

    def write(self, name: str, data: bytes | bytearray, *, cold: bool = False) -> None:
        """Store ``data`` as ``name`` atomically and durably; never replace an object.

        ``cold`` is ignored: a directory has one storage class.
        """
        self._store(
            name,
            lambda fd: _write_all(fd, data),
            lambda path: _same_file_content(path, io.BytesIO(data), len(data)),
        )

    def write_file(self, name: str, file: BinaryIO, size: int, *, cold: bool = False) -> None:
        """Like ``write``, copying ``size`` bytes of ``file`` in pieces (in the kernel
        where it can: copy_file_range), so the object is never in memory whole."""
        self._store(
            name,
            lambda fd: _copy_file(file, fd, size),
            lambda path: _same_file_content(path, file, size),
        )

    def _store(self, name: str, fill: Callable[[int], None], same: Callable[[Path], bool]) -> None:
        """Write a temporary file with ``fill``, fsync it, publish it as ``name`` (``same``
        tells whether an existing object is identical) and fsync the directory."""
        path = self._path(name)
        if not self._root.is_dir():
            # Refuse rather than recreate the root: a missing root usually means
            # an unmounted disk, and a backup must not silently land on the
            # filesystem underneath the mount point.
            raise BackendError(f"cannot write {path}: directory {self._root} does not exist")
        self._make_parents(path.parent)
        try:
            fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
        except OSError as err:
            raise _os_error("create a temporary file in", path.parent, err) from err
        try:
            try:
                fill(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._publish(name, temp, path, same)
        except OSError as err:
            raise _os_error("write", path, err) from err
        finally:
            _remove_quietly(temp)
        try:
            _fsync_dir(path.parent)
        except OSError as err:
            raise _os_error("sync directory", path.parent, err) from err

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return ``length`` bytes of ``name`` from ``offset`` (to the end if None)."""
        path = self._path(name)
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"invalid range for {path}: offset {offset}, length {length}")
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise ObjectNotFound(name=name) from err
        except OSError as err:
            raise _os_error("open", path, err) from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectNotFound(name=name)
            size = st.st_size
            end = size if length is None else offset + length
            if offset > size or end > size:
                raise BackendError(
                    f"short read of {path}: wanted bytes {offset}..{end}, file has {size}"
                )
            data = _pread_all(fd, end - offset, offset)
        except OSError as err:
            raise _os_error("read", path, err) from err
        finally:
            os.close(fd)
        if len(data) != end - offset:
            # The file shrank after fstat: someone else is modifying the repository.
            raise BackendError(f"short read of {path}: got {len(data)} of {end - offset} bytes")
        return data

    def stat(self, name: str) -> ObjectInfo:
        """Return the size of ``name``."""
        path = self._path(name)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError) as err:
            raise ObjectNotFound(name=name) from err
        except OSError as err:
            raise _os_error("stat", path, err) from err
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(name=name)
        return ObjectInfo(name=name, size=st.st_size)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Yield the objects under ``prefix`` + "/" (all objects if ``prefix`` is "")."""
        check_prefix(prefix)
        start = self._root / prefix if prefix else self._root
        yield from self._walk(start, f"{prefix}/" if prefix else "")

    def delete(self, name: str) -> None:
        """Remove ``name`` if it exists."""
        path = self._path(name)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as err:
            raise _os_error("delete", path, err) from err

    def list_leftovers(self) -> Iterator[UnfinishedUpload]:
        """Yield the temporary files of writes that never finished (with size and mtime).

        A write in progress has one too, for a moment: callers judge by age.
        """
        for directory, _dirs, files in os.walk(self._root, onerror=_raise_walk_error):
            for file in files:
                if not file.startswith(_TEMP_PREFIX):
                    continue
                path = Path(directory) / file
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue  # its write just finished
                name = path.relative_to(self._root).as_posix()
                yield UnfinishedUpload(name, size=st.st_size, started=st.st_mtime)

    def abort_leftover(self, upload: UnfinishedUpload) -> None:
        """Remove the temporary file ``upload.name``; refuses anything but a temporary file."""
        parts = upload.name.split("/")
        if not parts[-1].startswith(_TEMP_PREFIX) or any(p in ("", ".", "..") for p in parts):
            raise BackendError(f"{upload.name!r} is not a temporary file of {self._root}")
        path = self._root / upload.name
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise _os_error("delete", path, err) from err

    def close(self) -> None:
        """Nothing to release."""

    # -- helpers ---------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self._root / check_name(name)

    def _make_parents(self, directory: Path) -> None:
        """Create the directories from the root down to ``directory``, each 0700 and synced.

        Path.mkdir(parents=True) would give intermediate directories the
        umask's mode, and their new entries must reach the disk before the
        file inside them counts as durable.
        """
        missing: list[Path] = []
        current = directory
        while current != self._root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                os.mkdir(path, _DIR_MODE)
            except FileExistsError:
                if not path.is_dir():
                    raise BackendError(
                        f"cannot create directory {path}: a file is in the way"
                    ) from None
                continue  # another writer made it first
            except OSError as err:
                raise _os_error("create directory", path, err) from err
            try:
                _fsync_dir(path.parent)
            except OSError as err:
                raise _os_error("sync directory", path.parent, err) from err

    def _publish(self, name: str, temp: str, path: Path, same: Callable[[Path], bool]) -> None:
        """Give the synced temporary file its final name, unless that name is taken."""
        try:
            os.link(temp, path)
            return
        except FileExistsError:
            pass
        except OSError as err:
            if err.errno not in _NO_HARD_LINKS:
                raise
            # Without hard links a concurrent writer of the same name may slip in
            # between the check and the rename; names are content hashes, so it
            # would be writing the same bytes.
            if not os.path.lexists(path):
                os.rename(temp, path)
                return
        if not same(path):
            raise ObjectExists(name=name)

    def _walk(self, directory: Path, name_prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            raise _os_error("list", directory, err) from err
        for entry in entries:
            # Hidden entries are our temporary files or foreign clutter (.DS_Store).
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    yield from self._walk(Path(entry.path), f"{name_prefix}{entry.name}/")
                elif entry.is_file():
                    yield ObjectInfo(name=name_prefix + entry.name, size=entry.stat().st_size)
            except FileNotFoundError:
                continue  # deleted while we listed
            except OSError as err:
                raise _os_error("list", Path(entry.path), err) from err


def _raise_walk_error(err: OSError) -> None:
    raise _os_error("list", err.filename, err)


def _os_error(action: str, path: Path | str, err: OSError) -> BackendError:
    """One line naming the path and the system's reason, e.g. 'No space left on device'."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno in (errno.EACCES, errno.EPERM):
        return AccessDenied(f"cannot {action} {path}: {reason}")
    return BackendError(f"cannot {action} {path}: {reason}")


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """Read up to ``size`` bytes; fewer only at end of file (pread may return less)."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        part = os.pread(fd, remaining, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        remaining -= len(part)
    return b"".join(parts)


# copy_file_range errors that mean "not between these files": copy through memory instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def _copy_file(file: BinaryIO, fd: int, size: int) -> None:
    """Copy the first ``size`` bytes of ``file`` to ``fd`` (at its start) in pieces."""
    copied = 0
    copy_range = getattr(os, "copy_file_range", None)
    try:
        src = file.fileno()
    except (OSError, AttributeError, ValueError):
        copy_range = None
    if copy_range is not None:
        try:
            while copied < size:
                n = copy_range(src, fd, size - copied, copied, copied)
                if n == 0:
                    raise BackendError(f"a file to store is shorter than its {size} bytes")
                copied += n
            return
        except OSError as err:
            if err.errno not in _NO_KERNEL_COPY:  # else copy again from the start
                raise
    for piece in scan_pieces(file, size):
        _write_all(fd, piece)


def _same_file_content(path: Path, file: BinaryIO, size: int) -> bool:
    """Whether the file at ``path`` holds exactly the ``size`` bytes of ``file``, in pieces."""
    with open(path, "rb") as existing:
        if os.fstat(existing.fileno()).st_size != size:
            return False
        return all(existing.read(len(piece)) == piece for piece in scan_pieces(file, size))


def _fsync_dir(directory: Path) -> None:
    """Persist a directory's entries; filesystems that cannot are skipped."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    """Remove a temporary file; after the rename fallback it is already gone.

    Cleanup must not mask the write's real outcome, and a leftover hidden
    temporary file is never listed, so any failure here is ignored.
    """
    with contextlib.suppress(OSError):
        os.unlink(path)


@dataclass(frozen=True)
class LocalOptions:
    """Local locations take no options."""


def open_local(location: str, rest: str, options: LocalOptions) -> Backend:
    """The local backend of ``rest``, counting its operations (priced at zero)."""
    from cas.backend.accounting import AccountingBackend, PriceTable

    if not rest:
        raise UsageError(f"no path in location {location!r}")
    near = _NEAR_SCHEME.match(rest)
    if near and location == rest and not os.path.lexists(rest):
        # restic writes "s3:host/bucket"; "s3:/bucket" and "s3//bucket" are typos: none
        # of them is a new directory
        scheme, after = near.group(1).lower(), rest[near.end() :].lstrip("/")
        raise UsageError(
            f"{location!r} is not a location cas knows: did you mean {scheme}://{after}? "
            f"(a directory of that name: ./{location})"
        )
    return AccountingBackend(LocalBackend(os.path.expanduser(rest)), prices=PriceTable.free())


# A plain path that starts like a URL scheme without its "//" (s3:, sftp:, rest:, b2:...)
# or without its colon (s3//bucket).
_NEAR_SCHEME = re.compile(
    r"^(s3|sftp|rest|b2|azure|gs|swift|rclone|file|memory)(:|//)", re.IGNORECASE
)


FACTORY = BackendFactory(("", "file"), LocalOptions, open_local, "a path, file://")
