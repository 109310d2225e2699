"""The function side of the example: an HTTP Cloud Function (2nd gen) that Dagster runs
through Pipes. Deploy with ``--entry-point=main``; locally, ``functions-framework
--target main``. Needs ``PIPES_BUCKET`` (and ``STORAGE_EMULATOR_HOST`` against the emulator)."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import flask
import functions_framework
from dagster_pipes import PipesContext
from google.cloud import storage

from gcf_pipes import RequestError, handle_pipes_request, install_logging_bridge

MAX_NAME_CHARS = 100

install_logging_bridge()  # the job's `logging` lines reach Dagster too


def greet(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    """The business logic: one greeting, its metadata and the check the asset declares."""
    name = event.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise RequestError(f"name must be a string of 1..{MAX_NAME_CHARS} characters", field="name")
    greeting = f"Hello, {name}!"
    pipes.log.info(f"greeting {name}")
    pipes.report_asset_materialization(metadata={"greeting": greeting, "length": len(greeting)})
    pipes.report_asset_check(
        check_name="greeting_mentions_name", passed=name in greeting, metadata={"name": name}
    )
    return {"greeting": greeting}


@functools.cache
def storage_client() -> storage.Client:
    """One client per instance (credentials from the runtime, or the emulator locally)."""
    return storage.Client()


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    return handle_pipes_request(
        request, greet, storage_client=storage_client(), pipes_bucket=os.environ.get("PIPES_BUCKET")
    )
