"""Which snapshots a command considers: the --host, --tag and --path filter.

One implementation for every command that selects snapshots (snapshots,
forget, tag, stats, mount) and for the mount's view; pure, over anything
that describes a snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol


class Described(Protocol):
    """What a snapshot filter looks at: a :class:`SnapshotRef` or a stored Snapshot."""

    @property
    def hostname(self) -> str: ...

    @property
    def tags(self) -> Collection[str]: ...

    @property
    def paths(self) -> Collection[bytes]: ...


@dataclass(frozen=True)
class SnapshotFilter:
    """Which snapshots a command considers; an empty criterion matches everything.

    A snapshot matches when its host is one of ``hosts``, it has at least
    one of ``tags`` and includes at least one of ``paths`` (the --host,
    --tag and --path options of every command that selects snapshots).
    """

    hosts: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    paths: frozenset[bytes] = frozenset()

    @classmethod
    def of(
        cls, hosts: Iterable[str] = (), tags: Iterable[str] = (), paths: Iterable[str] = ()
    ) -> SnapshotFilter:
        """The filter of the options as given (paths as command-line text)."""
        return cls(frozenset(hosts), frozenset(tags), frozenset(os.fsencode(p) for p in paths))

    def matches(self, snap: Described) -> bool:
        """Whether ``snap`` passes every given criterion."""
        return (
            (not self.hosts or snap.hostname in self.hosts)
            and (not self.tags or any(_has_all(snap.tags, t) for t in self.tags))
            and (not self.paths or not self.paths.isdisjoint(snap.paths))
        )

    def describe(self) -> str:
        """The criteria in words, for a message ("of host a or b, tagged x,y, with path /p")."""
        parts = []
        if self.hosts:
            parts.append("of host " + " or ".join(sorted(self.hosts)))
        if self.tags:
            parts.append("tagged " + " or ".join(sorted(self.tags)))
        if self.paths:
            parts.append("with path " + " or ".join(sorted(os.fsdecode(p) for p in self.paths)))
        return ", ".join(parts) or "at all"


def split_tags(values: Iterable[str]) -> list[str]:
    """Tags as given to --tag/--add/--remove/--set: "a,b" is two tags (as restic)."""
    return [t for v in values for t in v.split(",") if t]


def _has_all(tags: Collection[str], wanted: str) -> bool:
    """Whether ``tags`` holds every tag of ``wanted`` ("a,b": both a and b, as restic)."""
    return all(t in tags for t in wanted.split(",") if t)


EVERY_SNAPSHOT = SnapshotFilter()
