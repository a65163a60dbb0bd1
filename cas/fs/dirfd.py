"""Directory descriptors: reach every entry by its name inside an open directory.

The kernel refuses paths longer than PATH_MAX (4096 bytes), and a tree 4,000
levels deep has longer ones.  Backup, restore and ``check --against`` hold a
descriptor for each directory on the way down and name entries relative to
it (``fstatat``, ``openat``, ``mkdirat``, ...): any depth works, lookups are
one component instead of a whole path, and no symlink swapped into a
restore target can redirect a write, since nothing on the way is followed.

Entries without a descriptor of their own (symlinks, devices, fifos,
sockets) are reached for their extended attributes through
``/proc/self/fd/<dir_fd>/<name>``, with ``follow_symlinks=False``.

One walk holds as many descriptors as the tree is deep, so the soft open-file
limit is raised to the hard one once per walk (as Go does at start), and a
walk keeps a reserve for everything else the process opens: a directory
beyond that budget fails like one beyond the limit (EMFILE), with a message
that names the limit.
"""

from __future__ import annotations

import errno
import os
import resource

__all__ = ["DIR_FLAGS", "RESERVED_FDS", "Opener", "proc_path", "raise_open_file_limit", "reason"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SEARCH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Descriptors a walk leaves to the rest of the process (repository files,
# pack uploads and reads on worker threads, locks, caches).
RESERVED_FDS = 128
_TOO_MANY = frozenset({errno.EMFILE, errno.ENFILE})


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass  # keep what we have; EMFILE is reported where it happens
    return soft


def proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path for ``name`` inside the open directory ``dir_fd``, however deep it is."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def reason(err: OSError) -> str:
    """``err`` for a one-line message; running out of descriptors says what to do."""
    text = err.strerror or str(err)
    if err.errno in _TOO_MANY:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        text += f" (directories nested deeper than the open-file limit {limit} allows; ulimit -n)"
    return text


class Opener:
    """Opens entries relative to directory descriptors and counts the directories held.

    Files and directories are opened with ``O_NOATIME`` while the kernel
    allows it (the owner or root): reading for a backup or a comparison must
    not change access times.  Directories count against a budget below the
    open-file limit; ``open_dir`` beyond it raises EMFILE.
    """

    def __init__(self) -> None:
        self.noatime = True
        self.dirs_open = 0
        self.dir_budget = max(raise_open_file_limit() - RESERVED_FDS, 16)

    def open(self, name: bytes, flags: int, dir_fd: int | None = None) -> int:
        """``os.open(name, flags, dir_fd=dir_fd)``, adding ``O_NOATIME`` where allowed."""
        if self.noatime:
            try:
                return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
            except PermissionError as e:
                if e.errno != errno.EPERM:
                    raise
                self.noatime = False  # not the owner and not root: atime may change
        return os.open(name, flags, dir_fd=dir_fd)

    def open_dir(self, name: bytes, dir_fd: int | None = None, *, search_only: bool = False) -> int:
        """A descriptor of the directory ``name`` (never through a symlink); close it with
        :meth:`close_dir`.  ``search_only``: one that needs no read permission (``O_PATH``),
        good only for reaching the entries inside."""
        if self.dirs_open >= self.dir_budget:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        if search_only:
            fd = os.open(name, _SEARCH_FLAGS, dir_fd=dir_fd)
        else:
            fd = self.open(name, DIR_FLAGS, dir_fd)
        self.dirs_open += 1
        return fd

    def close_dir(self, fd: int) -> None:
        """Close a descriptor from :meth:`open_dir` (nothing for -1)."""
        if fd >= 0:
            os.close(fd)
            self.dirs_open -= 1
