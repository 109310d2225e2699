"""A window of whole UTC days: the daily partitions one invocation replaces."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

PARTITION_COLUMN = "event_date"
MAX_RANGE_DAYS = 366  # one leap year: a year's backfill in one call


@dataclass(frozen=True)
class DayWindow:
    """Days ``start`` .. ``end``, both included (one day when they are equal)."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"window end {self.end} is before its start {self.start}")

    @classmethod
    def of(cls, day: dt.date) -> DayWindow:
        return cls(day, day)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def each_day(self) -> Iterator[dt.date]:
        for offset in range(self.days):
            yield self.start + dt.timedelta(days=offset)

    @property
    def text(self) -> str:
        """``start..end`` (the ``partition_window`` metadata value)."""
        return f"{self.start.isoformat()}..{self.end.isoformat()}"

    @property
    def predicate(self) -> str:
        """The Delta overwrite predicate selecting exactly these days (dates: nothing to escape)."""
        return (
            f"{PARTITION_COLUMN} >= '{self.start.isoformat()}' "
            f"AND {PARTITION_COLUMN} <= '{self.end.isoformat()}'"
        )
