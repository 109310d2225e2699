"""A Pipes function set up like ``main.py`` (logging bridge, structured logs) whose job works
in checked steps, then "commits" by creating ``<DATA_LAKE_URI>/<commit>.committed``.

The event says what else happens: ``not_json`` reports a custom message that is not JSON;
``wait_for_cancel`` returns once the orchestrator cancelled (too late to stop anything);
``crash_naming_roots`` crashes naming the last allowed lake root and its bucket. The
query ``?credentials=unrefreshable`` serves the request with a storage client whose token
cannot be refreshed (its token endpoint does not listen), as when the metadata server fails.
"""

import datetime
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import flask
import functions_framework
from dagster_pipes import PipesContext
from google.cloud import storage
from google.oauth2.credentials import Credentials

from gcf_pipes import (
    WriterSettings,
    current_cancellation,
    handle_pipes_request,
    install_logging_bridge,
    install_structured_logging,
    raise_if_cancelled,
)

install_logging_bridge()
install_structured_logging(None)
WORK_STEP_S = 0.05


def _job(pipes: PipesContext, event: Mapping[str, Any]) -> dict[str, Any]:
    pipes.log.info("working")
    if event.get("crash_naming_roots"):
        root = os.environ["ALLOWED_DATA_LAKE_ROOTS"].split(",")[-1]
        raise ValueError(f"people: cannot open {[root]!r} in bucket {urlsplit(root).netloc}")
    if event.get("not_json"):
        pipes.report_custom_message({"day": datetime.date(2024, 1, 1)})
    if event.get("wait_for_cancel"):
        current_cancellation().wait(timeout=10)  # then finishes without another check
    else:
        for _ in range(int(float(event.get("work_s", 1)) / WORK_STEP_S)):
            raise_if_cancelled()
            current_cancellation().wait(timeout=WORK_STEP_S)
        raise_if_cancelled()
    (Path(os.environ["DATA_LAKE_URI"]) / f"{event['commit']}.committed").touch()
    return {"committed": event["commit"]}


def _unrefreshable_client() -> storage.Client:
    credentials = Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token="refresh",
        client_id="client",
        client_secret="secret",
        token_uri="http://127.0.0.1:9/token",  # nothing listens there (discard port)
    )
    return storage.Client(project="local", credentials=credentials)


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    unrefreshable = request.args.get("credentials") == "unrefreshable"
    return handle_pipes_request(
        request,
        _job,
        storage_client=_unrefreshable_client() if unrefreshable else storage.Client(),
        pipes_bucket=os.environ["PIPES_BUCKET"],
        writer_settings=WriterSettings(flush_interval=0.05),
    )
