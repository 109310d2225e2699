"""Cloud Function entry point (2nd gen, HTTP): ``--entry-point=main``."""

from __future__ import annotations

import deltalake  # noqa: F401 - must be imported before polars (crash at exit otherwise)
import flask
import functions_framework
from google.cloud import storage

from gcf_pipes import handle_pipes_request, install_logging_bridge
from people_lake.job import write_people

install_logging_bridge()
_storage_client: storage.Client | None = None


def _storage() -> storage.Client:
    global _storage_client
    if _storage_client is None:
        _storage_client = storage.Client()
    return _storage_client


@functions_framework.http
def main(request: flask.Request) -> tuple[flask.Response, int]:
    """Run one Pipes-orchestrated people job per request."""
    return handle_pipes_request(request, write_people, storage_client=_storage())
