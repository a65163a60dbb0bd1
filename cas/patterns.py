"""Exclude and include patterns (restic's syntax), matched against absolute byte paths.

A pattern without a slash matches any single path element (``*.o``,
``node_modules``).  A pattern with a slash matches a whole path: anchored at
the root when it starts with ``/``, otherwise at any directory boundary.
``*`` and ``?`` never cross a slash, ``**`` does, ``[...]`` is a class.
A pattern matching a directory also covers everything below it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def _translate(pattern: bytes) -> bytes:
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i : i + 1]
        if c == b"*":
            if pattern[i : i + 2] == b"**":
                out.append(b".*")
                i += 2
                if pattern[i : i + 1] == b"/":
                    out[-1] = b"(?:.*/)?"
                    i += 1
                continue
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"[":
            j = pattern.find(b"]", i + 2 if pattern[i + 1 : i + 2] in (b"!", b"^") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body[:1] in (b"!", b"^"):
                    body = b"^" + body[1:]
                out.append(b"[" + body.replace(b"\\", b"\\\\") + b"]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


class PatternSet:
    """A compiled list of patterns; ``matches(path)`` is true when any pattern matches."""

    def __init__(self, patterns: Iterable[bytes], ignore_case: bool = False) -> None:
        self.patterns = [p for p in patterns if p and not p.startswith(b"#")]
        parts = []
        for p in self.patterns:
            p = p.rstrip(b"/") or b"/"
            body = _translate(p)
            if b"/" not in p:
                parts.append(b"(?:^|/)" + body + b"(?:/|$)")
            elif p.startswith(b"/"):
                parts.append(b"^" + body + b"(?:/|$)")
            else:
                parts.append(b"(?:^|/)" + body + b"(?:/|$)")
        flags = re.IGNORECASE if ignore_case else 0
        self._re = re.compile(b"|".join(parts), flags | re.DOTALL) if parts else None

    def __bool__(self) -> bool:
        return self._re is not None

    def matches(self, path: bytes) -> bool:
        """Whether ``path`` (absolute, no trailing slash) or one of its ancestors matches."""
        return bool(self._re and self._re.search(path))


def read_pattern_file(path: str) -> list[bytes]:
    """Patterns from a file, one per line; blank lines and ``#`` comments skipped."""
    with open(path, "rb") as f:
        return [
            line.strip()
            for line in f.read().splitlines()
            if line.strip() and not line.startswith(b"#")
        ]
