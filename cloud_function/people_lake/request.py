"""Strict validation of what one invocation is asked to do.

The event (request body minus the Pipes bootstrap params) and the Pipes context (partition
key, invocation id) are checked before anything is generated or written; every problem is a
:class:`RequestError` (HTTP 400) naming the offending field.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster_pipes import PipesContext

from gcf_pipes import RequestError

DEFAULT_NUM_ROWS = 100
MAX_NUM_ROWS = 5_000_000
MAX_SEED = 2**63 - 1
EVENT_FIELDS = ("dl_bucket", "num_rows", "seed", "invalid_email_rate")
INVOCATION_ID_EXTRA = "invocation_id"  # set by the Dagster client, equal on every retry
_INVOCATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_DAILY_KEY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class PeopleRequest:
    """The validated event.

    Attributes:
        data_lake_uri: root the table goes under (``dl_bucket``, else ``DATA_LAKE_URI``).
        num_rows: rows to generate, 1 .. :data:`MAX_NUM_ROWS`.
        seed: makes the data reproducible; 0 .. 2**63 - 1, or None for fresh data.
        invalid_email_rate: share of deliberately malformed e-mails (0 .. 1), to demo a
            failing check.
    """

    data_lake_uri: str
    num_rows: int = DEFAULT_NUM_ROWS
    seed: int | None = None
    invalid_email_rate: float = 0.0


def _optional_int(event: Mapping[str, Any], field: str, low: int, high: int) -> int | None:
    value = event.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{field}' must be an integer, got {type(value).__name__}", field=field)
    if not low <= value <= high:
        raise RequestError(f"'{field}' must be between {low} and {high}, got {value}", field=field)
    return value


def _rate(event: Mapping[str, Any], field: str) -> float:
    value = event.get(field)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"'{field}' must be a number, got {type(value).__name__}", field=field)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise RequestError(f"'{field}' must be between 0 and 1, got {value}", field=field)
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
        raise RequestError(
            f"unknown field {unknown[0]!r}; the function accepts {', '.join(EVENT_FIELDS)}",
            field=unknown[0],
        )
    num_rows = _optional_int(event, "num_rows", 1, MAX_NUM_ROWS)
    return PeopleRequest(
        data_lake_uri=_lake(event, default_lake_uri),
        num_rows=DEFAULT_NUM_ROWS if num_rows is None else num_rows,
        seed=_optional_int(event, "seed", 0, MAX_SEED),
        invalid_email_rate=_rate(event, "invalid_email_rate"),
    )


def parse_partition_day(pipes: PipesContext) -> dt.date | None:
    """The day of a daily partition (``YYYY-MM-DD``), or None when the step is unpartitioned."""
    if not pipes.is_partition_step:
        return None
    key_range = pipes.partition_key_range
    if key_range["start"] != key_range["end"]:
        raise RequestError(
            f"one partition per invocation, got the range {key_range['start']}..."
            f"{key_range['end']}",
            field="partition_key",
        )
    key = key_range["start"]
    try:
        if not _DAILY_KEY.fullmatch(key):
            raise ValueError(key)
        return dt.date.fromisoformat(key)
    except ValueError:
        raise RequestError(
            f"partition key {key!r} is not a daily partition (YYYY-MM-DD)", field="partition_key"
        ) from None


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
