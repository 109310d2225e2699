"""HTTP wrapper that turns a business-logic job into a Pipes-speaking Cloud Function.

Every outcome is a JSON response that names its cause: 400/403/413 for a request refused
before anything runs (see :mod:`gcf_pipes.bootstrap`), the job's own status for a
:class:`RequestError`, 500 (with the remote type, message and traceback) for a crash, 409
(body status ``"cancelled"``) for a job stopped because the orchestrator cancelled the request,
504 for a job stopped because its own deadline passed, and 502 when Pipes messages could not
be delivered to GCS. Environment values are redacted from every error body, and a refusal
(4xx) never carries a traceback, neither in its HTTP answer nor in the ``closed`` Pipes
message (both carry the same text).
"""

from __future__ import annotations

import io
import json
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import flask
from dagster_pipes import PipesContext
from google.cloud import storage
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from gcf_pipes.bootstrap import parse_bootstrap
from gcf_pipes.cancel import (
    Cancellation,
    CancellationPolicy,
    DeadlineExceeded,
    RequestCancelled,
    current_request_cancellation,
)
from gcf_pipes.context import open_request_pipes, refusal_exception
from gcf_pipes.errors import RequestError
from gcf_pipes.logs import traced_request
from gcf_pipes.redact import Redactor
from gcf_pipes.strict_json import StrictJSONError, loads_strict, refuse_lone_surrogates
from gcf_pipes.writer import PipesCloudStorageMessageWriter, WriterSettings

logger = logging.getLogger(__name__)

# The Pipes context and the event are small; anything bigger is a mistake or an attack.
MAX_BODY_BYTES = 1024 * 1024

Job = Callable[[PipesContext, Mapping[str, Any]], Mapping[str, Any] | None]
Response = tuple[flask.Response, int]


def json_response(status: int, body: Mapping[str, Any]) -> Response:
    return flask.Response(json.dumps(body), mimetype="application/json"), status


def error_body(kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"status": "error", "error": {"type": kind, "message": message, **details}}


def _too_large(max_bytes: int) -> RequestError:
    return RequestError(
        f"request body exceeds the limit of {max_bytes} bytes", field="body", status=413
    )


def read_body(request: flask.Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, read no further than ``max_bytes`` + 1: 413 above, with or without a
    Content-Length.

    Flask bounds the read (``request.max_content_length``) and caches what it read: the
    framework reads the body again once the handler has answered (functions-framework's
    ``after_request`` hook), and must find it there rather than read on. Werkzeug ends a
    chunked body at the limit without an error, hence the limit of one byte more: a body
    that reaches it is over ``max_bytes``.
    """
    request.max_content_length = max_bytes + 1
    try:
        data = request.get_data()
    except RequestEntityTooLarge:  # the Content-Length says so: nothing was read
        request.stream = io.BytesIO()  # left unread: the framework's hook must not read it
        raise _too_large(max_bytes) from None
    except ClientDisconnected:
        request.stream = io.BytesIO()
        raise RequestError("request body ended before its Content-Length", field="body") from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    return data


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object: UTF-8, strict JSON (:mod:`gcf_pipes.strict_json`), Unicode
    text throughout; 400 naming ``body`` (or the top-level key holding a lone surrogate)."""
    try:
        body = loads_strict(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("request body is not UTF-8", field="body") from None
    except StrictJSONError as exc:
        raise RequestError(f"request body is not strict JSON: {exc.reason}", field="body") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object", field="body")
    refuse_lone_surrogates(body, "body")
    return body


def _refusal(exc: RequestError, redactor: Redactor) -> dict[str, Any]:
    """The HTTP answer of a refusal: the type and text of its ``closed`` message."""
    closed = refusal_exception(exc, redactor)
    return error_body(str(closed["name"]), str(closed["message"]), field=exc.field)


def _cancelled(cancellation: Cancellation, redactor: Redactor) -> dict[str, Any]:
    message = f"cancelled by the orchestrator ({cancellation.location}) before finishing"
    return {
        "status": "cancelled",
        "error": {"type": RequestCancelled.__name__, "message": redactor.text(message)},
    }


def _stopped(
    exc: RequestCancelled, cancellation: Cancellation, redactor: Redactor
) -> tuple[int, dict[str, Any]]:
    """The answer of a job stopped at a check: 504 past its deadline, else 409 cancelled."""
    if isinstance(exc, DeadlineExceeded):
        return exc.status, error_body(type(exc).__name__, redactor.text(str(exc)))
    return RequestCancelled.status, _cancelled(cancellation, redactor)


def _crash(exc: Exception, redactor: Redactor) -> dict[str, Any]:
    return error_body(
        type(exc).__name__,
        redactor.text(str(exc)),
        traceback=redactor.text("".join(traceback.format_exception(exc))),
    )


@traced_request
def handle_pipes_request(
    request: flask.Request,
    job: Job,
    *,
    storage_client: storage.Client,
    pipes_bucket: str | None,
    writer_settings: WriterSettings | None = None,
    cancellation_policy: CancellationPolicy | None = None,
    deadline_s: float | None = None,
) -> Response:
    """Run ``job`` inside a fresh Pipes context for this request and report the outcome.

    ``pipes_bucket`` is the only bucket Pipes messages are written to (the function's own
    configuration; a request naming another one is refused with 403). Nothing in the body is
    trusted: it is bounded, decoded within limits and checked before any context opens.

    The job may stop when the orchestrator cancels the request (:mod:`gcf_pipes.cancel`):
    raising :class:`RequestCancelled` is answered with 409 and body status ``"cancelled"``.
    ``deadline_s`` (the platform's timeout minus a margin; None: none) makes the job's checks
    raise :class:`DeadlineExceeded` once that many seconds have passed: answered with 504.
    """
    started = time.monotonic()
    redactor = Redactor.from_env()
    if not pipes_bucket:
        body = error_body("ConfigurationError", "the function has no Pipes bucket configured")
        return json_response(500, body)
    try:
        bootstrap, event = parse_bootstrap(
            parse_json_object(read_body(request)), pipes_bucket=pipes_bucket
        )
    except RequestError as exc:
        return json_response(exc.status, _refusal(exc, redactor))

    cancellation = Cancellation(
        storage_client.bucket(pipes_bucket),
        bootstrap.key_prefix,
        cancellation_policy,
        deadline_s=deadline_s,
        started=started,
    )
    writer = PipesCloudStorageMessageWriter(
        storage_client, writer_settings, only_bucket=pipes_bucket, cancellation=cancellation
    )
    status, body = 200, dict[str, Any]()
    try:
        with (
            open_request_pipes(bootstrap, writer, redactor) as pipes,
            current_request_cancellation(cancellation),
        ):
            cancellation.warn = pipes.log.warning
            summary = job(pipes, event) or {}
        body = {"status": "ok", "result": dict(summary)}
    except RequestCancelled as exc:
        status, body = _stopped(exc, cancellation, redactor)
    except RequestError as exc:
        status, body = exc.status, _refusal(exc, redactor)
    except Exception as exc:  # noqa: BLE001 - every crash becomes a 500 naming its cause
        if cancellation.stopped_by is not None:  # a library re-raised the job's stop as its own
            status, body = _stopped(cancellation.stopped_by, cancellation, redactor)
        else:
            status, body = 500, _crash(exc, redactor)
    if status == 200 and cancellation.is_set():
        logger.warning("cancelled too late: the job had finished, its work stands")
    if status == 200 and cancellation.deadline_passed():
        logger.warning(
            "finished after its deadline (%g s): the platform may have answered 504 already; "
            "its work stands",
            deadline_s,
        )

    channel = writer.channel
    if channel is not None and channel.delivery_error is not None:
        status, body = (
            502,
            error_body(
                "PipesMessageDeliveryError",
                redactor.text(str(channel.delivery_error)),
                job_outcome=body,
            ),
        )
    body["duration_s"] = round(time.monotonic() - started, 3)
    body["pipes_chunks"] = channel.chunks_written if channel is not None else 0
    return json_response(status, body)
