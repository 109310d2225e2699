"""The data-generation rows at the request limit name what was requested, from the limits'
one home (people_lake), not from copies of them."""

from __future__ import annotations

from bench.data_generation import LIMIT_ROWS, RANGE_DAYS, request_rows
from people_lake.settings import DEFAULT_MAX_ROWS_PER_REQUEST
from people_lake.window import MAX_RANGE_DAYS


def test_the_range_row_names_the_rows_its_request_wrote() -> None:
    one_write = {"peak_mib": 440.0, "request_s": 9.0}
    rows_per_day = LIMIT_ROWS // RANGE_DAYS  # 13,661: the 5,000,000 limit, rounded down
    _, year, _ = request_rows(one_write, {"peak_mib": 480.0, "request_s": 9.5}, rows_per_day)
    assert year.metric == "peak memory, 4,999,926 rows in 366 days (one request)"
    assert year.value == 480.0 and year.met is True


def test_the_limits_are_the_functions() -> None:
    assert (LIMIT_ROWS, RANGE_DAYS) == (DEFAULT_MAX_ROWS_PER_REQUEST, MAX_RANGE_DAYS)
