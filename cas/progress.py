"""The one progress protocol every long-running library operation reports through.

The library never prints: prune, repair, copy, check and the rest call a
``Progress`` with what they are doing and, where they know it, how far they
are (``done`` of ``total``).  The CLI turns the calls into a status line on a
terminal; tests and quiet runs pass :func:`no_progress`.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Told what is happening: ``what``, and ``done`` of ``total`` when known."""

    def __call__(self, what: str, done: int | None = None, total: int | None = None) -> None: ...


def no_progress(what: str, done: int | None = None, total: int | None = None) -> None:
    """A Progress that shows nothing."""
