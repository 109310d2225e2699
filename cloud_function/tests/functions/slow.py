"""A Pipes function that logs, then takes ``sleep_s`` seconds (for timeout/termination tests).

Each request is also printed to the server's own output (``CALL_LINE``), so a test can count
the calls the server really received.
"""

import os
import time
from collections.abc import Mapping
from typing import Any

import flask
import functions_framework
from dagster_pipes import PipesContext
from google.cloud import storage

from gcf_pipes import handle_pipes_request

CALL_LINE = "slow.py: request for invocation"


def _slow_job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    pipes.log.info("slow function started")
    time.sleep(float(event.get("sleep_s", 30)))
    pipes.log.info("slow function finished")
    return {}


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    print(CALL_LINE, request.headers.get("X-Dagster-Invocation-Id"), flush=True)
    return handle_pipes_request(
        request, _slow_job, storage_client=storage.Client(), pipes_bucket=os.environ["PIPES_BUCKET"]
    )
