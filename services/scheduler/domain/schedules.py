"""Schedules as operators write them, and the occurrence a run belongs to.

"every 5m" fires at wall-clock multiples of the period (…:00, :05, …) on every replica, and
"daily 03:30" once a day in the scheduler's time zone, so that several scheduler replicas agree
on which occurrence a firing is: a run claims its occurrence, and a second replica firing for
the same one skips it (the run lock alone would only stop them running at the same moment).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

_EVERY = re.compile(r"^every\s+(\d+)\s*(s|m|h|d)$")
_DAILY = re.compile(r"^daily\s+([01]\d|2[0-3]):([0-5]\d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
MIN_PERIOD_S = 10


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    kind: str  # "every", "daily" or "off"
    period_s: int = 0
    hour: int = 0
    minute: int = 0

    @classmethod
    def parse(cls, text: str) -> "Schedule":
        t = " ".join(text.strip().lower().split())
        if t == "off":
            return cls("off")
        if m := _EVERY.match(t):
            period = int(m.group(1)) * _UNIT_S[m.group(2)]
            if period < MIN_PERIOD_S:
                raise ScheduleError(f"{text!r}: the shortest period is {MIN_PERIOD_S} s")
            return cls("every", period_s=period)
        if m := _DAILY.match(t):
            return cls("daily", hour=int(m.group(1)), minute=int(m.group(2)))
        raise ScheduleError(f"{text!r} is not a schedule: use \"every <n>s|m|h|d\", \"daily HH:MM\" or \"off\"")

    def __str__(self) -> str:
        if self.kind == "every":
            for unit in ("d", "h", "m"):
                if self.period_s % _UNIT_S[unit] == 0:
                    return f"every {self.period_s // _UNIT_S[unit]}{unit}"
            return f"every {self.period_s}s"
        if self.kind == "daily":
            return f"daily {self.hour:02d}:{self.minute:02d}"
        return "off"

    def next_at(self, now: float, tz: tzinfo) -> float | None:
        """When the next occurrence after `now` is due (None when off): the same answer on every
        replica, whether or not it fires jobs itself."""
        if self.kind == "every":
            return (math.floor(now / self.period_s) + 1) * self.period_s
        if self.kind == "daily":
            local = datetime.fromtimestamp(now, tz)
            at = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
            day = local.date() if at > local else local.date() + timedelta(days=1)
            # rebuilt from the date (not by adding 24 h) so that a DST change keeps the wall-clock time
            return datetime(day.year, day.month, day.day, self.hour, self.minute, tzinfo=tz).timestamp()
        return None

    def occurrence(self, now: float, tz: tzinfo) -> str:
        """The occurrence a firing at `now` belongs to (firings arrive a little late, never
        early: the most recent scheduled time at or before now)."""
        if self.kind == "every":
            return f"{math.floor(now / self.period_s) * self.period_s}"
        if self.kind == "daily":
            local = datetime.fromtimestamp(now, tz)
            at = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
            if at > local:
                at -= timedelta(days=1)
            return at.date().isoformat()
        raise ScheduleError("an unscheduled job has no occurrences")
