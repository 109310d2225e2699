"""Strict validation of what one invocation is asked to do.

The event (request body minus the Pipes bootstrap params) and the Pipes context (partition
key range and time window, invocation id) are checked before anything is generated or
written; every problem is a :class:`RequestError` (HTTP 400) naming the offending field.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster_pipes import PipesContext

from gcf_pipes import RequestError
from gcf_pipes.strict_json import MAX_QUOTED_CHARS, quoted
from people_lake.window import MAX_RANGE_DAYS, DayWindow

DEFAULT_NUM_ROWS = 100
MAX_NUM_ROWS = 5_000_000
MAX_SEED = 2**63 - 1
EVENT_FIELDS = ("dl_bucket", "num_rows", "seed", "invalid_email_rate")
INVOCATION_ID_EXTRA = "invocation_id"  # set by the Dagster client, equal on every retry
_INVOCATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_DAILY_KEY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only
RANGE_FIELD = "partition_key_range"
WINDOW_FIELD = "partition_time_window"


@dataclass(frozen=True)
class PeopleRequest:
    """The validated event.

    Attributes:
        data_lake_uri: root the table goes under (``dl_bucket``, else ``DATA_LAKE_URI``).
        num_rows: rows to generate (per day for a daily partition range), 1 ..
            :data:`MAX_NUM_ROWS`.
        seed: makes the data reproducible; 0 .. 2**63 - 1, or None for fresh data.
        invalid_email_rate: share of deliberately malformed e-mails (0 .. 1), to demo a
            failing check.
    """

    data_lake_uri: str
    num_rows: int = DEFAULT_NUM_ROWS
    seed: int | None = None
    invalid_email_rate: float = 0.0


def _number(value: float) -> str:
    """A number as a refusal shows it: a 4,000-digit integer is not echoed."""
    text = str(value)
    return text if len(text) <= 24 else f"a number of {len(text)} characters"


def _optional_int(event: Mapping[str, Any], field: str, low: int, high: int) -> int | None:
    value = event.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{field}' must be an integer, got {type(value).__name__}", field=field)
    if not low <= value <= high:
        raise RequestError(
            f"'{field}' must be between {low} and {high}, got {_number(value)}", field=field
        )
    return value


def _rate(event: Mapping[str, Any], field: str) -> float:
    value = event.get(field)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"'{field}' must be a number, got {type(value).__name__}", field=field)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise RequestError(f"'{field}' must be between 0 and 1, got {_number(value)}", field=field)
    return float(value)


def _lake(event: Mapping[str, Any], default_lake_uri: str | None) -> str:
    lake = event.get("dl_bucket", default_lake_uri)
    if lake is None:
        raise RequestError(
            "'dl_bucket' is missing and the function has no DATA_LAKE_URI configured",
            field="dl_bucket",
        )
    if not isinstance(lake, str) or not lake.strip():
        raise RequestError("'dl_bucket' must be a non-empty string", field="dl_bucket")
    return lake.strip()


def parse_people_request(event: Mapping[str, Any], default_lake_uri: str | None) -> PeopleRequest:
    """Validate ``event``; raise :class:`RequestError` (HTTP 400) naming the bad field."""
    unknown = sorted(set(event) - set(EVENT_FIELDS))
    if unknown:
        name = unknown[0][:MAX_QUOTED_CHARS]  # the caller's text: quoted only this far
        raise RequestError(
            f"unknown field {quoted(unknown[0])}; the function accepts {', '.join(EVENT_FIELDS)}",
            field=name,
        )
    num_rows = _optional_int(event, "num_rows", 1, MAX_NUM_ROWS)
    return PeopleRequest(
        data_lake_uri=_lake(event, default_lake_uri),
        num_rows=DEFAULT_NUM_ROWS if num_rows is None else num_rows,
        seed=_optional_int(event, "seed", 0, MAX_SEED),
        invalid_email_rate=_rate(event, "invalid_email_rate"),
    )


def _daily_key(value: Any, field: str) -> dt.date:
    try:
        if not isinstance(value, str) or not _DAILY_KEY.fullmatch(value):
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise RequestError(
            f"partition key {str(value)[:40]!r} is not a daily partition (YYYY-MM-DD)",
            field=field,
        ) from None


def _key_range(pipes: PipesContext) -> DayWindow:
    key_range: Any = pipes.partition_key_range
    if not isinstance(key_range, dict) or set(key_range) != {"start", "end"}:
        raise RequestError(
            "partition_key_range must be an object with 'start' and 'end'", field=RANGE_FIELD
        )
    start, end = (_daily_key(key_range[side], RANGE_FIELD) for side in ("start", "end"))
    if end < start:
        raise RequestError(
            f"partition_key_range ends ({end}) before it starts ({start})", field=RANGE_FIELD
        )
    window = DayWindow(start, end)
    if window.days > MAX_RANGE_DAYS:
        raise RequestError(
            f"partition_key_range {window.text} spans {window.days} days; at most "
            f"{MAX_RANGE_DAYS} per invocation",
            field=RANGE_FIELD,
        )
    return window


def _utc_midnight(value: Any) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    midnight = moment is not None and moment.time() == dt.time()
    if moment is None or not midnight or moment.utcoffset() != dt.timedelta(0):
        raise RequestError(
            f"partition_time_window bound {str(value)[:40]!r} is not 00:00 UTC in ISO 8601",
            field=WINDOW_FIELD,
        )
    return moment


def _check_time_window(pipes: PipesContext, window: DayWindow) -> None:
    """The time window, when sent, must cover exactly the range's days (00:00 UTC bounds)."""
    time_window: Any = pipes.partition_time_window
    if time_window is None:
        return
    if not isinstance(time_window, dict) or set(time_window) != {"start", "end"}:
        raise RequestError(
            "partition_time_window must be an object with 'start' and 'end'", field=WINDOW_FIELD
        )
    start, end = (_utc_midnight(time_window[side]) for side in ("start", "end"))
    if (start.date(), end.date()) != (window.start, window.end + dt.timedelta(days=1)):
        raise RequestError(
            f"partition_time_window {start.isoformat()}..{end.isoformat()} does not match "
            f"partition_key_range {window.text}",
            field=WINDOW_FIELD,
        )


def parse_partition_window(pipes: PipesContext) -> DayWindow | None:
    """The daily partitions in scope (one day or a range), or None when unpartitioned.

    Raises:
        RequestError: (400) keys that are not ``YYYY-MM-DD``, a range that ends before it
            starts or spans more than :data:`MAX_RANGE_DAYS` days, or a time window that
            does not cover exactly those days.
    """
    if not pipes.is_partition_step:
        return None
    window = _key_range(pipes)
    _check_time_window(pipes, window)
    return window


def check_row_limit(request: PeopleRequest, window: DayWindow | None, max_rows: int) -> int:
    """Rows the invocation writes (``num_rows`` per day); 400 naming num_rows over the limit."""
    days = window.days if window else 1
    total = days * request.num_rows
    if total > max_rows:
        per = f" x {days} days" if window else ""
        raise RequestError(
            f"'num_rows' {request.num_rows}{per} = {total} rows is more than this function "
            f"writes per request ({max_rows})",
            field="num_rows",
        )
    return total


def parse_invocation_id(pipes: PipesContext) -> str | None:
    """The client's stable invocation id (Pipes extra), or None when the caller sent none."""
    value = pipes.extras.get(INVOCATION_ID_EXTRA)
    if value is None:
        return None
    if not isinstance(value, str) or not _INVOCATION_ID.fullmatch(value):
        raise RequestError(
            "Pipes extra 'invocation_id' must be 1-128 letters, digits or ._:-",
            field=INVOCATION_ID_EXTRA,
        )
    return value
