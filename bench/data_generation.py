"""Fake-data benchmark: the people function's generator and Delta write at 1,000,000 rows.

Targets: 1M rows generated in <= 1 s and written to a local Delta table in <= 3 s,
>= 100x faster than a plain Faker per-row loop (measured in the same run on a sample and
extrapolated), peak memory < 1 GiB. Generation and write run in fresh processes (cold: the
Faker vocabularies are built inside the timing; peak RSS is that process's own), best of
``RUNS``; the warm figure is a second generation in the same process.

Peak memory of one request at the row limit (``LIMIT_ROWS``, the function's default): the
whole request through the function's handler (validation, batched generation, checks, one
Delta commit, metadata, Pipes messages) in a fresh process, for one unpartitioned write and
for the longest range (``RANGE_DAYS``, where delta-rs keeps a parquet writer open per day until
the commit, with as many rows per day as fit the limit); target ``PEAK_TARGET_MIB`` each.
"""

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Row
from devstack.memory import own_peak_bytes
from people_lake.settings import DEFAULT_MAX_ROWS_PER_REQUEST
from people_lake.window import MAX_RANGE_DAYS

ROWS = 1_000_000
EMULATOR_VAR = "STORAGE_EMULATOR_HOST"  # set by the gs:// scenario: the lake is in the emulator
FAKER_SAMPLE = 2_000
RUNS = 3
SCENARIO = "data_generation"


def faker_rows_per_second(sample: int = FAKER_SAMPLE) -> float:
    """The baseline: one Faker call per field per row, collected into a DataFrame."""
    import deltalake  # noqa: F401 - before polars
    import polars as pl
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(1)
    started = time.perf_counter()
    rows = [
        {
            "id": fake.uuid4(),
            "name": fake.name(),
            "address": fake.address().replace("\n", ", "),
            "email": fake.email(),
            "phone": fake.phone_number(),
            "created_at": fake.date_time_between("-1y", "now"),
        }
        for _ in range(sample)
    ]
    pl.DataFrame(rows)
    return sample / (time.perf_counter() - started)


def own_peak_mib() -> float:
    """This process's own peak memory in MiB (see :mod:`devstack.memory`)."""
    return own_peak_bytes() / (1024 * 1024)


def child(table_dir: str) -> dict[str, float]:
    """One fresh-process measurement (run via ``python -m bench.data_generation``); the
    function's package loads deltalake and polars (with its allocator settings)."""
    import os

    from people_lake.delta_table import open_table, write_people_table
    from people_lake.fake_people import generate_people
    from people_lake.storage import TableRef, storage_options_for

    table = TableRef(table_dir, storage_options_for(table_dir, os.environ.get(EMULATOR_VAR)))
    started = time.perf_counter()
    people = generate_people(ROWS, seed=1)
    generated = time.perf_counter()
    write_people_table(people, table, invocation_id="bench")
    written = time.perf_counter()
    peak_mib = own_peak_mib()
    written_table = open_table(table)
    assert written_table is not None and written_table.count() == ROWS
    del people
    warm_started = time.perf_counter()
    generate_people(ROWS, seed=2)
    return {
        "generate_s": generated - started,
        "write_s": written - generated,
        "peak_mib": peak_mib,
        "warm_generate_s": time.perf_counter() - warm_started,
    }


LIMIT_ROWS = DEFAULT_MAX_ROWS_PER_REQUEST
PEAK_TARGET_MIB = 512.0  # cloud_function/tests/test_people_memory.py holds the function to it
RANGE_DAYS = MAX_RANGE_DAYS


def request_child(lake: str, rows_per_day: int, days: int) -> dict[str, float]:
    """One request of ``rows_per_day`` x ``days`` through the function's handler, in-process.

    Pipes messages go to the in-memory GCS stand-in (a few kilobytes); the lake is a
    directory, or ``gs://`` in the emulator at ``STORAGE_EMULATOR_HOST``.
    """
    import datetime as dt
    import os

    import flask
    from dagster_pipes import (
        DAGSTER_PIPES_CONTEXT_ENV_VAR,
        DAGSTER_PIPES_MESSAGES_ENV_VAR,
        encode_param,
    )

    from devstack.fake_gcs import FakeClient
    from gcf_pipes import handle_pipes_request
    from people_lake.job import write_people

    os.environ.update({"DATA_LAKE_URI": lake, "ALLOWED_DATA_LAKE_ROOTS": lake})
    if not lake.startswith("gs://"):
        os.environ.pop(EMULATOR_VAR, None)
    first = dt.date(2024, 1, 1)
    last = first + dt.timedelta(days=days - 1)
    key_range = {"start": first.isoformat(), "end": last.isoformat()} if days > 1 else None
    window = (
        {"start": f"{first}T00:00:00+00:00", "end": f"{last + dt.timedelta(days=1)}T00:00:00+00:00"}
        if key_range
        else None
    )
    asset = "daily_people" if key_range else "people"
    context = {
        "asset_keys": [asset], "code_version_by_asset_key": {asset: None},
        "provenance_by_asset_key": {asset: None}, "partition_key": None,
        "partition_key_range": key_range, "partition_time_window": window, "run_id": "bench",
        "job_name": "bench", "retry_number": 0, "extras": {"invocation_id": "bench-peak"},
    }  # fmt: skip
    body = {
        "num_rows": rows_per_day,
        "seed": 1,
        DAGSTER_PIPES_CONTEXT_ENV_VAR: encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES_ENV_VAR: encode_param({"bucket": "pipes", "key_prefix": "b/1"}),
    }
    gcs = FakeClient()
    gcs.create_bucket("pipes")
    started = time.perf_counter()
    with flask.Flask(__name__).test_request_context("/", method="POST", json=body):
        response, status = handle_pipes_request(
            flask.request, write_people, storage_client=gcs, pipes_bucket="pipes"
        )
    elapsed = time.perf_counter() - started
    result = json.loads(response.get_data())
    assert status == 200, result
    assert result["result"]["rows_written"] == rows_per_day * days, result
    return {
        "peak_mib": own_peak_mib(),
        "request_s": elapsed,
    }


def _run_child(*args: str, env: dict[str, str] | None = None) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.data_generation", *args],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,  # the result; a failure's traceback goes to our stderr
        text=True,
        check=True,
        timeout=600,
        env=env,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _request_peak(rows_per_day: int, days: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-request-") as tmp:
        return _run_child("--request", tmp, str(rows_per_day), str(days))


def _measure_in_fresh_process() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-people-") as tmp:
        return _run_child(str(Path(tmp) / "people"))


def request_rows(
    one_write: dict[str, float], year: dict[str, float], year_rows_per_day: int
) -> list[Row]:
    """The rows of the two requests at the limit: ``LIMIT_ROWS`` in one write, and
    ``year_rows_per_day`` for each of ``RANGE_DAYS`` days."""
    year_rows = year_rows_per_day * RANGE_DAYS
    return [
        Row(SCENARIO, f"peak memory, {LIMIT_ROWS:,} rows (one request)", one_write["peak_mib"],
            "MiB", target=PEAK_TARGET_MIB),
        Row(SCENARIO, f"peak memory, {year_rows:,} rows in {RANGE_DAYS} days (one request)",
            year["peak_mib"], "MiB", target=PEAK_TARGET_MIB),
        Row(SCENARIO, f"request of {LIMIT_ROWS:,} rows, wall time", one_write["request_s"], "s"),
    ]  # fmt: skip


def run() -> list[Row]:
    faker_rate = faker_rows_per_second()
    faker_s = ROWS / faker_rate
    runs = [_measure_in_fresh_process() for _ in range(RUNS)]

    def best(key: str) -> float:
        return min(run[key] for run in runs)

    generate_s = best("generate_s")
    label = f"Faker loop ({faker_rate:,.0f} rows/s x 1M)"
    one_write = _request_peak(LIMIT_ROWS, 1)
    year_rows_per_day = LIMIT_ROWS // RANGE_DAYS  # just under the limit
    year = _request_peak(year_rows_per_day, RANGE_DAYS)
    return [
        Row(SCENARIO, "generate 1M rows, fresh process", generate_s, "s", faker_s, label, 1.0),
        Row(SCENARIO, "generate 1M rows, warm", best("warm_generate_s"), "s", faker_s, label),
        Row(SCENARIO, "write 1M rows to local Delta", best("write_s"), "s", target=3.0),
        Row(
            SCENARIO,
            "speed-up vs Faker row loop",
            faker_s / generate_s,
            "x",
            target=100.0,
            better="higher",
        ),
        Row(
            SCENARIO,
            "peak memory, generate + write 1M",
            max(r["peak_mib"] for r in runs),
            "MiB",
            target=1024.0,
        ),
        *request_rows(one_write, year, year_rows_per_day),
        Row(
            SCENARIO,
            f"generate 1M rows, median of {RUNS}",
            statistics.median(r["generate_s"] for r in runs),
            "s",
        ),
    ]


def _main(argv: list[str]) -> None:
    if argv[0] == "--request":
        outcome: dict[str, Any] = request_child(argv[1], int(argv[2]), int(argv[3]))
    else:
        outcome = child(argv[0])
    print(json.dumps(outcome))


if __name__ == "__main__":
    _main(sys.argv[1:])
