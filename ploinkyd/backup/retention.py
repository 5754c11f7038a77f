"""Which snapshots ``forget --keep-*`` keeps: restic's policy, as a pure function.

Snapshots are first split into groups by ``group_by`` (default: host, job and paths; ``paths``
and ``tags`` compare as sorted lists), and the policy is applied to each group on its own, so
one host's backups never push another's out. Within a group, snapshots are ordered newest
first (equal times: by id, so the answer never depends on the input order), and each is
checked against every rule; a snapshot is kept when at least one rule keeps it, and every rule
that does is named in its ``reasons``, in this order:

``keep_tags``
    Every snapshot carrying a listed tag is kept (reason ``"tag prod"``). An entry may join
    several tags with commas (``"prod,db"``): then the snapshot must carry all of them
    (reason ``"tags prod,db"``), as restic's ``--keep-tag prod,db``.
``keep_within`` (``"2d"``, ``"1y2m3d4h"``)
    Every snapshot newer than the group's newest snapshot minus the duration is kept (reason
    ``"within 2d"``). The reference is the newest snapshot, not the clock, so a host that
    stopped backing up keeps its last history instead of losing all of it (restic's rule).
    Snapshots dated after ``now`` (a skewed clock) are not taken as the newest, and are
    always kept by this rule. Units: ``y`` years, ``m`` months (not minutes), ``d`` days,
    ``h`` hours, each at most once, in any order. Years, months and days are calendar steps in
    local time; a month step that lands on a missing day clamps to the month's last day
    (31 March minus 1m = 28/29 February; restic, following Go, would roll over to 2/3 March);
    hours are exact 3600-second steps.
``keep_last`` N
    The N newest snapshots (reason ``"last snapshot"``).
``keep_hourly``, ``keep_daily``, ``keep_weekly``, ``keep_monthly``, ``keep_yearly`` N
    Walking newest → oldest, a snapshot is kept when its calendar bucket differs from the
    bucket of the previous snapshot kept by this rule, until N buckets were used; so it keeps
    the newest snapshot of each of the N most recent buckets that hold any snapshot (reason
    ``"daily snapshot"``). Buckets are local-time hours, days, ISO weeks (ISO year and week
    number: 30 December 2024 falls in week 1 of 2025), months and years.
    When the walk reaches the group's oldest snapshot with buckets still unused, that snapshot
    is kept as well even if its bucket was already used (reason ``"oldest daily snapshot"``):
    restic keeps the longest history the counts allow.

Counts are ``None`` or ``0`` (rule off), a positive number, or ``-1`` (also spelled
``"unlimited"``): no limit, every bucket.

Two refusals guard against a policy that would delete everything: an empty policy is refused
before any decision, and so is a policy that keeps no snapshot of some group (only possible
with ``keep_tags`` alone, when no snapshot of the group carries the tags).

"Local time" is the ``tz`` argument; ``None`` means the system's local time zone, as restic.
"""

from __future__ import annotations

import calendar
import math
import re
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
)

from ploinkyd.backup.format import Snapshot
from ploinkyd.errors import UserError

UNLIMITED = -1
DEFAULT_GROUP_BY: tuple[str, ...] = ("host", "job", "paths")
GROUP_FIELDS: tuple[str, ...] = ("host", "user", "job", "paths", "tags")
EMPTY_POLICY_MESSAGE = (
    "no policy given: refusing to forget every snapshot; pass at least one --keep-* option"
)

_WITHIN_PART = re.compile(r"(\d+)([^0-9]?)", re.ASCII)
_WITHIN_UNITS = {"y": "years", "m": "months", "d": "days", "h": "hours"}


class KeepWithin(BaseModel):
    """A ``keep_within`` duration; ``str()`` gives it back as restic writes it (``"1y2m"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    years: int = Field(0, ge=0)
    months: int = Field(0, ge=0)
    days: int = Field(0, ge=0)
    hours: int = Field(0, ge=0)

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    def start(self, newest: float, tz: tzinfo | None) -> float:
        """The cut-off for a group whose newest snapshot is at ``newest``: snapshots strictly
        after it are within. ``-inf`` when the subtraction leaves the calendar."""
        dt = datetime.fromtimestamp(newest, tz)
        month_index = dt.year * 12 + (dt.month - 1) - (self.years * 12 + self.months)
        year, month0 = divmod(month_index, 12)
        if year < 1:
            return -math.inf
        day = min(dt.day, calendar.monthrange(year, month0 + 1)[1])
        try:
            # Aware datetime arithmetic keeps the wall clock, so "1d" across a DST change is
            # a calendar day, as it is in restic.
            shifted = dt.replace(year=year, month=month0 + 1, day=day) - timedelta(days=self.days)
        except OverflowError:
            return -math.inf
        return shifted.timestamp() - self.hours * 3600.0


def parse_keep_within(text: str) -> KeepWithin:
    """``"2d"``, ``"90h"``, ``"1y2m3d4h"`` → :class:`KeepWithin`.

    Units are restic's: ``y`` years, ``m`` months, ``d`` days, ``h`` hours (there is no minute
    or week unit: write ``7d``). Raises ``ValueError`` with a message naming the problem.
    """
    hint = "a duration like '7d', '12h', '6m' or '1y2m3d4h' (y=years, m=months, d=days, h=hours)"
    source = text.strip()
    if not source:
        raise ValueError(f"keep_within must be {hint}, got an empty string")
    values: dict[str, int] = {}
    pos = 0
    while pos < len(source):
        match = _WITHIN_PART.match(source, pos)
        if match is None:
            raise ValueError(f"keep_within must be {hint}; {text!r} has no number at {pos}")
        number, unit = match[1], match[2]
        if not unit:
            raise ValueError(f"keep_within must be {hint}; {text!r}: no unit after {number}")
        if unit not in _WITHIN_UNITS:
            raise ValueError(f"keep_within must be {hint}; {text!r}: unknown unit {unit!r}")
        if unit in values:
            raise ValueError(f"keep_within must be {hint}; {text!r} gives {unit!r} twice")
        values[unit] = int(number)
        pos = match.end()
    return KeepWithin(**{_WITHIN_UNITS[unit]: n for unit, n in values.items()})


def _count(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number of snapshots, -1 or 'unlimited', not a boolean")
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return UNLIMITED
    return value


KeepCount = Annotated[int | None, Field(ge=UNLIMITED), BeforeValidator(_count)]


class RetentionPolicy(BaseModel):
    """The ``--keep-*`` options of ``forget`` and the ``retention`` of a backup job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_last: KeepCount = None
    keep_hourly: KeepCount = None
    keep_daily: KeepCount = None
    keep_weekly: KeepCount = None
    keep_monthly: KeepCount = None
    keep_yearly: KeepCount = None
    keep_within: KeepWithin | None = None
    keep_tags: list[str] = Field(default_factory=list)

    @field_validator("keep_within", mode="before")
    @classmethod
    def _parse_within(cls, value: Any) -> Any:
        return parse_keep_within(value) if isinstance(value, str) else value

    @field_validator("keep_tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not entry or any(not part.strip() for part in entry.split(",")):
                raise ValueError(
                    f"keep_tags entry {entry!r} names an empty tag; give tags like 'prod' "
                    "or 'prod,db' (a snapshot must carry all tags of one entry)"
                )
        return value

    @field_serializer("keep_within")
    def _within_text(self, value: KeepWithin | None) -> str | None:
        return None if value is None else str(value)

    def counts(self) -> list[tuple[str, int]]:
        """The count rules that are on, as (name, count), in restic's order."""
        rules = [
            ("last", self.keep_last),
            ("hourly", self.keep_hourly),
            ("daily", self.keep_daily),
            ("weekly", self.keep_weekly),
            ("monthly", self.keep_monthly),
            ("yearly", self.keep_yearly),
        ]
        return [(name, n) for name, n in rules if n]

    def tag_sets(self) -> list[tuple[str, ...]]:
        return [tuple(part.strip() for part in entry.split(",")) for entry in self.keep_tags]

    def is_empty(self) -> bool:
        """True when no rule is on: such a policy would forget every snapshot."""
        within_off = self.keep_within is None or self.keep_within.is_zero()
        return not self.counts() and within_off and not self.keep_tags

    def describe(self) -> str:
        """One line for people, e.g. ``keep 7 daily, all monthly snapshots and ... within 2d``."""
        parts: list[str] = []
        counts = [
            f"{'all' if n == UNLIMITED else n} {'latest' if name == 'last' else name}"
            for name, n in self.counts()
        ]
        if counts:
            parts.append(", ".join(counts) + " snapshots")
        if self.keep_tags:
            parts.append("all snapshots with tags " + " or ".join(self.keep_tags))
        if self.keep_within is not None and not self.keep_within.is_zero():
            parts.append(f"all snapshots within {self.keep_within} of the newest")
        return "keep " + " and ".join(parts) if parts else "keep everything (empty policy)"


class Decision(BaseModel):
    """What the policy says about one snapshot, and why."""

    model_config = ConfigDict(frozen=True)

    id: str
    time: float
    keep: bool
    reasons: list[str]
    group: dict[str, str | list[str]]


GroupKey = tuple[str | tuple[str, ...], ...]


def _bucket_hour(dt: datetime, _nr: int) -> object:
    return (dt.year, dt.month, dt.day, dt.hour)


def _bucket_day(dt: datetime, _nr: int) -> object:
    return (dt.year, dt.month, dt.day)


def _bucket_week(dt: datetime, _nr: int) -> object:
    iso = dt.isocalendar()
    return (iso.year, iso.week)


def _bucket_month(dt: datetime, _nr: int) -> object:
    return (dt.year, dt.month)


def _bucket_year(dt: datetime, _nr: int) -> object:
    return dt.year


def _bucket_each(_dt: datetime, nr: int) -> object:
    return nr


_BUCKETS: dict[str, tuple[Callable[[datetime, int], object], str]] = {
    "last": (_bucket_each, "last snapshot"),
    "hourly": (_bucket_hour, "hourly snapshot"),
    "daily": (_bucket_day, "daily snapshot"),
    "weekly": (_bucket_week, "weekly snapshot"),
    "monthly": (_bucket_month, "monthly snapshot"),
    "yearly": (_bucket_year, "yearly snapshot"),
}


@dataclass
class _Bucket:
    remaining: int
    key: Callable[[datetime, int], object]
    reason: str
    last: object = None


def _group_key(snapshot: Snapshot, group_by: Sequence[str]) -> GroupKey:
    key: list[str | tuple[str, ...]] = []
    for name in group_by:
        if name == "paths":
            key.append(tuple(sorted(snapshot.paths)))
        elif name == "tags":
            key.append(tuple(sorted(set(snapshot.tags))))
        else:
            key.append(str(getattr(snapshot, name)))
    return tuple(key)


def _group_label(group: dict[str, str | list[str]]) -> str:
    if not group:
        return "(all snapshots)"
    return ", ".join(
        f"{name} {','.join(value) if isinstance(value, list) else value}"
        for name, value in group.items()
    )


def apply_policy(
    snapshots: Sequence[tuple[str, Snapshot]],
    policy: RetentionPolicy,
    *,
    now: float | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    tz: tzinfo | None = None,
) -> list[Decision]:
    """Decide, for each ``(id, snapshot)``, whether ``policy`` keeps it (module docstring).

    Returns one :class:`Decision` per snapshot: groups in order of their key, each group newest
    first. ``now`` (default: the clock) only decides which snapshots are "in the future" for
    ``keep_within``; ``tz`` is the zone of the calendar buckets (``None``: local time).

    Raises :class:`UserError` for an empty policy, an unknown ``group_by`` field, or a policy
    that would keep no snapshot of a group.
    """
    if policy.is_empty():
        raise UserError(EMPTY_POLICY_MESSAGE, code="EMPTY_POLICY")
    unknown = [name for name in group_by if name not in GROUP_FIELDS]
    if unknown:
        raise UserError(
            f"cannot group snapshots by {', '.join(map(repr, unknown))}; "
            f"group by any of {', '.join(GROUP_FIELDS)} (or nothing)",
            code="BAD_GROUP_BY",
        )
    now = _time.time() if now is None else now
    groups: dict[GroupKey, list[tuple[str, Snapshot]]] = {}
    for snapshot_id, snapshot in snapshots:
        groups.setdefault(_group_key(snapshot, group_by), []).append((snapshot_id, snapshot))
    decisions: list[Decision] = []
    for key in sorted(groups):
        group = {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in zip(group_by, key, strict=True)
        }
        decisions.extend(_apply_group(groups[key], policy, group, now, tz))
    return decisions


def _apply_group(
    members: list[tuple[str, Snapshot]],
    policy: RetentionPolicy,
    group: dict[str, str | list[str]],
    now: float,
    tz: tzinfo | None,
) -> list[Decision]:
    ordered = sorted(members, key=lambda m: (-m[1].time, m[0]))
    within = policy.keep_within
    cutoff: float | None = None
    if within is not None and not within.is_zero():
        past = [snapshot.time for _, snapshot in ordered if snapshot.time <= now]
        cutoff = within.start(past[0], tz) if past else -math.inf
    buckets = [_Bucket(count, *_BUCKETS[name]) for name, count in policy.counts()]
    tag_sets = policy.tag_sets()
    oldest = len(ordered) - 1
    decisions: list[Decision] = []
    for nr, (snapshot_id, snapshot) in enumerate(ordered):
        reasons: list[str] = []
        carried = set(snapshot.tags)
        for tags in tag_sets:
            if carried.issuperset(tags):
                reasons.append(f"{'tags' if len(tags) > 1 else 'tag'} {','.join(tags)}")
        if cutoff is not None and snapshot.time > cutoff:
            reasons.append(f"within {within}")
        dt = datetime.fromtimestamp(snapshot.time, tz)
        for bucket in buckets:
            if bucket.remaining == 0:
                continue
            value = bucket.key(dt, nr)
            if value != bucket.last or nr == oldest:
                reasons.append(("oldest " if value == bucket.last else "") + bucket.reason)
                bucket.last = value
                if bucket.remaining > 0:
                    bucket.remaining -= 1
        decisions.append(
            Decision(
                id=snapshot_id,
                time=snapshot.time,
                keep=bool(reasons),
                reasons=reasons,
                group=group,
            )
        )
    if decisions and not any(d.keep for d in decisions):
        raise UserError(
            f"refusing to forget every snapshot of group {_group_label(group)}: none of its "
            f"{len(decisions)} snapshots matches the policy ({policy.describe()})",
            code="POLICY_KEEPS_NOTHING",
            details={"group": group},
        )
    return decisions
