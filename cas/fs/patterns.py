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

from cas.errors import UsageError


class PatternError(UsageError):
    """invalid pattern {pattern}: {detail}"""


def _class(body: bytes) -> bytes:
    """The regex items of a glob class body: single bytes and ``a-z`` ranges, escaped."""
    items, t = [], 0
    while t < len(body):
        if t + 2 < len(body) and body[t + 1 : t + 2] == b"-":
            items.append(re.escape(body[t : t + 1]) + b"-" + re.escape(body[t + 2 : t + 3]))
            t += 3
        else:
            items.append(re.escape(body[t : t + 1]))
            t += 1
    return b"".join(items)


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
            k = i + 1
            negate = pattern[k : k + 1] in (b"!", b"^")
            if negate:
                k += 1
            j = pattern.find(b"]", k + 1)  # a "]" first in the class is a member
            if j < 0:
                out.append(re.escape(c))
            else:
                # A class, like * and ?, never matches the separator.
                items = _class(pattern[k:j])
                out.append(b"[^/" + items + b"]" if negate else b"(?!/)[" + items + b"]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def translate(pattern: bytes) -> bytes:
    """The regular expression of one glob, without anchors: ``*`` and ``?`` never
    cross a slash, ``**`` does, ``[...]`` is a class (for matching single entries,
    as ``cas find`` does, rather than whole subtrees)."""
    return _translate(pattern)


class PatternSet:
    """A compiled list of patterns; ``matches(path)`` is true when any pattern matches."""

    def __init__(self, patterns: Iterable[bytes], ignore_case: bool = False) -> None:
        self.patterns = [p for p in patterns if p and not p.startswith(b"#")]
        parts = []
        for p in self.patterns:
            p = p.rstrip(b"/") or b"/"
            body = _translate(p)
            if p == b"/":
                parts.append(b"^/")  # everything
            elif b"/" not in p:
                parts.append(b"(?:^|/)" + body + b"(?:/|$)")
            elif p.startswith(b"/"):
                parts.append(b"^" + body + b"(?:/|$)")
            else:
                parts.append(b"(?:^|/)" + body + b"(?:/|$)")
        flags = (re.IGNORECASE if ignore_case else 0) | re.DOTALL
        for p, part in zip(self.patterns, parts, strict=True):
            try:
                re.compile(part, flags)
            except re.error as e:
                shown = p.decode("utf-8", "backslashreplace")
                raise PatternError(pattern=repr(shown), detail=e.msg) from None
        self._re = re.compile(b"|".join(parts), flags) if parts else None

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
