"""Validation of the user's event (the request body minus the Pipes bootstrap params)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gcf_pipes import RequestError

DEFAULT_NUM_ROWS = 100
MAX_NUM_ROWS = 5_000_000


@dataclass(frozen=True)
class PeopleRequest:
    """What one invocation is asked to do."""

    data_lake_uri: str
    num_rows: int
    seed: int | None


def _optional_int(event: Mapping[str, Any], field: str) -> int | None:
    value = event.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{field}' must be an integer, got {type(value).__name__}", field=field)
    return value


def parse_people_request(event: Mapping[str, Any], default_lake_uri: str | None) -> PeopleRequest:
    """Validate ``event``; raise :class:`RequestError` (HTTP 400) naming the bad field."""
    lake = event.get("dl_bucket", default_lake_uri)
    if lake is None:
        raise RequestError(
            "'dl_bucket' is missing and the function has no DATA_LAKE_URI configured",
            field="dl_bucket",
        )
    if not isinstance(lake, str) or not lake.strip():
        raise RequestError("'dl_bucket' must be a non-empty string", field="dl_bucket")

    num_rows = _optional_int(event, "num_rows")
    if num_rows is None:
        num_rows = DEFAULT_NUM_ROWS
    if not 1 <= num_rows <= MAX_NUM_ROWS:
        raise RequestError(
            f"'num_rows' must be between 1 and {MAX_NUM_ROWS}, got {num_rows}", field="num_rows"
        )
    return PeopleRequest(
        data_lake_uri=lake.strip(), num_rows=num_rows, seed=_optional_int(event, "seed")
    )
