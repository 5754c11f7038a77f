"""Cron schedules for backup jobs: parsing, next runs, catch-up after downtime, slot ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ploinkyd.backup.schedule import CronSchedule, slot_id
from ploinkyd.errors import ConfigError
from ploinkyd.queue.task import ID_RE

HOUR = 3600.0
DAY = 24 * HOUR


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


@pytest.mark.parametrize(
    ("expr", "fields"),
    [
        ("*/15 * * * *", "*/15 * * * *"),
        ("0 3 * * mon-fri", "0 3 * * mon-fri"),
        ("0 3 * * MON-FRI", "0 3 * * mon-fri"),
        ("  0   3 * * *  ", "0 3 * * *"),
        ("5/20 1-5/2 1,15 jan,jul 0", "5/20 1-5/2 1,15 jan,jul 0"),
        ("0 0 * * 7", "0 0 * * 7"),
        ("0 0 29 2 *", "0 0 29 2 *"),
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@Daily", "0 0 * * *"),
    ],
)
def test_parse_accepts(expr: str, fields: str) -> None:
    schedule = CronSchedule.parse(expr)
    assert schedule.fields == fields
    assert schedule.expr == expr.strip()
    assert str(schedule) == expr.strip()


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "schedule '61 * * * *': minute 61 is out of range 0-59"),
        ("0 24 * * *", "schedule '0 24 * * *': hour 24 is out of range 0-23"),
        ("0 0 0 * *", "schedule '0 0 0 * *': day of month 0 is out of range 1-31"),
        ("0 0 * 13 *", "schedule '0 0 * 13 *': month 13 is out of range 1-12"),
        ("0 0 * * 8", "schedule '0 0 * * 8': day of week 8 is out of range 0-7"),
        ("0-60 * * * *", "schedule '0-60 * * * *': minute 60 is out of range 0-59"),
        (
            "* * *",
            "schedule '* * *': expected 5 fields (minute hour day-of-month month day-of-week), "
            "got 3",
        ),
        (
            "0 * * * * *",
            "schedule '0 * * * * *': expected 5 fields (minute hour day-of-month month "
            "day-of-week), got 6 (seconds and years fields are not supported)",
        ),
        ("*/0 * * * *", "schedule '*/0 * * * *': minute step '*/0' must be at least 1"),
        (
            "5-1 * * * *",
            "schedule '5-1 * * * *': minute range 5-1 runs backwards; put the lower end first",
        ),
        ("1,,2 * * * *", "schedule '1,,2 * * * *': minute '1,,2' has an empty list item"),
        (
            "0 0 * Foo *",
            "schedule '0 0 * Foo *': month 'Foo' is not a number 1-12 or a name jan-dec",
        ),
        (
            "0 0 * * 5#3",
            "schedule '0 0 * * 5#3': day of week '5#3' is not valid: use a number 0-7 or a name sun-sat, a range a-b, a list a,b, a step */n or a-b/n, or *",
        ),
        ("0 0 L * *", "schedule '0 0 L * *': day of month 'L' is not a number 1-31"),
        (
            "0 0 * * jan",
            "schedule '0 0 * * jan': day of week 'jan' is not a number 0-7 or a name sun-sat",
        ),
        (
            "@reboot",
            "schedule '@reboot': unknown shortcut '@reboot'; use one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually or 5 fields",
        ),
        ("", "schedule '': it is empty; write 5 fields or a shortcut such as @daily"),
        (
            "0 0 30 2 *",
            "schedule '0 0 30 2 *': it never fires: no date matches both its day-of-month and "
            "month fields",
        ),
        ("0 0 31 4,6,9,11 *", "schedule '0 0 31 4,6,9,11 *': it never fires"),
    ],
)
def test_parse_rejects(expr: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        CronSchedule.parse(expr)
    assert info.value.message.startswith(message)
    assert info.value.code == "INVALID_CONFIG"
    assert info.value.exit_code == 78
    assert info.value.details == {"schedule": expr}


def test_parse_rejects_a_non_string() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        CronSchedule.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        ("0 3 * * *", "2024-01-01 02:59:59", "2024-01-01 03:00"),
        ("0 3 * * *", "2024-01-01 03:00:00", "2024-01-02 03:00"),  # strictly after
        ("0 3 * * *", "2024-01-01 03:00:00.5", "2024-01-02 03:00"),
        ("*/15 * * * *", "2024-01-01 10:14:30", "2024-01-01 10:15"),
        ("0 0 * * mon", "2024-01-01 00:00:00", "2024-01-08 00:00"),  # 1 Jan 2024 is a Monday
        ("0 0 1 * *", "2024-01-31 12:00:00", "2024-02-01 00:00"),
        ("@yearly", "2024-06-01 00:00:00", "2025-01-01 00:00"),
        ("0 0 29 2 *", "2024-03-01 00:00:00", "2028-02-29 00:00"),
        ("0 12 13 * fri", "2024-01-01 00:00:00", "2024-01-05 12:00"),  # either day field
    ],
)
def test_next_after_in_utc(expr: str, after: str, expected: str) -> None:
    assert utc(CronSchedule.parse(expr).next_after(ts(after), UTC)) == expected


def test_next_after_uses_the_given_zone() -> None:
    plus_two = timezone(timedelta(hours=2))
    nxt = CronSchedule.parse("0 3 * * *").next_after(ts("2024-01-01 00:00"), plus_two)
    assert utc(nxt) == "2024-01-01 01:00"  # 03:00 at UTC+2


def berlin() -> ZoneInfo:
    try:
        return ZoneInfo("Europe/Berlin")
    except ZoneInfoNotFoundError:
        pytest.skip("no time zone database on this machine")


def test_next_after_across_dst_in_a_zone() -> None:
    zone = berlin()
    schedule = CronSchedule.parse("30 2 * * *")
    # 31 March 2024: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that night.
    spring = schedule.next_after(datetime(2024, 3, 30, 12, tzinfo=zone).timestamp(), zone)
    assert datetime.fromtimestamp(spring, zone).strftime("%d %H:%M %Z") == "31 03:00 CEST"
    # 27 October 2024: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice.
    first = schedule.next_after(datetime(2024, 10, 26, 12, tzinfo=zone).timestamp(), zone)
    second = schedule.next_after(first, zone)
    assert second - first == HOUR
    third = schedule.next_after(second, zone)
    assert datetime.fromtimestamp(third, zone).strftime("%d %H:%M %Z") == "28 02:30 CET"


HOURLY = CronSchedule.parse("0 * * * *")


@pytest.mark.parametrize(
    ("last", "now", "limit", "expected"),
    [
        ("2024-01-01 10:00", "2024-01-01 10:30", 1, []),
        ("2024-01-01 10:00", "2024-01-01 11:00", 1, ["2024-01-01 11:00"]),  # now is included
        ("2024-01-01 10:00", "2024-01-01 11:59", 1, ["2024-01-01 11:00"]),
        ("2024-01-01 10:00", "2024-01-01 10:00", 1, []),
        ("2024-01-01 11:00", "2024-01-01 10:00", 1, []),  # the clock went back
        ("2024-01-01 10:00", "2024-01-08 10:30", 1, ["2024-01-08 10:00"]),  # a week down
        (
            "2024-01-01 10:00",
            "2024-01-08 10:30",
            3,
            ["2024-01-08 08:00", "2024-01-08 09:00", "2024-01-08 10:00"],
        ),
        ("2024-01-01 10:00", "2024-01-01 12:00", 5, ["2024-01-01 11:00", "2024-01-01 12:00"]),
        ("2024-01-01 09:59:59", "2024-01-01 10:00:01", 5, ["2024-01-01 10:00"]),
    ],
)
def test_due_times(last: str, now: str, limit: int, expected: list[str]) -> None:
    assert [utc(t) for t in HOURLY.due_times(ts(last), ts(now), UTC, limit=limit)] == expected


def test_due_times_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        HOURLY.due_times(0.0, DAY, UTC, limit=0)


def test_a_week_of_downtime_runs_a_daily_job_once() -> None:
    daily = CronSchedule.parse("@daily")
    last = ts("2024-01-01 00:00")  # the last run enqueued before the daemon stopped
    back = ts("2024-01-08 09:30")
    assert [utc(t) for t in daily.due_times(last, back, UTC)] == ["2024-01-08 00:00"]


def test_scheduler_loop_with_restart_enqueues_each_run_once() -> None:
    """Tick every 7 minutes for two days, restart (forgetting ``last``) on the way, and check
    that the ids enqueued are exactly one per scheduled run."""
    schedule = CronSchedule.parse("*/30 * * * *")
    start, end = ts("2024-01-01 00:00"), ts("2024-01-03 00:00")
    queue: set[str] = set()
    submitted: list[str] = []
    attempts = 0
    last = start
    now = start
    while now < end:
        now += 7 * 60
        if ts("2024-01-02 00:08") <= now < ts("2024-01-02 00:15"):
            # Restarted with a stale idea of the last run: the 00:00 run is due again.
            last = now - HOUR
        for due in schedule.due_times(last, now, UTC):
            attempts += 1
            task_id = slot_id("db", due)
            if task_id not in queue:  # the queue refuses a second task with the same id
                queue.add(task_id)
                submitted.append(task_id)
            last = due
    assert len(submitted) == len(queue) == 2 * 48
    assert attempts == len(submitted) + 1
    assert submitted == sorted(submitted)


def test_slot_id_is_stable_and_readable() -> None:
    due = ts("2024-01-08 03:00")
    assert slot_id("nightly", due) == slot_id("nightly", due)
    assert slot_id("nightly", due).startswith("backup-nightly-20240108T030000Z-")
    assert slot_id("nightly", due) != slot_id("nightly", due + 60)
    assert slot_id("nightly", due) != slot_id("weekly", due)
    assert slot_id("nightly", due) == slot_id("nightly", due + 0.2)  # to the second
    assert ID_RE.fullmatch(slot_id("nightly", due))


@pytest.mark.parametrize(
    "name",
    ["db/main", "db main", "db_main", "Ünïcödé", "a" * 300, ".hidden", "-dash", "\udcff", "x"],
)
def test_slot_id_is_a_valid_task_id_for_any_name(name: str) -> None:
    assert ID_RE.fullmatch(slot_id(name, ts("2024-01-01 00:00")))


def test_names_that_sanitize_alike_get_different_ids() -> None:
    due = ts("2024-01-01 00:00")
    ids = {slot_id(name, due) for name in ("db/main", "db main", "db_main", "db:main")}
    assert len(ids) == 4


def test_slot_id_needs_a_name() -> None:
    with pytest.raises(ValueError, match="job_name"):
        slot_id("", 0.0)


@settings(max_examples=200, deadline=None)
@given(
    name=st.text(min_size=1, max_size=200),
    due=st.floats(min_value=0, max_value=ts("2999-01-01 00:00")),
)
def test_slot_id_always_valid(name: str, due: float) -> None:
    task_id = slot_id(name, due)
    assert ID_RE.fullmatch(task_id)
    assert task_id == slot_id(name, due)
