"""Week arithmetic shared by the raw layout, the lake and the Dagster partitions.

A week is identified by the date of the Monday it starts on, in the configured time zone
(OTTO's data starts on Monday 2022-08-01 00:00 Europe/Berlin). Bounds are carried as UTC
epoch milliseconds because that is the unit of the raw `ts` field.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

WEEK_FOLDER_PREFIX = "week="


@dataclass(frozen=True)
class Week:
    monday: dt.date
    timezone: str

    @classmethod
    def parse(cls, key: str, timezone: str) -> "Week":
        monday = dt.date.fromisoformat(key)
        if monday.weekday() != 0:
            raise ValueError(f"week key {key!r} is a {monday.strftime('%A')}, not a Monday")
        return cls(monday, timezone)

    @classmethod
    def containing_ms(cls, ts_ms: int, timezone: str) -> "Week":
        local = dt.datetime.fromtimestamp(ts_ms / 1000, ZoneInfo(timezone))
        return cls(local.date() - dt.timedelta(days=local.weekday()), timezone)

    @property
    def key(self) -> str:
        return self.monday.isoformat()

    @property
    def folder(self) -> str:
        return f"{WEEK_FOLDER_PREFIX}{self.key}"

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.monday, dt.time(), ZoneInfo(self.timezone))

    @property
    def end(self) -> dt.datetime:
        """Exclusive end: the next Monday 00:00 local time (DST weeks are 167 or 169 hours)."""
        return dt.datetime.combine(self.monday + dt.timedelta(days=7), dt.time(), ZoneInfo(self.timezone))

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def shift(self, weeks: int) -> "Week":
        return Week(self.monday + dt.timedelta(weeks=weeks), self.timezone)

    def window(self, weeks_before: int, first: "Week | None" = None) -> list["Week"]:
        """This week and the `weeks_before` weeks preceding it, oldest first, never before `first`."""
        weeks = [self.shift(-offset) for offset in range(weeks_before, -1, -1)]
        if first is not None:
            weeks = [week for week in weeks if week.monday >= first.monday]
        return weeks

    def __str__(self) -> str:
        return self.key


def week_of_folder(name: str, timezone: str) -> Week | None:
    if not name.startswith(WEEK_FOLDER_PREFIX):
        return None
    try:
        return Week.parse(name[len(WEEK_FOLDER_PREFIX):], timezone)
    except ValueError:
        return None
