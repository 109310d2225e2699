"""Cloud Function entry point (2nd gen, HTTP): ``--entry-point=main``."""

from __future__ import annotations

import functools

import flask
import functions_framework
from google.cloud import storage

# people_lake first: it configures the allocators of deltalake and polars before they load, and
# its modules import deltalake before polars (a crash at exit otherwise).
from gcf_pipes import handle_pipes_request, install_logging_bridge, install_structured_logging
from people_lake.job import write_people
from people_lake.settings import FunctionSettings

install_logging_bridge()
# Read once at start: a bad PIPES_BUCKET stops the instance instead of failing each request.
SETTINGS = FunctionSettings.from_env()
PIPES_BUCKET = SETTINGS.pipes_bucket
install_structured_logging(SETTINGS.project, SETTINGS.revision)


@functools.cache
def storage_client() -> storage.Client:
    """One client per instance, created on first use (credentials come from the runtime)."""
    return storage.Client()


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    """Run one Pipes-orchestrated people job per request."""
    return handle_pipes_request(
        request,
        write_people,
        storage_client=storage_client(),
        pipes_bucket=PIPES_BUCKET,
        deadline_s=SETTINGS.request_deadline_s,
    )
