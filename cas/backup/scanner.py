"""The background scan of a backup's source: how many files and bytes it will meet.

As restic's scanner: a second, cheaper walk of the same paths with the same
exclusions, so the status line of a backup can show totals, a percentage
and the time left.  It only counts (one ``lstat`` per entry, no reading),
runs in a thread at the lowest CPU priority, yields between directories and
stops as soon as it is told to: the backup stops it when its own walk has
caught up (the totals would come too late to be of use) and when it ends.
A scan is an estimate: whatever it cannot read it skips.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time

from cas.backup.archiver import BackupOptions, skip_contents

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW


class SourceScan:
    """Counts the regular files (``files``) and their bytes (``bytes``) below absolute
    ``paths`` as a backup with ``opts`` selects them, in a background thread."""

    def __init__(self, paths: list[bytes], opts: BackupOptions) -> None:
        self.paths = paths
        self.opts = opts
        self.files = 0
        self.bytes = 0
        self.done = False  # the whole source was counted: the totals are final
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cas-scan", daemon=True)

    def start(self) -> None:
        """Start counting."""
        self._thread.start()

    def stop(self) -> None:
        """Stop counting (soon: at the next directory); the totals stay partial."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether the scan was stopped before it finished."""
        return self._stop.is_set() and not self.done

    def wait(self) -> None:
        """Until the scan has finished or stopped."""
        self._thread.join()

    def _run(self) -> None:
        # Linux gives each thread its own nice value: only this one is lowered.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            self._walk()
        except Exception:  # an estimate only: a scan that fails shows no totals
            self._stop.set()
            return
        self.done = not self._stop.is_set()

    def _walk(self) -> None:
        todo: list[tuple[bytes, int]] = []
        for top in self.paths:
            with contextlib.suppress(OSError):
                self._count(top, os.lstat(top), todo, -1)
        while todo and not self._stop.is_set():
            path, device = todo.pop()
            try:
                fd = os.open(path, _DIR_FLAGS)
            except OSError:
                continue
            try:
                self._directory(path, fd, device, todo)
            finally:
                os.close(fd)
            time.sleep(0)  # let the backup's own thread have the interpreter

    def _directory(self, path: bytes, fd: int, device: int, todo: list[tuple[bytes, int]]) -> None:
        try:
            with os.scandir(fd) as listing:
                entries = list(listing)
        except OSError:
            return
        names = [os.fsencode(e.name) for e in entries]
        if skip_contents(self.opts, fd, names):
            return
        base = path.rstrip(b"/")
        for entry, name in zip(entries, names, strict=True):
            full = base + b"/" + name
            if self.opts.excludes_path(full):
                continue
            with contextlib.suppress(OSError):
                self._count(full, entry.stat(follow_symlinks=False), todo, device)

    def _count(
        self, path: bytes, st: os.stat_result, todo: list[tuple[bytes, int]], device: int
    ) -> None:
        if stat.S_ISDIR(st.st_mode):
            if self.opts.one_file_system and device not in (-1, st.st_dev):
                return
            todo.append((path, st.st_dev if self.opts.one_file_system else -1))
        elif stat.S_ISREG(st.st_mode) and not self.opts.excludes_size(st.st_size):
            self.files += 1
            self.bytes += st.st_size
