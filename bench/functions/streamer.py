"""Bench-only function: emits ``count`` timestamped Pipes logs, ``interval_s`` apart.

Each message is ``"<tag> <index> <unix time>"`` so the reader side can check order, loss,
isolation and latency. It reports a materialization so the run succeeds like a real one.
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

_client: list[storage.Client] = []


def stream_logs(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    tag, count, interval = str(event["tag"]), int(event["count"]), float(event["interval_s"])
    for index in range(count):
        pipes.log.info(f"{tag} {index} {time.time():.6f}")
        if interval:
            time.sleep(interval)
    pipes.report_asset_materialization(metadata={"messages": count})
    return {"messages": count}


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    if not _client:
        _client.append(storage.Client())
    return handle_pipes_request(
        request, stream_logs, storage_client=_client[0], pipes_bucket=os.environ["PIPES_BUCKET"]
    )
