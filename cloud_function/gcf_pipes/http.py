"""HTTP wrapper that turns a business-logic job into a Pipes-speaking Cloud Function.

Every outcome is a JSON response that names its cause: 400 for a malformed request, the
job's own status for a :class:`RequestError`, 500 (with the remote type, message and
traceback) for a crash, and 502 when Pipes messages could not be delivered to GCS.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import flask
from dagster_pipes import PipesContext, decode_param
from google.cloud import storage
from werkzeug.exceptions import RequestEntityTooLarge

from gcf_pipes.context import PIPES_PARAM_KEYS, open_request_pipes, split_pipes_params
from gcf_pipes.errors import RequestError
from gcf_pipes.writer import PipesCloudStorageMessageWriter, WriterSettings

# The Pipes context and the event are small; anything bigger is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024

Job = Callable[[PipesContext, Mapping[str, Any]], Mapping[str, Any] | None]
Response = tuple[flask.Response, int]


def json_response(status: int, body: Mapping[str, Any]) -> Response:
    return flask.Response(json.dumps(body), mimetype="application/json"), status


def error_body(kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"status": "error", "error": {"type": kind, "message": message, **details}}


def parse_pipes_body(request: flask.Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object, with decodable Pipes bootstrap params, or a RequestError."""
    size = request.content_length
    if size is not None and size > max_bytes:
        raise RequestError(
            f"request body is {size} bytes; the limit is {max_bytes}", field="body", status=413
        )
    request.max_content_length = max_bytes  # also bounds bodies sent without Content-Length
    try:
        body = request.get_json(force=True, silent=True)
    except RequestEntityTooLarge as exc:
        raise RequestError(
            f"request body exceeds {max_bytes} bytes", field="body", status=413
        ) from exc
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", field="body")
    missing = [key for key in PIPES_PARAM_KEYS if key not in body]
    if missing:
        raise RequestError(
            f"missing Dagster Pipes bootstrap parameter(s): {', '.join(missing)}",
            field=missing[0],
        )
    for key in PIPES_PARAM_KEYS:
        try:
            decode_param(body[key])
        except Exception as exc:
            raise RequestError(f"cannot decode {key}: {exc}", field=key) from exc
    return body


def handle_pipes_request(
    request: flask.Request,
    job: Job,
    *,
    storage_client: storage.Client,
    writer_settings: WriterSettings | None = None,
) -> Response:
    """Run ``job`` inside a fresh Pipes context for this request and report the outcome."""
    started = time.monotonic()
    try:
        pipes_params, event = split_pipes_params(parse_pipes_body(request))
    except RequestError as exc:
        return json_response(exc.status, error_body("RequestError", exc.message, field=exc.field))

    writer = PipesCloudStorageMessageWriter(storage_client, writer_settings)
    status, body = 200, dict[str, Any]()
    try:
        with open_request_pipes(pipes_params, writer) as pipes:
            summary = job(pipes, event) or {}
        body = {"status": "ok", "result": dict(summary)}
    except RequestError as exc:
        status, body = exc.status, error_body("RequestError", exc.message, field=exc.field)
    except Exception as exc:  # noqa: BLE001 - every crash becomes a 500 naming its cause
        status = 500
        body = error_body(
            type(exc).__name__, str(exc), traceback="".join(traceback.format_exception(exc))
        )

    channel = writer.channel
    if channel is not None and channel.delivery_error is not None:
        status, body = (
            502,
            error_body(
                "PipesMessageDeliveryError",
                str(channel.delivery_error),
                job_outcome=body,
            ),
        )
    body["duration_s"] = round(time.monotonic() - started, 3)
    body["pipes_chunks"] = channel.chunks_written if channel is not None else 0
    return json_response(status, body)
