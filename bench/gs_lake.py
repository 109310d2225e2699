"""The ``gs://`` lake: 1,000,000 rows written to a Delta table in the emulator (fake-gcs-server
behind the XML-API adapter, as ``just dd`` runs it), with the ratio to a directory lake
measured in the same run, and the peak memory of one 5,000,000-row request on each lake (and
over 366 days on ``gs://``; the directory's is a ``data_generation`` row).

Each measurement runs in a fresh process (``bench.data_generation``'s children); the
writes are one of each, not a best of several, to keep the run short.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from bench import console
from bench.data_generation import (
    EMULATOR_VAR,
    LIMIT_ROWS,
    PEAK_TARGET_MIB,
    RANGE_DAYS,
    _run_child,
)
from bench.report import Row
from devstack.stack import local_stack

SCENARIO = "gs_lake"


def _measure(
    lake_root: str, env: dict[str, str] | None
) -> tuple[dict[str, float], dict[str, float]]:
    """A 1M generate + write child and a 5M one-request child on tables under ``lake_root``."""
    write = _run_child(f"{lake_root}/people-{uuid.uuid4().hex[:8]}", env=env)
    request = _run_child("--request", f"{lake_root}/request-{uuid.uuid4().hex[:8]}",
                         str(LIMIT_ROWS), "1", env=env)  # fmt: skip
    return write, request


def run() -> list[Row]:
    with console.work_dir("gs_lake") as tmp:
        directory_write, directory_request = _measure(str(Path(tmp) / "lake"), None)
        with local_stack(Path(tmp) / "stack", pipes_bucket="bench-gs-pipes", gs_lake=True) as stack:
            env = {**os.environ, EMULATOR_VAR: stack.emulator_url}
            gs_write, gs_request = _measure(stack.gs_lake_uri, env)
            year_table = f"{stack.gs_lake_uri}/year-{uuid.uuid4().hex[:8]}"
            per_day = str(LIMIT_ROWS // RANGE_DAYS)
            gs_year = _run_child("--request", year_table, per_day, str(RANGE_DAYS), env=env)
    return [
        Row(SCENARIO, "write 1M rows to gs:// Delta (emulator + adapter)", gs_write["write_s"],
            "s", directory_write["write_s"], "directory lake, same run"),
        Row(SCENARIO, "peak memory, 5,000,000 rows (one request), directory lake",
            directory_request["peak_mib"], "MiB", target=PEAK_TARGET_MIB),
        Row(SCENARIO, "peak memory, 5,000,000 rows (one request), gs:// lake",
            gs_request["peak_mib"], "MiB", target=PEAK_TARGET_MIB),
        Row(SCENARIO, f"peak memory, 5,000,000 rows in {RANGE_DAYS} days (one request), gs:// lake",
            gs_year["peak_mib"], "MiB", target=PEAK_TARGET_MIB),
        Row(SCENARIO, "request of 5,000,000 rows to gs://, wall time",
            gs_request["request_s"], "s"),
    ]  # fmt: skip
