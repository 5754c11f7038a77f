"""The forget policy: restic's keep rules on fixed UTC timestamps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from ploinkyd.backup.format import Snapshot
from ploinkyd.backup.retention import (
    EMPTY_POLICY_MESSAGE,
    UNLIMITED,
    Decision,
    KeepWithin,
    RetentionPolicy,
    apply_policy,
    parse_keep_within,
)
from ploinkyd.errors import UserError

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC).timestamp()


def ts(text: str) -> float:
    """``"2024-01-31 12:00"`` in UTC → unix seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def snap(
    when: str | float,
    *,
    host: str = "h1",
    job: str = "nightly",
    paths: Sequence[str] = ("/srv",),
    tags: Sequence[str] = (),
) -> Snapshot:
    return Snapshot(
        time=ts(when) if isinstance(when, str) else when,
        host=host,
        job=job,
        paths=list(paths),
        tags=list(tags),
        tree="0" * 64,
    )


def named(*times: str) -> list[tuple[str, Snapshot]]:
    """Snapshots whose ids are their times, so expectations read as dates."""
    return [(t, snap(t)) for t in times]


def run(
    snapshots: Sequence[tuple[str, Snapshot]],
    tz: tzinfo | None = UTC,
    now: float = FAR_FUTURE,
    group_by: Sequence[str] = ("host", "job", "paths"),
    **policy: Any,
) -> list[Decision]:
    return apply_policy(snapshots, RetentionPolicy(**policy), now=now, group_by=group_by, tz=tz)


def kept(decisions: Sequence[Decision]) -> set[str]:
    return {d.id for d in decisions if d.keep}


DAYS = named(
    "2024-01-01 08:00",
    "2024-01-01 20:00",
    "2024-01-02 09:00",
    "2024-01-03 10:00",
    "2024-01-03 23:00",
)
HOURS = named(
    "2024-01-01 10:05",
    "2024-01-01 10:40",
    "2024-01-01 11:10",
    "2024-01-01 11:50",
    "2024-01-01 12:20",
)
# 2024-12-28 is a Saturday in ISO week 2024-W52; 30 Dec 2024 to 5 Jan 2025 is ISO week
# 2025-W01, so a week bucket of (calendar year, week) would split it in two.
ISO_WEEKS = named(
    "2024-12-28 12:00",
    "2024-12-30 12:00",
    "2025-01-01 12:00",
    "2025-01-05 12:00",
    "2025-01-06 12:00",
)
MONTHS = named("2023-12-10 00:00", "2023-12-20 00:00", "2024-01-05 00:00", "2024-01-25 00:00")
YEARS = named(
    "2021-03-01 00:00",
    "2021-09-01 00:00",
    "2022-05-01 00:00",
    "2023-01-01 00:00",
    "2023-07-01 00:00",
)
WITHIN = named(
    "2024-01-08 11:59",
    "2024-01-08 12:00",
    "2024-01-08 12:01",
    "2024-01-09 00:00",
    "2024-01-10 12:00",
)
# Newest 2024-01-15: one month back is 2023-12-15, across the year boundary.
WITHIN_MONTH = named("2023-12-14 23:59", "2023-12-15 00:00", "2023-12-15 00:01", "2024-01-15 00:00")
# Newest 31 March: one month back clamps to the last day of February.
WITHIN_LEAP = named("2024-02-29 09:00", "2024-02-29 11:00", "2024-03-31 10:00")
WITHIN_NONLEAP = named("2023-02-28 09:00", "2023-02-28 11:00", "2023-03-31 10:00")
# 2024-03-05 12:00 - 1y2m = 2023-01-05 12:00, - 3d = 2023-01-02 12:00, - 4h = 08:00.
WITHIN_ALL_UNITS = named("2023-01-02 08:00", "2023-01-02 08:01", "2024-03-05 12:00")

KEEP_CASES: list[tuple[str, list[tuple[str, Snapshot]], dict[str, Any], set[str]]] = [
    ("last 2 of 5", DAYS, {"keep_last": 2}, {"2024-01-03 23:00", "2024-01-03 10:00"}),
    ("last more than there are", DAYS[:3], {"keep_last": 10}, {t for t, _ in DAYS[:3]}),
    ("last unlimited", DAYS, {"keep_last": UNLIMITED}, {t for t, _ in DAYS}),
    ("hourly 2", HOURS, {"keep_hourly": 2}, {"2024-01-01 12:20", "2024-01-01 11:50"}),
    (
        "hourly 3: newest of each hour",
        HOURS,
        {"keep_hourly": 3},
        {"2024-01-01 12:20", "2024-01-01 11:50", "2024-01-01 10:40"},
    ),
    (
        "daily 3: newest of each day",
        DAYS,
        {"keep_daily": 3},
        {"2024-01-03 23:00", "2024-01-02 09:00", "2024-01-01 20:00"},
    ),
    (
        "daily 5: counts left keep the oldest too",
        DAYS,
        {"keep_daily": 5},
        {"2024-01-03 23:00", "2024-01-02 09:00", "2024-01-01 20:00", "2024-01-01 08:00"},
    ),
    (
        "daily unlimited: every day and the oldest",
        DAYS,
        {"keep_daily": "unlimited"},
        {"2024-01-03 23:00", "2024-01-02 09:00", "2024-01-01 20:00", "2024-01-01 08:00"},
    ),
    (
        "weekly 2 at the ISO year boundary",
        ISO_WEEKS,
        {"keep_weekly": 2},
        {"2025-01-06 12:00", "2025-01-05 12:00"},
    ),
    (
        "weekly 3: 30 Dec 2024 is in 2025-W01",
        ISO_WEEKS,
        {"keep_weekly": 3},
        {"2025-01-06 12:00", "2025-01-05 12:00", "2024-12-28 12:00"},
    ),
    (
        "monthly 2 across new year",
        MONTHS,
        {"keep_monthly": 2},
        {"2024-01-25 00:00", "2023-12-20 00:00"},
    ),
    ("monthly 1", MONTHS, {"keep_monthly": 1}, {"2024-01-25 00:00"}),
    ("yearly 2", YEARS, {"keep_yearly": 2}, {"2023-07-01 00:00", "2022-05-01 00:00"}),
    (
        "yearly unlimited: every year and the oldest",
        YEARS,
        {"keep_yearly": -1},
        {"2023-07-01 00:00", "2022-05-01 00:00", "2021-09-01 00:00", "2021-03-01 00:00"},
    ),
    (
        "within 2d of the newest, strictly after the cut-off",
        WITHIN,
        {"keep_within": "2d"},
        {"2024-01-08 12:01", "2024-01-09 00:00", "2024-01-10 12:00"},
    ),
    ("within 37h", WITHIN, {"keep_within": "37h"}, {"2024-01-09 00:00", "2024-01-10 12:00"}),
    ("within 36h: the cut-off itself is out", WITHIN, {"keep_within": "36h"}, {"2024-01-10 12:00"}),
    (
        "within 1m across the year boundary",
        WITHIN_MONTH,
        {"keep_within": "1m"},
        {"2023-12-15 00:01", "2024-01-15 00:00"},
    ),
    (
        "within 1m from 31 March clamps to 29 Feb",
        WITHIN_LEAP,
        {"keep_within": "1m"},
        {"2024-02-29 11:00", "2024-03-31 10:00"},
    ),
    (
        "within 1m from 31 March clamps to 28 Feb",
        WITHIN_NONLEAP,
        {"keep_within": "1m"},
        {"2023-02-28 11:00", "2023-03-31 10:00"},
    ),
    (
        "within 1y2m3d4h",
        WITHIN_ALL_UNITS,
        {"keep_within": "1y2m3d4h"},
        {"2023-01-02 08:01", "2024-03-05 12:00"},
    ),
    (
        "within beyond the calendar keeps all",
        WITHIN,
        {"keep_within": "99999y"},
        {t for t, _ in WITHIN},
    ),
    (
        "last and daily are ORed",
        DAYS,
        {"keep_last": 2, "keep_daily": 2},
        {"2024-01-03 23:00", "2024-01-03 10:00", "2024-01-02 09:00"},
    ),
    (
        "daily, monthly and yearly together",
        YEARS,
        {"keep_daily": 1, "keep_monthly": 2, "keep_yearly": 3},
        {"2023-07-01 00:00", "2023-01-01 00:00", "2022-05-01 00:00", "2021-09-01 00:00"},
    ),
    ("zero count is off", DAYS, {"keep_last": 1, "keep_daily": 0}, {"2024-01-03 23:00"}),
]


@pytest.mark.parametrize(
    ("snapshots", "policy", "expected"),
    [case[1:] for case in KEEP_CASES],
    ids=[case[0] for case in KEEP_CASES],
)
def test_keep_rules(
    snapshots: list[tuple[str, Snapshot]], policy: dict[str, Any], expected: set[str]
) -> None:
    decisions = run(snapshots, **policy)
    assert kept(decisions) == expected
    assert sorted(d.id for d in decisions) == sorted(t for t, _ in snapshots)
    for d in decisions:
        assert bool(d.reasons) == d.keep


def test_reasons_are_named_per_rule_in_restic_order() -> None:
    snapshots = [
        ("new", snap("2024-01-03 23:00", tags=["prod"])),
        ("mid", snap("2024-01-03 10:00")),
        ("old", snap("2024-01-01 08:00", tags=["prod", "db"])),
    ]
    decisions = run(
        snapshots,
        keep_last=1,
        keep_daily=3,
        keep_within="14h",
        keep_tags=["prod", "prod,db"],
    )
    assert {d.id: d.reasons for d in decisions} == {
        "new": ["tag prod", "within 14h", "last snapshot", "daily snapshot"],
        "mid": ["within 14h"],
        "old": ["tag prod", "tags prod,db", "daily snapshot"],
    }


def test_oldest_snapshot_reason() -> None:
    decisions = {d.id: d for d in run(DAYS, keep_daily=5)}
    assert decisions["2024-01-01 08:00"].reasons == ["oldest daily snapshot"]
    assert decisions["2024-01-01 20:00"].reasons == ["daily snapshot"]
    assert not decisions["2024-01-03 10:00"].keep
    assert decisions["2024-01-03 10:00"].reasons == []


def test_decisions_are_newest_first_and_carry_time() -> None:
    decisions = run(list(reversed(DAYS)), keep_last=1)
    assert [d.id for d in decisions] == sorted((t for t, _ in DAYS), reverse=True)
    assert decisions[0].time == ts("2024-01-03 23:00")


def test_equal_times_order_by_id_whatever_the_input_order() -> None:
    same = [("b", snap("2024-01-01 00:00")), ("a", snap("2024-01-01 00:00"))]
    for order in (same, list(reversed(same))):
        decisions = run(order, keep_last=1)
        assert [(d.id, d.keep) for d in decisions] == [("a", True), ("b", False)]


def test_tags_need_every_tag_of_an_entry() -> None:
    snapshots = [
        ("both", snap("2024-01-01 00:00", tags=["prod", "db"])),
        ("prod", snap("2024-01-02 00:00", tags=["prod"])),
        ("db", snap("2024-01-03 00:00", tags=["db"])),
        ("none", snap("2024-01-04 00:00")),
    ]
    assert kept(run(snapshots, keep_tags=["prod,db"], keep_last=1)) == {"both", "none"}
    assert kept(run(snapshots, keep_tags=["prod", "db"])) == {"both", "prod", "db"}


def test_within_counts_from_the_newest_snapshot_not_from_now() -> None:
    decisions = run(WITHIN, keep_within="2d", now=ts("2030-01-01 00:00"))
    assert "2024-01-10 12:00" in kept(decisions)
    assert len(kept(decisions)) == 3


def test_future_snapshots_are_kept_and_not_taken_as_newest() -> None:
    snapshots = named("2024-01-01 00:00", "2024-01-05 00:00", "2024-01-20 00:00")
    decisions = run(snapshots, keep_within="2d", now=ts("2024-01-10 00:00"))
    assert kept(decisions) == {"2024-01-05 00:00", "2024-01-20 00:00"}
    everything_future = run(snapshots, keep_within="1d", now=ts("2023-01-01 00:00"))
    assert kept(everything_future) == {t for t, _ in snapshots}


def test_within_days_are_calendar_days_across_dst() -> None:
    try:
        berlin = ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no time zone database on this machine")
    # 31 March 2024 12:00 CEST - 1d = 30 March 12:00 CET: 23 hours, not 24.
    newest = datetime(2024, 3, 31, 12, 0, tzinfo=berlin).timestamp()
    snapshots = [
        ("newest", snap(newest)),
        ("22h59", snap(newest - 22 * 3600 - 59 * 60)),
        ("23h01", snap(newest - 23 * 3600 - 60)),
    ]
    assert kept(run(snapshots, tz=berlin, keep_within="1d")) == {"newest", "22h59"}
    assert kept(run(snapshots, tz=berlin, keep_within="24h")) == {"newest", "22h59", "23h01"}


def test_buckets_use_the_given_time_zone() -> None:
    snapshots = [
        ("a", snap("2024-01-02 01:00")),  # 1 Jan 20:00 at UTC-5
        ("b", snap("2024-01-01 20:00")),  # 1 Jan 15:00 at UTC-5
        ("c", snap("2023-12-31 12:00")),  # 31 Dec 07:00 at UTC-5
    ]
    assert kept(run(snapshots, tz=UTC, keep_daily=2)) == {"a", "b"}
    new_york_winter = timezone(timedelta(hours=-5))
    assert kept(run(snapshots, tz=new_york_winter, keep_daily=2)) == {"a", "c"}


def test_groups_are_decided_separately() -> None:
    snapshots = [
        ("h1-old", snap("2024-01-01 00:00", host="h1")),
        ("h1-new", snap("2024-01-02 00:00", host="h1")),
        ("h2-old", snap("2024-01-01 00:00", host="h2")),
        ("h2-new", snap("2024-01-02 00:00", host="h2")),
        ("h1-other-paths", snap("2023-01-01 00:00", host="h1", paths=["/srv", "/etc"])),
    ]
    decisions = run(snapshots, keep_last=1)
    assert kept(decisions) == {"h1-new", "h2-new", "h1-other-paths"}
    assert [(d.id, d.group) for d in decisions] == [
        ("h1-other-paths", {"host": "h1", "job": "nightly", "paths": ["/etc", "/srv"]}),
        ("h1-new", {"host": "h1", "job": "nightly", "paths": ["/srv"]}),
        ("h1-old", {"host": "h1", "job": "nightly", "paths": ["/srv"]}),
        ("h2-new", {"host": "h2", "job": "nightly", "paths": ["/srv"]}),
        ("h2-old", {"host": "h2", "job": "nightly", "paths": ["/srv"]}),
    ]
    one_group = run(snapshots, group_by=(), keep_last=1)
    assert kept(one_group) == {"h1-new"}
    assert all(d.group == {} for d in one_group)


def test_paths_group_in_any_order_and_tags_can_group() -> None:
    snapshots = [
        ("x", snap("2024-01-01 00:00", paths=["/b", "/a"], tags=["t2", "t1"])),
        ("y", snap("2024-01-02 00:00", paths=["/a", "/b"], tags=["t1"])),
    ]
    assert kept(run(snapshots, keep_last=1)) == {"y"}
    assert kept(run(snapshots, group_by=("paths", "tags"), keep_last=1)) == {"x", "y"}


def test_unknown_group_field_is_refused() -> None:
    with pytest.raises(UserError, match="cannot group snapshots by 'colour'"):
        run(DAYS, group_by=("host", "colour"), keep_last=1)


@pytest.mark.parametrize(
    "policy",
    [{}, {"keep_last": 0, "keep_daily": None}, {"keep_within": "0d"}, {"keep_tags": []}],
    ids=["nothing", "zeros", "zero-within", "no-tags"],
)
def test_empty_policy_is_refused(policy: dict[str, Any]) -> None:
    assert RetentionPolicy(**policy).is_empty()
    with pytest.raises(UserError) as info:
        run(DAYS, **policy)
    assert info.value.message == EMPTY_POLICY_MESSAGE
    assert "refusing to forget every snapshot" in str(info.value)
    assert info.value.code == "EMPTY_POLICY"
    with pytest.raises(UserError):
        apply_policy([], RetentionPolicy(**policy))


def test_policy_that_keeps_nothing_of_a_group_is_refused() -> None:
    snapshots = [
        ("a", snap("2024-01-01 00:00", tags=["prod"])),
        ("b", snap("2024-01-01 00:00", host="h2")),
    ]
    with pytest.raises(
        UserError, match="refusing to forget every snapshot of group host h2"
    ) as info:
        run(snapshots, keep_tags=["prod"])
    assert info.value.code == "POLICY_KEEPS_NOTHING"


def test_no_snapshots_no_decisions() -> None:
    assert run([], keep_last=1) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2d", KeepWithin(days=2)),
        ("90h", KeepWithin(hours=90)),
        ("6m", KeepWithin(months=6)),
        ("1y2m3d4h", KeepWithin(years=1, months=2, days=3, hours=4)),
        ("4h1y", KeepWithin(years=1, hours=4)),
        (" 7d ", KeepWithin(days=7)),
        ("0d", KeepWithin()),
    ],
)
def test_parse_keep_within(text: str, expected: KeepWithin) -> None:
    assert parse_keep_within(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("2", "no unit after 2"),
        ("2w", "unknown unit 'w'"),
        ("2D", "unknown unit 'D'"),
        ("1d1d", "gives 'd' twice"),
        ("-1d", "no number at 0"),
        ("d", "no number at 0"),
        ("1.5d", "unknown unit '.'"),
    ],
)
def test_parse_keep_within_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_keep_within(text)
    assert "y=years, m=months, d=days, h=hours" in str(info.value)


def test_keep_within_prints_as_restic_does() -> None:
    assert str(parse_keep_within("4h1y")) == "1y4h"
    assert str(KeepWithin()) == "0h"


def test_policy_model() -> None:
    policy = RetentionPolicy(keep_daily="unlimited", keep_within="1y2m", keep_tags=["a,b"])
    assert policy.keep_daily == UNLIMITED
    assert policy.keep_within == KeepWithin(years=1, months=2)
    dumped = policy.model_dump()
    assert dumped["keep_within"] == "1y2m"
    assert RetentionPolicy.model_validate(dumped) == policy
    assert RetentionPolicy.model_validate_json(policy.model_dump_json()) == policy
    assert policy.describe() == (
        "keep all daily snapshots and all snapshots with tags a,b and "
        "all snapshots within 1y2m of the newest"
    )
    assert RetentionPolicy(keep_last=3, keep_weekly=4).describe() == (
        "keep 3 latest, 4 weekly snapshots"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"keep_last": -2},
        {"keep_daily": True},
        {"keep_daily": "lots"},
        {"keep_within": "2w"},
        {"keep_within": 5},
        {"keep_tags": [""]},
        {"keep_tags": ["a,"]},
        {"keep_minutely": 3},
    ],
    ids=lambda bad: next(iter(bad)) + "=" + repr(next(iter(bad.values()))),
)
def test_policy_model_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RetentionPolicy(**bad)


# --- properties -------------------------------------------------------------------------------

START = ts("2022-01-01 00:00")
END = ts("2024-12-31 00:00")
NOW = ts("2024-06-01 00:00")  # some generated snapshots lie in the future

counts = st.one_of(st.none(), st.just(0), st.just(UNLIMITED), st.integers(1, 6))
within = st.one_of(
    st.none(),
    st.builds(
        KeepWithin,
        years=st.integers(0, 1),
        months=st.integers(0, 13),
        days=st.integers(0, 40),
        hours=st.integers(0, 50),
    ),
)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=within,
    keep_tags=st.lists(st.sampled_from(["a", "b", "a,b"]), max_size=2),
).filter(lambda p: not p.is_empty())
snapshot_lists = st.lists(
    st.tuples(
        # Whole hours, so that many snapshots share hour, day and week buckets.
        st.integers(int(START // 3600), int(END // 3600)).map(lambda h: h * 3600.0),
        st.lists(st.sampled_from(["a", "b"]), unique=True),
        st.sampled_from(["h1", "h2"]),
    ),
    max_size=30,
).map(
    lambda rows: [
        (f"s{i:03d}", snap(t, host=host, tags=tags)) for i, (t, tags, host) in enumerate(rows)
    ]
)


def single_rules(policy: RetentionPolicy) -> list[RetentionPolicy]:
    rules: list[RetentionPolicy] = []
    for name, count in policy.counts():
        rules.append(RetentionPolicy(**{f"keep_{name}": count}))
    if policy.keep_within is not None and not policy.keep_within.is_zero():
        rules.append(RetentionPolicy(keep_within=policy.keep_within))
    rules.extend(RetentionPolicy(keep_tags=[entry]) for entry in policy.keep_tags)
    return rules


def kept_or_none(snapshots: list[tuple[str, Snapshot]], policy: RetentionPolicy) -> set[str] | None:
    """The kept ids, or None when the policy is refused for keeping nothing."""
    try:
        return kept(apply_policy(snapshots, policy, now=NOW, group_by=(), tz=UTC))
    except UserError as exc:
        assert exc.code == "POLICY_KEEPS_NOTHING"
        return None


@settings(max_examples=300, deadline=None)
@given(snapshots=snapshot_lists, policy=policies)
def test_kept_set_is_the_union_of_each_rule_alone(
    snapshots: list[tuple[str, Snapshot]], policy: RetentionPolicy
) -> None:
    combined = kept_or_none(snapshots, policy)
    alone = [kept_or_none(snapshots, rule) for rule in single_rules(policy)]
    if combined is None:
        assert all(rule_kept is None for rule_kept in alone)
        return
    union: set[str] = set()
    for rule_kept in alone:
        rule_kept = rule_kept or set()
        assert rule_kept <= combined
        union |= rule_kept
    assert union == combined


@settings(max_examples=200, deadline=None)
@given(snapshots=snapshot_lists, n=st.integers(1, 12))
def test_keep_last_alone_keeps_the_n_newest_of_each_group(
    snapshots: list[tuple[str, Snapshot]], n: int
) -> None:
    decisions = apply_policy(snapshots, RetentionPolicy(keep_last=n), now=NOW, tz=UTC)
    by_host: dict[str, list[tuple[str, Snapshot]]] = {}
    for sid, s in snapshots:
        by_host.setdefault(s.host, []).append((sid, s))
    expected: set[str] = set()
    for members in by_host.values():
        newest = sorted(members, key=lambda m: (-m[1].time, m[0]))[:n]
        assert len(newest) == min(n, len(members))
        expected |= {sid for sid, _ in newest}
    assert kept(decisions) == expected
    assert all(d.reasons == ["last snapshot"] for d in decisions if d.keep)
