"""The Pipes bootstrap params of a request: decoded within bounds, inline only, checked.

``DAGSTER_PIPES_CONTEXT`` and ``DAGSTER_PIPES_MESSAGES`` are base64 of zlib-compressed JSON
(``dagster_pipes.encode_param``). ``decode_param`` decompresses without a bound, and the stock
``PipesDefaultContextLoader`` opens any file the params name, so neither ever sees request
data: each param is decompressed with a cap, the context must be inline (``{"data": {...}}``),
and the messages must go to the function's own Pipes bucket under a safe key prefix.

The messages params are read as a stock blob-store writer reads them: ``bucket`` and
``key_prefix``, and ``include_stdio_in_messages`` (a boolean, which dagster-gcp's
``PipesGCSMessageReader`` always sends). That switch is accepted and ignored: stdout and stderr
belong to the whole process, which serves concurrent requests, so no output could be told to
be one request's; the business logic's ``logging`` records reach Dagster instead. Other keys
(a newer Dagster's) are ignored within the same bounds as unknown context keys.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    DAGSTER_PIPES_MESSAGES_ENV_VAR,
    PipesBlobStoreMessageWriter,
    PipesContextData,
    PipesParams,
)

from gcf_pipes.context_data import known_entries, validate_context_data
from gcf_pipes.errors import RequestError
from gcf_pipes.gcs_names import MAX_KEY_PREFIX_CHARS, is_bucket_name, is_key_prefix
from gcf_pipes.strict_json import StrictJSONError, loads_strict, refuse_lone_surrogates

CONTEXT_PARAM = DAGSTER_PIPES_CONTEXT_ENV_VAR
MESSAGES_PARAM = DAGSTER_PIPES_MESSAGES_ENV_VAR
PIPES_PARAM_KEYS = (CONTEXT_PARAM, MESSAGES_PARAM)
# Decoded (decompressed) size of one param: a real context is a few KiB.
MAX_DECODED_PARAM_BYTES = 256 * 1024

_INLINE_KEY = "data"
_MESSAGES_REQUIRED = ("bucket", "key_prefix")
INCLUDE_STDIO_KEY = PipesBlobStoreMessageWriter.INCLUDE_STDIO_IN_MESSAGES_KEY


@dataclass(frozen=True)
class PipesBootstrap:
    """Checked bootstrap params: the context data and where this request's messages go."""

    context_data: PipesContextData
    bucket: str
    key_prefix: str

    @property
    def messages_params(self) -> PipesParams:
        return {"bucket": self.bucket, "key_prefix": self.key_prefix}


def decode_bounded_param(
    name: str, value: object, max_bytes: int = MAX_DECODED_PARAM_BYTES
) -> object:
    """``decode_param`` that stops inflating at ``max_bytes`` (413) and names ``name`` (400)."""
    if not isinstance(value, str):
        raise RequestError(f"{name} must be a string (base64 of zlib-compressed JSON)", field=name)
    try:
        compressed = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{name} is not valid base64", field=name) from None
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(compressed, max_bytes + 1)
    except zlib.error:
        raise RequestError(f"{name} is not zlib-compressed data", field=name) from None
    if len(raw) > max_bytes:
        raise RequestError(
            f"{name} decompresses to more than {max_bytes} bytes", field=name, status=413
        )
    if not inflater.eof or inflater.unused_data:
        raise RequestError(f"{name} is not one complete zlib stream", field=name)
    try:
        value = loads_strict(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError(f"{name} does not decode to UTF-8 text", field=name) from None
    except StrictJSONError as exc:
        raise RequestError(f"{name} is not strict JSON: {exc.reason}", field=name) from None
    refuse_lone_surrogates(value, name)
    return value


def _inline_context(value: object) -> PipesContextData:
    if not isinstance(value, dict) or set(value) != {_INLINE_KEY}:
        raise RequestError(
            f'{CONTEXT_PARAM} must carry the context inline, as {{"{_INLINE_KEY}": {{...}}}}; '
            "any other form (a file path, an environment variable) is refused",
            field=CONTEXT_PARAM,
        )
    return validate_context_data(value[_INLINE_KEY])


def _messages_fields(value: object) -> dict[str, Any]:
    """The messages params this function reads; ``include_stdio_in_messages`` checked too."""
    if not isinstance(value, dict):
        raise RequestError(
            f'{MESSAGES_PARAM} must be an object: {{"bucket": ..., "key_prefix": ...}}',
            field=MESSAGES_PARAM,
        )
    for key in _MESSAGES_REQUIRED:
        if key not in value:
            field = f"{MESSAGES_PARAM}.{key}"
            raise RequestError(f"{field} is missing", field=field)
    include_stdio = value.get(INCLUDE_STDIO_KEY, False)
    if not isinstance(include_stdio, bool):
        field = f"{MESSAGES_PARAM}.{INCLUDE_STDIO_KEY}"
        raise RequestError(f"{field} must be a boolean", field=field)
    return known_entries(value, (*_MESSAGES_REQUIRED, INCLUDE_STDIO_KEY), MESSAGES_PARAM)


def _messages_target(value: object, pipes_bucket: str) -> tuple[str, str]:
    fields = _messages_fields(value)
    bucket, key_prefix = fields["bucket"], fields["key_prefix"]
    if not isinstance(bucket, str) or not is_bucket_name(bucket):
        field = f"{MESSAGES_PARAM}.bucket"
        raise RequestError(f"{field} is not a valid Cloud Storage bucket name", field=field)
    if bucket != pipes_bucket:
        field = f"{MESSAGES_PARAM}.bucket"
        raise RequestError(
            f"{field} names a bucket this function does not write Pipes messages to",
            field=field,
            status=403,
        )
    if not isinstance(key_prefix, str) or not is_key_prefix(key_prefix):
        field = f"{MESSAGES_PARAM}.key_prefix"
        raise RequestError(
            f"{field} must be segments of letters, digits, '.', '_' or '-' (not '.' or '..') "
            f"joined by single '/', at most {MAX_KEY_PREFIX_CHARS} characters",
            field=field,
        )
    return bucket, key_prefix


def parse_bootstrap(
    body: Mapping[str, Any], *, pipes_bucket: str
) -> tuple[PipesBootstrap, dict[str, Any]]:
    """The checked bootstrap params and the user's event (the rest of the body)."""
    missing = [key for key in PIPES_PARAM_KEYS if key not in body]
    if missing:
        raise RequestError(
            f"missing Dagster Pipes bootstrap parameter(s): {', '.join(missing)}",
            field=missing[0],
        )
    context_value = decode_bounded_param(CONTEXT_PARAM, body[CONTEXT_PARAM])
    messages_value = decode_bounded_param(MESSAGES_PARAM, body[MESSAGES_PARAM])
    bucket, key_prefix = _messages_target(messages_value, pipes_bucket)
    bootstrap = PipesBootstrap(_inline_context(context_value), bucket, key_prefix)
    event = {key: value for key, value in body.items() if key not in PIPES_PARAM_KEYS}
    return bootstrap, event
