"""The status line of ``cas backup`` (its own module: ``cas.cli.cmd_backup`` imports the
archiver, whose ``Reporter`` this subclasses, only once the repository is open)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cas.backup.archiver import Reporter
from cas.cli.common import Output, clock_text, completion, fs_text, human_bytes, one_line

if TYPE_CHECKING:
    from cas.backup.scanner import SourceScan


class BackupProgress(Reporter):
    """The status line of a backup: files and bytes done (read, or found unchanged),
    and with the totals of a finished scan the percentage and the time left."""

    def __init__(self, out: Output, verbose: int = 0, scan: SourceScan | None = None) -> None:
        self.out = out
        self.verbose = verbose
        self.scan = scan
        self.start = time.monotonic()
        self.bytes = 0
        self.files = 0
        self.current = b""

    def file_started(self, path: bytes, size: int) -> None:
        self.current = path
        self._show()

    def bytes_done(self, n: int) -> None:
        self.bytes += n
        self._show()

    def warning(self, message: str) -> None:
        self.out.warn(message)

    def entry(self, path: bytes, action: str, kind: str, size: int, added: int) -> None:
        """-v: new and modified entries as they are decided; -vv: unchanged ones too."""
        if kind == "file":
            self.files += 1
        if self.verbose < (2 if action == "unchanged" else 1) or self.out.quiet:
            return
        if self.out.json:
            event = {
                "message_type": "verbose_status",
                "action": action,
                "item": fs_text(path),
                "type": kind,
                "data_size": size,
                "data_added": added,
            }
            self.out.message(event)
            return
        text = f"{action:<10}{one_line(fs_text(path))}"
        if kind == "file" and action != "unchanged":
            text += f" ({human_bytes(size)}, {human_bytes(added)} added)"
        self.out.line(text)

    def _show(self, force: bool = False) -> None:
        if not (force or self.out.progress_due()):
            return
        elapsed = time.monotonic() - self.start
        rate = self.bytes / elapsed if elapsed > 0 else 0
        scan = self.scan
        if scan is not None and not scan.done and self.files > scan.files:
            scan.stop()  # the backup overtook it: its totals would come too late
        if scan is None or scan.stopped:
            done = f"{self.files} files, {human_bytes(self.bytes)}"
        elif not scan.done:  # totals so far, still growing
            done = (
                f"{self.files}/{scan.files}+ files, "
                f"{human_bytes(self.bytes)}/{human_bytes(scan.bytes)}+"
            )
        else:
            left = completion(self.bytes, scan.bytes, elapsed)
            done = (
                f"{left}  {self.files}/{scan.files} files, "
                f"{human_bytes(self.bytes)}/{human_bytes(scan.bytes)}"
            )
        self.out.progress(
            f"[{clock_text(elapsed)}] {done}  {human_bytes(rate)}/s  {fs_text(self.current)}",
            force=force,
        )

    def finish(self) -> None:
        """Show the end state (all done, with the totals if the scan finished), and
        stop the scan if it still runs."""
        if self.scan is not None:
            self.scan.stop()
        self.current = b""
        if self.out.progress_enabled:
            self._show(force=True)
