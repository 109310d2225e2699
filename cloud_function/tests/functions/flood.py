"""A Pipes function that logs ``lines`` lines at once, then takes ``sleep_s`` seconds: the
Dagster side gets a backlog of chunks to deliver while the call is still waiting.

``FLOODED_LINE`` goes to the server's own output once every line is written to GCS.
"""

import os
import time
from collections.abc import Mapping
from typing import Any

import flask
import functions_framework
from dagster_pipes import PipesContext
from google.cloud import storage

from gcf_pipes import WriterSettings, handle_pipes_request

FLOODED_LINE = "flood.py: every line is in the Pipes bucket"
FLUSH_S = 0.05


def _flood_job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    for line in range(int(event.get("lines", 10_000))):
        pipes.log.info(f"flood line {line}")
    time.sleep(FLUSH_S * 10)  # the writer's thread uploads what is buffered
    print(FLOODED_LINE, flush=True)
    time.sleep(float(event.get("sleep_s", 60)))
    return {}


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    return handle_pipes_request(
        request,
        _flood_job,
        storage_client=storage.Client(),
        pipes_bucket=os.environ["PIPES_BUCKET"],
        writer_settings=WriterSettings(flush_interval=FLUSH_S, max_chunk_messages=100),
    )
