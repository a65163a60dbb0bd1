"""Retention rules (cas/manage/policy.py): examples with restic's semantics, then properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.manage.policy import (
    NS,
    UNLIMITED,
    Decision,
    Duration,
    EmptyPolicy,
    GroupKey,
    Policy,
    SnapshotRef,
    apply_policy,
    newest_first,
    parse_group_by,
    plan_forget,
)
from cas.selection import SnapshotFilter


def at(text: str, tz: timezone = UTC) -> int:
    """'2024-03-31 12:00' as nanoseconds."""
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=tz).timestamp()) * NS


def ref(n: int, when: str | int, *, host: str = "h", tags: tuple[str, ...] = ()) -> SnapshotRef:
    t = at(when) if isinstance(when, str) else when
    return SnapshotRef(n.to_bytes(32, "big"), t, host, (b"/data",), frozenset(tags))


def kept(decisions: list[Decision]) -> set[int]:
    return {int.from_bytes(d.ref.id, "big") for d in decisions if d.keep}


def reasons(decisions: list[Decision]) -> dict[int, tuple[str, ...]]:
    return {int.from_bytes(d.ref.id, "big"): d.reasons for d in decisions}


# -- durations -------------------------------------------------------------------


def test_duration_parse_and_format() -> None:
    assert Duration.parse("2y5m7d3h") == Duration(2, 5, 7, 3)
    assert Duration.parse("3h1y") == Duration(1, 0, 0, 3)
    assert str(Duration(0, 5, 0, 3)) == "5m3h"
    assert Duration.parse("0d").is_zero()
    for bad in ("", "5", "5w", "1y2y", "y", "1.5d", "-1d", "1d 2h"):
        with pytest.raises(ValueError):
            Duration.parse(bad)


def test_duration_cutoff_uses_calendar_arithmetic() -> None:
    # One month before 31 March is "31 February", normalised (as Go does) to 2 March 2024.
    assert Duration(months=1).cutoff_ns(at("2024-03-31 10:00"), UTC) == at("2024-03-02 10:00")
    assert Duration(years=1).cutoff_ns(at("2024-02-29 00:00"), UTC) == at("2023-03-01 00:00")
    assert Duration(days=1, hours=3).cutoff_ns(at("2024-01-01 02:00"), UTC) == at(
        "2023-12-30 23:00"
    )
    assert Duration(years=10_000).cutoff_ns(at("2024-01-01 00:00"), UTC) is None


# -- single rules ----------------------------------------------------------------


def test_keep_last_keeps_the_newest_and_names_the_rule() -> None:
    snaps = [ref(i, at("2024-01-01 00:00") + i * 60 * NS) for i in range(10)]
    d = apply_policy(snaps, Policy(last=3))
    assert kept(d) == {7, 8, 9}
    assert reasons(d)[9] == ("last",)
    assert reasons(d)[0] == ()
    assert [x.ref for x in d] == snaps  # decisions come in input order


def test_keep_daily_counts_days_that_have_snapshots() -> None:
    snaps = [
        ref(1, "2024-01-01 08:00"),
        ref(2, "2024-01-01 20:00"),  # newest of 1 January
        ref(3, "2024-01-05 09:00"),  # 5 January: days without snapshots do not count
        ref(4, "2024-01-07 07:00"),
        ref(5, "2024-01-07 23:59"),  # newest of 7 January
    ]
    assert kept(apply_policy(snaps, Policy(daily=2))) == {3, 5}
    assert kept(apply_policy(snaps, Policy(daily=3))) == {2, 3, 5}
    assert kept(apply_policy(snaps, Policy(daily=UNLIMITED))) == {2, 3, 5}


def test_period_rules_hourly_weekly_monthly_yearly() -> None:
    snaps = [
        ref(1, "2022-12-31 10:00"),
        ref(2, "2023-06-04 10:10"),  # a Sunday: ISO week 22
        ref(3, "2023-06-05 10:20"),  # the Monday after: ISO week 23
        ref(4, "2023-06-05 10:40"),
        ref(5, "2023-06-05 11:05"),
    ]
    assert kept(apply_policy(snaps, Policy(hourly=2))) == {4, 5}
    assert kept(apply_policy(snaps, Policy(weekly=2))) == {2, 5}
    assert kept(apply_policy(snaps, Policy(monthly=2))) == {1, 5}
    assert kept(apply_policy(snaps, Policy(yearly=5))) == {1, 5}


def test_periods_follow_the_time_zone() -> None:
    # 23:30 and 00:30 UTC are the same day five hours west of Greenwich.
    west = timezone(timedelta(hours=-5))
    snaps = [ref(1, "2024-01-01 23:30"), ref(2, "2024-01-02 00:30")]
    assert kept(apply_policy(snaps, Policy(daily=5), UTC)) == {1, 2}
    assert kept(apply_policy(snaps, Policy(daily=5), west)) == {2}


def test_keep_within_is_relative_to_the_newest_snapshot() -> None:
    # The newest snapshot is years old: "within 2d" still keeps its neighbours.
    snaps = [
        ref(1, "2019-12-01 00:00"),
        ref(2, "2019-12-30 11:00"),
        ref(3, "2019-12-30 13:00"),
        ref(4, "2020-01-01 12:00"),
    ]
    d = apply_policy(snaps, Policy(within=Duration(days=2)))
    assert kept(d) == {3, 4}  # 2 is exactly 2d01h older than 4
    assert reasons(d)[3] == ("within 2d",)


def test_keep_tag_and_several_reasons() -> None:
    snaps = [
        ref(1, "2024-01-01 00:00", tags=("keep",)),
        ref(2, "2024-01-02 00:00"),
        ref(3, "2024-01-03 00:00", tags=("keep", "x")),
    ]
    d = apply_policy(snaps, Policy(last=1, daily=1, tags=("keep", "x")))
    assert kept(d) == {1, 3}
    assert reasons(d)[3] == ("last", "daily", "tag keep", "tag x")
    assert reasons(d)[1] == ("tag keep",)


def test_equal_times_are_ordered_by_id() -> None:
    t = at("2024-01-01 00:00")
    snaps = [ref(5, t), ref(9, t), ref(1, t)]
    assert [int.from_bytes(r.id, "big") for r in newest_first(snaps)] == [9, 5, 1]
    assert kept(apply_policy(snaps, Policy(last=1))) == {9}


def test_empty_policy_is_refused() -> None:
    with pytest.raises(EmptyPolicy):
        apply_policy([ref(1, "2024-01-01 00:00")], Policy())
    with pytest.raises(EmptyPolicy):
        apply_policy([], Policy(within=Duration()))
    with pytest.raises(ValueError):
        Policy(last=-2)


def test_describe_spells_the_rules() -> None:
    p = Policy(last=3, daily=UNLIMITED, within=Duration(years=1), tags=("a",))
    assert p.describe() == ["last 3", "daily unlimited", "within 1y", "tag a"]


# -- grouping and filters ----------------------------------------------------------


def test_groups_are_judged_separately() -> None:
    snaps = [
        ref(1, "2024-01-01 00:00", host="a"),
        ref(2, "2024-01-02 00:00", host="b"),
        ref(3, "2024-01-03 00:00", host="a", tags=("t",)),
        ref(4, "2024-01-04 00:00", host="b"),
    ]
    plans = plan_forget(snaps, Policy(last=1), ("host", "paths"))
    assert [p.key for p in plans] == [
        GroupKey("a", (b"/data",), None),
        GroupKey("b", (b"/data",), None),
    ]
    assert [kept(p.decisions) for p in plans] == [{3}, {4}]
    assert kept([d for p in plan_forget(snaps, Policy(last=1), ()) for d in p.decisions]) == {4}
    by_tags = plan_forget(snaps, Policy(last=1), parse_group_by("host,tags"))
    assert len(by_tags) == 3


def test_parse_group_by() -> None:
    assert parse_group_by("host, paths") == ("host", "paths")
    assert parse_group_by("") == ()
    with pytest.raises(ValueError):
        parse_group_by("host,user")


def test_filter() -> None:
    r = ref(1, "2024-01-01 00:00", host="a", tags=("x", "y"))
    assert SnapshotFilter().matches(r)
    assert SnapshotFilter(hosts=frozenset({"a", "b"}), tags=frozenset({"y"})).matches(r)
    assert not SnapshotFilter(hosts=frozenset({"b"})).matches(r)
    assert not SnapshotFilter(tags=frozenset({"z"})).matches(r)
    assert SnapshotFilter(paths=frozenset({b"/data", b"/x"})).matches(r)
    assert not SnapshotFilter(paths=frozenset({b"/x"})).matches(r)


# -- properties ----------------------------------------------------------------------

T0 = at("2020-01-01 00:00") // NS
TAGS = ("a", "b", "c")


@st.composite
def snapshot_lists(draw: st.DrawFn) -> list[SnapshotRef]:
    # Gaps from minutes to a year, so that periods hold several snapshots or none;
    # each snapshot's tags are a bit mask over TAGS.
    gap = st.sampled_from([0, 60, 3600, 86400, 7 * 86400, 40 * 86400, 400 * 86400])
    steps = draw(st.lists(st.tuples(gap, st.integers(0, 7)), max_size=30))
    t, out = T0, []
    for i, (g, mask) in enumerate(steps):
        t += g + 17 * i if g else 0  # gap 0: the same time as the previous one
        tags = frozenset(tag for bit, tag in enumerate(TAGS) if mask >> bit & 1)
        out.append(SnapshotRef(i.to_bytes(32, "big"), t * NS, "h", (b"/p",), tags))
    return draw(st.permutations(out))


counts = st.one_of(st.just(0), st.integers(1, 6), st.just(UNLIMITED))
durations = st.builds(
    Duration, st.integers(0, 2), st.integers(0, 13), st.integers(0, 40), st.integers(0, 48)
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    p = Policy(
        draw(counts),
        draw(counts),
        draw(counts),
        draw(counts),
        draw(counts),
        draw(counts),
        draw(st.none() | durations),
        tuple(sorted(draw(st.frozensets(st.sampled_from(TAGS))))),
    )
    return Policy(last=1) if p.is_empty() else p


def _more(n: int, extra: int) -> int:
    if n == UNLIMITED or extra < 0:
        return UNLIMITED
    return n + extra


@st.composite
def wider(draw: st.DrawFn, p: Policy) -> Policy:
    """A policy with every rule at least as generous as ``p``'s."""
    inc = st.integers(-1, 3)  # -1: unlimited
    w = p.within or Duration()
    within = Duration(
        w.years + draw(st.integers(0, 1)),
        w.months + draw(st.integers(0, 3)),
        w.days + draw(st.integers(0, 10)),
        w.hours + draw(st.integers(0, 30)),
    )
    return Policy(
        last=_more(p.last, draw(inc)),
        hourly=_more(p.hourly, draw(inc)),
        daily=_more(p.daily, draw(inc)),
        weekly=_more(p.weekly, draw(inc)),
        monthly=_more(p.monthly, draw(inc)),
        yearly=_more(p.yearly, draw(inc)),
        within=within if draw(st.booleans()) or p.within else p.within,
        tags=tuple(sorted(set(p.tags) | draw(st.frozensets(st.sampled_from(TAGS))))),
    )


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), policies())
def test_every_snapshot_is_decided_once_and_reasons_match(
    snaps: list[SnapshotRef], policy: Policy
) -> None:
    d = apply_policy(snaps, policy)
    assert [x.ref for x in d] == snaps
    for x in d:
        assert x.keep == bool(x.reasons)
    assert {x.ref.id for x in d if x.keep} | {x.ref.id for x in d if not x.keep} == {
        s.id for s in snaps
    }


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), st.integers(1, 35))
def test_keep_last_keeps_exactly_the_n_newest(snaps: list[SnapshotRef], n: int) -> None:
    d = apply_policy(snaps, Policy(last=n))
    assert {x.ref.id for x in d if x.keep} == {r.id for r in newest_first(snaps)[:n]}


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), st.integers(1, 8), st.sampled_from(["hourly", "daily", "monthly"]))
def test_period_rule_keeps_newest_of_the_n_latest_periods(
    snaps: list[SnapshotRef], n: int, period: str
) -> None:
    # An independent formulation: bucket everything, then take the newest buckets.
    fmt = {"hourly": "%Y%m%d%H", "daily": "%Y%m%d", "monthly": "%Y%m"}[period]
    buckets: dict[str, SnapshotRef] = {}
    for r in newest_first(snaps):
        key = datetime.fromtimestamp(r.time_ns // NS, UTC).strftime(fmt)
        buckets.setdefault(key, r)
    expected = {buckets[k].id for k in sorted(buckets, reverse=True)[:n]}
    d = apply_policy(snaps, Policy(**{period: n}))  # type: ignore[arg-type]
    assert {x.ref.id for x in d if x.keep} == expected


@settings(max_examples=300, deadline=None)
@given(st.data(), snapshot_lists(), policies())
def test_more_rules_never_keep_fewer(
    data: st.DataObject, snaps: list[SnapshotRef], policy: Policy
) -> None:
    bigger = data.draw(wider(policy))
    assert kept(apply_policy(snaps, policy)) <= kept(apply_policy(snaps, bigger))


@settings(max_examples=300, deadline=None)
@given(snapshot_lists(), policies())
def test_applying_a_policy_to_its_result_removes_nothing(
    snaps: list[SnapshotRef], policy: Policy
) -> None:
    survivors = [x.ref for x in apply_policy(snaps, policy) if x.keep]
    again = apply_policy(survivors, policy)
    assert all(x.keep for x in again)


@settings(max_examples=100, deadline=None)
@given(snapshot_lists())
def test_no_policy_never_removes_anything(snaps: list[SnapshotRef]) -> None:
    with pytest.raises(EmptyPolicy):
        apply_policy(snaps, Policy(within=Duration()))
