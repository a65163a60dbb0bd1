"""Retention rules for ``cas forget``: which snapshots to keep, and why (pure, no I/O).

The semantics are restic's, so that users can carry their policies over:

- snapshots are considered newest first (by time, then ID);
- ``last N`` keeps the N newest snapshots;
- ``hourly/daily/weekly/monthly/yearly N`` keep, for each of the N most recent
  periods that *have* snapshots, the newest snapshot of that period (periods
  without snapshots do not count, so a paused backup does not age out the
  history); weeks are ISO weeks; periods are in the given time zone;
- ``within D`` keeps every snapshot newer than D before the *newest* snapshot
  (not before now: a backup that has stopped must not let its history expire);
- ``tag T`` keeps every snapshot that carries tag T;
- a snapshot kept by any rule is kept, and every rule that matched is named.

A count of ``UNLIMITED`` (-1) keeps the newest snapshot of every period.  A
policy without any rule would remove everything; :func:`apply_policy` refuses
it.  Each rule's choice depends only on the snapshots, never on the other
rules, which is what makes adding rules keep at least as much and applying a
policy to its own result remove nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo

from cas.errors import UsageError
from cas.format.snapshot import Snapshot

UNLIMITED = -1
NS = 1_000_000_000

GROUP_FIELDS = ("host", "paths", "tags")

_DURATION_PART = re.compile(r"(\d+)([ymdh])")


class EmptyPolicy(UsageError):
    """no keep rule given: refusing to forget every snapshot (give --keep-* options or IDs)"""


@dataclass(frozen=True)
class SnapshotRef:
    """What the rules look at in a snapshot."""

    id: bytes
    time_ns: int
    hostname: str = ""
    paths: tuple[bytes, ...] = ()
    tags: frozenset[str] = frozenset()
    flagged: bool = False  # the backup found its change unusual (anomalies)

    @classmethod
    def of(cls, snapshot_id: bytes, snap: Snapshot) -> SnapshotRef:
        """The ref of a stored snapshot."""
        return cls(
            snapshot_id,
            snap.time_ns,
            snap.hostname,
            tuple(snap.paths),
            frozenset(snap.tags),
            bool(snap.anomalies),
        )


@dataclass(frozen=True)
class Duration:
    """A calendar span as in ``2y5m7d3h`` (years, months, days, hours)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse ``[Ny][Nm][Nd][Nh]`` (any order, each unit at most once); ValueError if not."""
        s = text.strip()
        pos, seen = 0, dict.fromkeys("ymdh", 0)
        used: set[str] = set()
        while pos < len(s):
            m = _DURATION_PART.match(s, pos)
            if m is None or m.group(2) in used:
                raise ValueError(f"invalid duration {text!r}: use e.g. 2y5m7d3h")
            used.add(m.group(2))
            seen[m.group(2)] = int(m.group(1))
            pos = m.end()
        if not used:
            raise ValueError(f"invalid duration {text!r}: use e.g. 2y5m7d3h")
        return cls(seen["y"], seen["m"], seen["d"], seen["h"])

    def is_zero(self) -> bool:
        """Whether the span is empty (such a rule keeps nothing and is ignored)."""
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        parts = zip((self.years, self.months, self.days, self.hours), "ymdh", strict=True)
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"

    def cutoff_ns(self, newest_ns: int, tz: tzinfo | None) -> int | None:
        """The instant this span before ``newest_ns``; None if that is before year 1.

        Years, months and days move the wall clock in ``tz`` (None: the local
        time zone) with Go's normalisation (31 March minus a month is "31
        February", that is 2 or 3 March); hours are then taken off the
        instant, as restic does.
        """
        sec, frac = divmod(newest_ns, NS)
        wall = _wall(sec, tz)
        months = wall.year * 12 + (wall.month - 1) - (self.years * 12 + self.months)
        year, month0 = divmod(months, 12)
        try:
            day = date(year, month0 + 1, 1) + timedelta(days=wall.day - 1 - self.days)
            moved = datetime.combine(day, wall.timetz())
            base = int(moved.timestamp())
        except (ValueError, OverflowError):
            return None
        return (base - self.hours * 3600) * NS + frac


@dataclass(frozen=True)
class Policy:
    """Keep rules; counts are 0 (rule off), a positive N, or UNLIMITED."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, n in self.counts():
            if n < UNLIMITED:
                raise ValueError(f"keep-{name} must be a count >= 0 or unlimited, not {n}")

    def counts(self) -> list[tuple[str, int]]:
        """(rule name, count) of the counting rules, in restic's order."""
        return [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]

    def is_empty(self) -> bool:
        """Whether no rule would keep anything."""
        return (
            all(n == 0 for _, n in self.counts())
            and (self.within is None or self.within.is_zero())
            and not self.tags
        )

    def describe(self) -> list[str]:
        """The rules as ``--keep-*`` options would spell them."""
        out = [f"{name} {'unlimited' if n == UNLIMITED else n}" for name, n in self.counts() if n]
        if self.within is not None and not self.within.is_zero():
            out.append(f"within {self.within}")
        out += [f"tag {t}" for t in self.tags]
        return out


@dataclass(frozen=True)
class Decision:
    """Whether one snapshot stays, and the rules that keep it (empty when it goes)."""

    ref: SnapshotRef
    keep: bool
    reasons: tuple[str, ...] = ()


def _wall(sec: int, tz: tzinfo | None) -> datetime:
    # None: naive local time, so that converting back follows the local DST rules.
    return datetime.fromtimestamp(sec, tz)


_PERIODS: list[tuple[str, Callable[[datetime], object]]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
]


def newest_first(snapshots: Iterable[SnapshotRef]) -> list[SnapshotRef]:
    """Snapshots ordered newest first; equal times are ordered by ID, highest first."""
    return sorted(snapshots, key=lambda r: (r.time_ns, r.id), reverse=True)


def apply_policy(
    snapshots: Sequence[SnapshotRef], policy: Policy, tz: tzinfo | None = UTC
) -> list[Decision]:
    """Decide for each snapshot of one group; decisions come in the order of ``snapshots``.

    ``tz`` is the time zone whose hours, days, weeks, months and years the
    period rules count (None: the local time zone, as ``cas forget`` uses).
    Raises EmptyPolicy when the policy has no rule.
    """
    if policy.is_empty():
        raise EmptyPolicy()
    ordered = newest_first(snapshots)
    reasons: dict[bytes, list[str]] = {r.id: [] for r in ordered}

    for pos, ref in enumerate(ordered):
        if policy.last == UNLIMITED or pos < policy.last:
            reasons[ref.id].append("last")

    walls = {r.id: _wall(r.time_ns // NS, tz) for r in ordered}
    counts = dict(policy.counts())
    for name, key_of in _PERIODS:
        left = counts[name]
        previous: object = None
        for ref in ordered:
            if left == 0:
                break
            key = key_of(walls[ref.id])
            if key != previous:
                # The first snapshot met in a period is its newest.
                reasons[ref.id].append(name)
                previous = key
                if left > 0:
                    left -= 1

    if ordered and policy.within is not None and not policy.within.is_zero():
        cutoff = policy.within.cutoff_ns(ordered[0].time_ns, tz)
        for ref in ordered:
            if cutoff is None or ref.time_ns > cutoff:
                reasons[ref.id].append(f"within {policy.within}")

    for tag in policy.tags:
        for ref in ordered:
            if tag in ref.tags:
                reasons[ref.id].append(f"tag {tag}")

    return [Decision(r, bool(reasons[r.id]), tuple(reasons[r.id])) for r in snapshots]


# -- selecting and grouping ------------------------------------------------------


@dataclass(frozen=True)
class GroupKey:
    """What the snapshots of one group share (fields not grouped by are None)."""

    hostname: str | None = None
    paths: tuple[bytes, ...] | None = None
    tags: tuple[str, ...] | None = None


@dataclass
class GroupPlan:
    """The decisions for one group, oldest snapshot first."""

    key: GroupKey
    decisions: list[Decision] = field(default_factory=list)

    @property
    def keep(self) -> list[Decision]:
        """Decisions to keep."""
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list[Decision]:
        """Decisions to remove."""
        return [d for d in self.decisions if not d.keep]


def parse_group_by(text: str) -> tuple[str, ...]:
    """``host,paths`` -> ("host", "paths"); empty means one group; ValueError on unknown fields."""
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    for f in fields:
        if f not in GROUP_FIELDS:
            raise ValueError(
                f"cannot group by {f!r}: use a comma list of {', '.join(GROUP_FIELDS)}"
            )
    return fields


def group_key(ref: SnapshotRef, group_by: Iterable[str]) -> GroupKey:
    """The key of ``ref``'s group."""
    by = set(group_by)
    return GroupKey(
        hostname=ref.hostname if "host" in by else None,
        paths=tuple(sorted(ref.paths)) if "paths" in by else None,
        tags=tuple(sorted(ref.tags)) if "tags" in by else None,
    )


def plan_forget(
    snapshots: Iterable[SnapshotRef],
    policy: Policy,
    group_by: Iterable[str] = ("host", "paths"),
    tz: tzinfo | None = UTC,
) -> list[GroupPlan]:
    """Group the snapshots and apply the policy to each group separately.

    Groups come in the order of their oldest snapshot; within a group,
    decisions are oldest first.
    """
    by = tuple(group_by)
    groups: dict[GroupKey, list[SnapshotRef]] = {}
    for ref in sorted(snapshots, key=lambda r: (r.time_ns, r.id)):
        groups.setdefault(group_key(ref, by), []).append(ref)
    return [GroupPlan(k, apply_policy(refs, policy, tz)) for k, refs in groups.items()]


# -- snapshots flagged as unusual -------------------------------------------------

FLAGGED = "anomaly"
BEFORE_FLAGGED = "before anomaly"


def anomaly_guard(snapshots: Iterable[SnapshotRef]) -> dict[bytes, str]:
    """The snapshots forget keeps whatever the policy says (unless --allow-anomalous),
    with the reason: each flagged snapshot, and the newest unflagged one before it of
    the same host and paths (the last state before the unusual change).

    The flagged snapshot is kept too: it carries the flag, so forgetting it would
    leave the one before it unprotected at the next forget.
    """
    guard: dict[bytes, str] = {}
    groups: dict[GroupKey, list[SnapshotRef]] = {}
    for ref in sorted(snapshots, key=lambda r: (r.time_ns, r.id)):
        groups.setdefault(group_key(ref, ("host", "paths")), []).append(ref)
    for refs in groups.values():
        good: SnapshotRef | None = None
        for ref in refs:
            if not ref.flagged:
                good = ref
                continue
            guard[ref.id] = FLAGGED
            if good is not None:
                guard.setdefault(good.id, BEFORE_FLAGGED)
    return guard


def keep_guarded(plans: list[GroupPlan], guard: dict[bytes, str]) -> list[GroupPlan]:
    """``plans`` with every guarded snapshot kept, its reason added."""
    out = []
    for plan in plans:
        decisions = [
            Decision(d.ref, True, (*d.reasons, guard[d.ref.id])) if d.ref.id in guard else d
            for d in plan.decisions
        ]
        out.append(GroupPlan(plan.key, decisions))
    return out
