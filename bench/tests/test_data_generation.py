"""The data-generation rows at the request limit name what was requested, from the limits'
one home (people_lake), not from copies of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


PARENT_MIB = 400
# A parent that holds PARENT_MIB, then starts a fresh child that reports its own peak.
PARENT = f"""
import subprocess, sys
held = bytearray({PARENT_MIB} * 1024 * 1024)
held[::4096] = b"x" * len(held[::4096])  # resident, not only reserved
child = "from bench.data_generation import own_peak_mib; print(own_peak_mib())"
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                     check=True).stdout)
"""


def test_a_child_of_a_large_process_reports_its_own_peak() -> None:
    """Linux's ru_maxrss counts the parent's memory across exec: after a long pytest run the
    fresh measurement children read 120-140 MiB high."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", PARENT], cwd=root, capture_output=True, text=True, check=True
    )
    child_mib = float(done.stdout.split()[-1])
    assert 0 < child_mib < PARENT_MIB / 2, child_mib
