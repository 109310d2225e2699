"""The business logic: fake people into a Delta table, reported to Dagster through Pipes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dagster_pipes import PipesContext, to_asset_key_path

from people_lake import __version__
from people_lake.delta_table import append_rows, table_uri_for
from people_lake.fake_people import generate_people
from people_lake.request import parse_people_request
from people_lake.settings import FunctionSettings

logger = logging.getLogger(__name__)


def write_people(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    """Generate ``num_rows`` people, append them to ``<dl_bucket>/<asset key path>``."""
    request = parse_people_request(event, FunctionSettings.from_env().data_lake_uri)
    table_uri = table_uri_for(request.data_lake_uri, to_asset_key_path(pipes.asset_key))
    pipes.log.info(f"people function {__version__}: writing {request.num_rows} rows to {table_uri}")

    people = generate_people(request.num_rows, seed=request.seed)
    logger.info("generated %d fake people", people.height)
    written = append_rows(people, table_uri)
    pipes.log.info(f"Delta table {table_uri} is at version {written.version}")

    pipes.report_asset_materialization(
        metadata={
            "table_uri": {"raw_value": table_uri, "type": "path"},
            "dagster/row_count": {"raw_value": written.rows_written, "type": "int"},
            "delta_version": {"raw_value": written.version, "type": "int"},
        },
        data_version=str(written.version),
    )
    return {
        "table_uri": table_uri,
        "rows_written": written.rows_written,
        "delta_version": written.version,
    }
