"""When a backup job runs: cron schedules, missed runs, and one task id per run.

A schedule is a standard 5-field cron expression (``minute hour day-of-month month
day-of-week``; numbers, ``*``, ranges ``a-b``, lists ``a,b``, steps ``*/n`` ``a-b/n`` ``a/n``,
month names ``jan`` to ``dec``, weekday names ``sun`` to ``sat``, Sunday as 0 or 7; when both day
fields are restricted a day matching either one fires, as in every cron) or one of
``@hourly @daily @midnight @weekly @monthly @yearly @annually``. Extensions some crons accept
(seconds or years fields, ``L``, ``W``, ``#``, ``?``, ``H``, ``@reboot``) are refused, so a job's
schedule means the same thing here as in crontab(5).

Times are wall-clock times in the zone given to each call. With a ``tzinfo`` (a
``zoneinfo.ZoneInfo``), croniter fires a time skipped by a DST change in spring at the first
minute after the gap, and a time that occurs twice in autumn at both occurrences. ``None``
means the system's local time, as naive datetimes: a skipped time then fires an hour late
(02:30 becomes 03:30) and the repeated autumn hour has no runs at its second pass.

Missed runs (the daemon or the machine was down) are caught up like systemd's
``Persistent=true`` timers or anacron: :meth:`CronSchedule.due_times` returns the scheduled
times in ``(last, now]``, but only the most recent ``limit`` of them (default 1). A daemon that
was off for a week with a daily schedule runs that job once when it comes back, not seven
times. The caller keeps ``last`` (the due time of the last run it enqueued).

:func:`slot_id` names one scheduled run. Every daemon, and the same daemon after a restart,
derives the same id for the same job and due time, and the queue refuses a second task with an
id it already has, so a run is never enqueued twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from croniter import CroniterError, croniter

from ploinkyd.errors import ConfigError, InternalError

SHORTCUTS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]

    def allowed(self) -> str:
        text = f"a number {self.low}-{self.high}"
        if self.names:
            first, last = next(iter(self.names)), list(self.names)[-1]
            text += f" or a name {first}-{last}"
        return text


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    _Field("day of week", 0, 7, {name: i for i, name in enumerate(_WEEKDAYS)}),
)
_ITEM = re.compile(r"(?P<base>\*|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)?)(?:/(?P<step>[0-9]+))?", re.ASCII)
# Where parse() asks croniter for a run, to catch expressions that never fire (30 February).
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
# Slot ids must stay valid task ids (ploinkyd.queue.task.ID_PATTERN: at most 128 characters).
_SLOT_NAME_MAX = 64
_MAX_STEPS = 8
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]", re.ASCII)


class _Invalid(ValueError):
    pass


def _value(text: str, field: _Field) -> int:
    if text.isdigit():
        number = int(text)
    elif text.lower() in field.names:
        number = field.names[text.lower()]
    else:
        raise _Invalid(f"{field.name} {text!r} is not {field.allowed()}")
    if not field.low <= number <= field.high:
        raise _Invalid(f"{field.name} {number} is out of range {field.low}-{field.high}")
    return number


def _check_field(text: str, field: _Field) -> None:
    for item in text.split(","):
        if not item:
            raise _Invalid(f"{field.name} {text!r} has an empty list item")
        match = _ITEM.fullmatch(item)
        if match is None:
            raise _Invalid(
                f"{field.name} {item!r} is not valid: use {field.allowed()}, a range a-b, "
                "a list a,b, a step */n or a-b/n, or *"
            )
        base, step = match["base"], match["step"]
        if base != "*":
            start, _, end = base.partition("-")
            first = _value(start, field)
            if end and _value(end, field) < first:
                raise _Invalid(f"{field.name} range {base} runs backwards; put the lower end first")
        if step is not None and int(step) < 1:
            raise _Invalid(f"{field.name} step {item!r} must be at least 1")


def _normalize(expr: str) -> str:
    """The 5-field form of ``expr``, or ``_Invalid`` with the reason."""
    fields = expr.split()
    if not fields:
        raise _Invalid("it is empty; write 5 fields or a shortcut such as @daily")
    if fields[0].startswith("@"):
        shortcut = " ".join(fields)
        if shortcut.lower() not in SHORTCUTS:
            raise _Invalid(
                f"unknown shortcut {shortcut!r}; use one of {', '.join(SHORTCUTS)} or 5 fields"
            )
        return SHORTCUTS[shortcut.lower()]
    if len(fields) != len(_FIELDS):
        extra = " (seconds and years fields are not supported)" if len(fields) > 5 else ""
        raise _Invalid(
            f"expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)}{extra}"
        )
    for part, field in zip(fields, _FIELDS, strict=True):
        _check_field(part, field)
    return " ".join(fields).lower()


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule: ``expr`` as written (trimmed), ``fields`` its 5-field form."""

    expr: str
    fields: str

    @classmethod
    def parse(cls, expr: str) -> CronSchedule:
        """Parse and check ``expr``; raises :class:`ConfigError` quoting it and the reason."""
        if not isinstance(expr, str):
            raise ConfigError(
                f"schedule {expr!r}: must be a string such as '0 3 * * *' or '@daily'",
                details={"schedule": repr(expr)},
            )
        try:
            fields = _normalize(expr)
        except _Invalid as exc:
            raise ConfigError(f"schedule {expr!r}: {exc}", details={"schedule": expr}) from None
        try:
            croniter(fields, _PROBE).get_next(float)
        except CroniterError as exc:
            # Only date combinations that never occur get past _normalize (day 31 in a month
            # of 30 days); croniter reports them as "failed to find next date".
            reason = str(exc)
            if "find next date" in reason:
                reason = "it never fires: no date matches both its day-of-month and month fields"
            raise ConfigError(f"schedule {expr!r}: {reason}", details={"schedule": expr}) from None
        return cls(expr=expr.strip(), fields=fields)

    def __str__(self) -> str:
        return self.expr

    def _iter(self, ts: float, tz: tzinfo | None) -> croniter:
        return croniter(self.fields, datetime.fromtimestamp(ts, tz))

    def next_after(self, ts: float, tz: tzinfo | None) -> float:
        """The first scheduled time strictly after ``ts`` (unix seconds)."""
        it = self._iter(ts, tz)
        for _ in range(_MAX_STEPS):
            # A naive local time in a DST gap converts to a later instant, so a step can land
            # on or before ts; stepping on gets past it.
            nxt = it.get_next(datetime).timestamp()
            if nxt > ts:
                return float(nxt)
        raise InternalError(f"schedule {self.expr!r}: no run after {ts} in {_MAX_STEPS} steps")

    def latest_at_or_before(self, ts: float, tz: tzinfo | None) -> float:
        """The last scheduled time ``<= ts``."""
        prev = self._prev_before(ts, tz)
        nxt = self.next_after(prev, tz)
        return nxt if nxt <= ts else prev

    def _prev_before(self, ts: float, tz: tzinfo | None) -> float:
        it = self._iter(ts, tz)
        for _ in range(_MAX_STEPS):
            prev = it.get_prev(datetime).timestamp()
            if prev < ts:
                return float(prev)
        raise InternalError(f"schedule {self.expr!r}: no run before {ts} in {_MAX_STEPS} steps")

    def due_times(self, last: float, now: float, tz: tzinfo | None, limit: int = 1) -> list[float]:
        """Scheduled times in ``(last, now]``, oldest first, at most the ``limit`` most recent.

        ``limit=1`` is the catch-up rule of the module docstring: however many runs were
        missed, only the most recent one is due.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if now <= last:
            return []
        due: list[float] = []
        t = self.latest_at_or_before(now, tz)
        while t > last and len(due) < limit:
            due.append(t)
            t = self._prev_before(t, tz)
        due.reverse()
        return due


def slot_id(job_name: str, due: float) -> str:
    """The task id of ``job_name``'s run scheduled at ``due``: ``backup-<job>-<UTC time>-<hash>``.

    Deterministic, a valid task id (``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``) for any job name:
    characters a task id cannot hold become ``_`` and long names are cut, and the hash of the
    full name keeps two names that would read the same apart. ``due`` is taken to the second,
    in UTC, so the id does not depend on the daemon's time zone.
    """
    if not job_name:
        raise ValueError("job_name must not be empty")
    seconds = round(due)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%dT%H%M%SZ")
    safe = _UNSAFE.sub("_", job_name)[:_SLOT_NAME_MAX]
    digest = hashlib.sha256(job_name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"backup-{safe}-{stamp}-{digest}"
