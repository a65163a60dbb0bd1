"""Counted nouns in messages people read: "1 pack", "2 packs", "1 entry", "3 entries".

The library's findings and errors and the CLI's summaries all say how many of
something there are; one rule for the plural keeps "1 packs" out of all of them.
"""

from __future__ import annotations


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """``n`` and the noun, singular for exactly one: ``counted(1, "index file")`` is
    "1 index file", ``counted(2, "entry")`` "2 entries" (``nouns`` for others)."""
    if n == 1:
        return f"{n} {noun}"
    if nouns is None:
        if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "o", "u"):
            nouns = noun[:-1] + "ies"
        elif noun.endswith(("s", "x", "ch", "sh")):
            nouns = noun + "es"
        else:
            nouns = noun + "s"
    return f"{n} {nouns}"
