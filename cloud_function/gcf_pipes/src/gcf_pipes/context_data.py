"""The shape of the Pipes context data a request carries, checked before a context opens.

Pipes lets an orchestrator run a newer Dagster than the external process, so the check reads
a context the way ``dagster_pipes`` does: keys it does not know are ignored (after a check that
they are bounded), and a known key that is missing takes the value Dagster sends for "not
defined" (only ``run_id`` is required). Each known value is checked for type and size; a
problem is a :class:`RequestError` (400) naming the field as
``DAGSTER_PIPES_CONTEXT.<key>[.<sub-key>]``. What the values *mean* (which partition keys a
function accepts, for instance) is the business logic's to check.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar, cast

from dagster_pipes import (
    DAGSTER_PIPES_CONTEXT_ENV_VAR,
    PipesContextData,
    PipesDataProvenance,
    PipesPartitionKeyRange,
    PipesTimeWindow,
    to_asset_key_path,
)

from gcf_pipes.errors import RequestError

MAX_ASSET_KEYS = 256
MAX_ASSET_KEY_PARTS = 16
MAX_STRING_CHARS = 1024
MAX_MAP_ENTRIES = 1024
MAX_RETRY_NUMBER = 100_000
MAX_EXTRAS_BYTES = 64 * 1024
MAX_EXTRAS_DEPTH = 8
# Keys this function does not know (a newer Dagster's): ignored, but bounded like extras.
MAX_UNKNOWN_BYTES = 64 * 1024
MAX_UNKNOWN_DEPTH = 8

CONTEXT_KEYS = tuple(PipesContextData.__annotations__)
# ``PipesContext.run_id`` has no "undefined" state: a context without it is no Pipes context.
REQUIRED_CONTEXT_KEYS = ("run_id",)
_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # how Pipes names its keys
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}  # fmt: skip

T = TypeVar("T")


def _field(path: tuple[str, ...]) -> str:
    return ".".join((DAGSTER_PIPES_CONTEXT_ENV_VAR, *path))


def _refuse(path: tuple[str, ...], reason: str) -> RequestError:
    field = _field(path)
    return RequestError(f"{field} {reason}", field=field)


def _type_error(path: tuple[str, ...], expected: str, value: object) -> RequestError:
    return _refuse(path, f"must be {expected}, got {_JSON_TYPES.get(type(value), 'a value')}")


def _string(value: object, path: tuple[str, ...], *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise _type_error(path, "a string or null" if nullable else "a string", value)
    if len(value) > MAX_STRING_CHARS:
        raise _refuse(path, f"is longer than {MAX_STRING_CHARS} characters")
    if _CONTROL_CHARS.search(value):
        raise _refuse(path, "contains control characters")
    return value


def _required_string(value: object, path: tuple[str, ...]) -> str:
    text = _string(value, path)
    assert text is not None
    if not text:
        raise _refuse(path, "must not be empty")
    return text


def _object(value: object, path: tuple[str, ...]) -> dict[str, Any]:
    """A JSON object of at most :data:`MAX_MAP_ENTRIES` entries."""
    if not isinstance(value, dict):
        raise _type_error(path, "an object", value)
    if len(value) > MAX_MAP_ENTRIES:
        raise _refuse(path, f"has more than {MAX_MAP_ENTRIES} entries")
    return value


def context_defaults() -> dict[str, Any]:
    """What a context without the key means: Dagster's own values for "not an asset step",
    "not partitioned", "first try" and "no extras" (a fresh copy each time)."""
    return {
        "asset_keys": None,
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "job_name": None,
        "retry_number": 0,
        "extras": {},
    }


def known_entries(value: Mapping[str, Any], known: Collection[str], field: str) -> dict[str, Any]:
    """The entries of ``value`` named in ``known``; the others are ignored once shown bounded.

    An ignored key must be a plain name (as Pipes names its keys); its value at most
    :data:`MAX_UNKNOWN_DEPTH` deep, and all ignored values of ``value`` together at most
    :data:`MAX_UNKNOWN_BYTES` of JSON. ``field`` names ``value`` in a refusal.
    """
    unknown = {key: item for key, item in value.items() if key not in known}
    if any(not _KEY_NAME.fullmatch(key) for key in unknown):
        raise RequestError(f"{field} has a key that is neither known nor a plain name", field=field)
    for key, item in unknown.items():
        if _deeper_than(item, MAX_UNKNOWN_DEPTH):
            raise RequestError(
                f"{field}.{key} (a key this function ignores) is nested deeper than "
                f"{MAX_UNKNOWN_DEPTH} levels",
                field=f"{field}.{key}",
            )
    if len(json.dumps(unknown)) > MAX_UNKNOWN_BYTES:
        raise RequestError(
            f"{field} has keys this function ignores that are larger than "
            f"{MAX_UNKNOWN_BYTES} bytes together",
            field=field,
        )
    return {key: item for key, item in value.items() if key in known}


def _record(
    value: object,
    path: tuple[str, ...],
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A JSON object with the ``required`` keys: its known entries (see :func:`known_entries`)."""
    data = _object(value, path)
    for key in required:
        if key not in data:
            raise _refuse((*path, key), "is missing")
    return known_entries(data, (*required, *optional), _field(path))


def _nullable(
    value: object, path: tuple[str, ...], parse: Callable[[object, tuple[str, ...]], T]
) -> T | None:
    return None if value is None else parse(value, path)


def _asset_keys(value: object, path: tuple[str, ...]) -> list[str]:
    if not isinstance(value, list):
        raise _type_error(path, "an array of strings or null", value)
    if not 1 <= len(value) <= MAX_ASSET_KEYS:
        raise _refuse(path, f"must name 1 to {MAX_ASSET_KEYS} assets")
    keys = [_required_string(key, (*path, str(i))) for i, key in enumerate(value)]
    for i, key in enumerate(keys):
        parts = to_asset_key_path(key)
        if len(parts) > MAX_ASSET_KEY_PARTS:
            raise _refuse((*path, str(i)), f"has more than {MAX_ASSET_KEY_PARTS} parts")
        if not all(parts):
            raise _refuse((*path, str(i)), "has an empty part")
    if len(set(keys)) != len(keys):
        raise _refuse(path, "names an asset twice")
    return keys


def _per_asset(
    value: object,
    path: tuple[str, ...],
    asset_keys: list[str] | None,
    parse: Callable[[object, tuple[str, ...]], T],
) -> dict[str, T]:
    mapping = _object(value, path)
    for key in mapping:
        if asset_keys is None or key not in asset_keys:
            raise _refuse(path, "names an asset that is not in asset_keys")
    return {key: parse(item, (*path, key)) for key, item in mapping.items()}


def _code_version(value: object, path: tuple[str, ...]) -> str | None:
    return _string(value, path, nullable=True)


def _provenance(value: object, path: tuple[str, ...]) -> PipesDataProvenance | None:
    if value is None:
        return None
    data = _record(value, path, ("code_version", "input_data_versions", "is_user_provided"))
    versions = _object(data["input_data_versions"], (*path, "input_data_versions"))
    user_provided = data["is_user_provided"]
    if not isinstance(user_provided, bool):
        raise _type_error((*path, "is_user_provided"), "a boolean", user_provided)
    return cast(
        "PipesDataProvenance",
        {
            "code_version": _string(data["code_version"], (*path, "code_version"), nullable=True),
            "input_data_versions": {
                _required_string(key, (*path, "input_data_versions")): _required_string(
                    version, (*path, "input_data_versions")
                )
                for key, version in versions.items()
            },
            "is_user_provided": user_provided,
        },
    )


def _key_range(value: object, path: tuple[str, ...]) -> PipesPartitionKeyRange:
    data = _record(value, path, ("start", "end"))
    return {
        "start": _required_string(data["start"], (*path, "start")),
        "end": _required_string(data["end"], (*path, "end")),
    }


def _timestamp(value: object, path: tuple[str, ...]) -> dt.datetime:
    text = _required_string(value, path)
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise _refuse(path, "is not an ISO 8601 timestamp") from None


def _time_window(value: object, path: tuple[str, ...]) -> PipesTimeWindow:
    data = _record(value, path, ("start", "end"))
    start = _timestamp(data["start"], (*path, "start"))
    end = _timestamp(data["end"], (*path, "end"))
    if (start.tzinfo is None) != (end.tzinfo is None):
        raise _refuse(path, "mixes timestamps with and without a time zone")
    if start > end:
        raise _refuse(path, "starts after it ends")
    return {"start": data["start"], "end": data["end"]}


def _retry_number(value: object, path: tuple[str, ...]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(path, "an integer", value)
    if not 0 <= value <= MAX_RETRY_NUMBER:
        raise _refuse(path, f"must be between 0 and {MAX_RETRY_NUMBER}")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iterative: no recursion limit)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _extras(value: object, path: tuple[str, ...]) -> dict[str, Any]:
    extras = _object(value, path)
    if _deeper_than(extras, MAX_EXTRAS_DEPTH):
        raise _refuse(path, f"is nested deeper than {MAX_EXTRAS_DEPTH} levels")
    if len(json.dumps(extras)) > MAX_EXTRAS_BYTES:
        raise _refuse(path, f"is larger than {MAX_EXTRAS_BYTES} bytes")
    return extras


def _check_partition_scope(
    key: str | None, key_range: PipesPartitionKeyRange | None, window: PipesTimeWindow | None
) -> None:
    """As Dagster sends them: a partition key comes with the range ``key..key``, a time window
    with a range. Otherwise a step would run unpartitioned, or on other partitions than the
    key it names."""
    if key is not None and key_range != {"start": key, "end": key}:
        raise _refuse(("partition_key",), "must come with partition_key_range from it to itself")
    if window is not None and key_range is None:
        raise _refuse(("partition_time_window",), "must come with a partition_key_range")


def validate_context_data(value: object) -> PipesContextData:
    """A copy of the context data built from checked values; RequestError (400) otherwise.

    Every key of :class:`PipesContextData` is in the copy: a missing optional one has its
    :func:`context_defaults` value; keys it does not define are left out.
    """
    optional = tuple(key for key in CONTEXT_KEYS if key not in REQUIRED_CONTEXT_KEYS)
    data = {**context_defaults(), **_record(value, (), REQUIRED_CONTEXT_KEYS, optional)}
    asset_keys = _nullable(data["asset_keys"], ("asset_keys",), _asset_keys)

    def per_asset(key: str, parse: Callable[[object, tuple[str, ...]], T]) -> dict[str, T] | None:
        if data[key] is None:
            return None
        return _per_asset(data[key], (key,), asset_keys, parse)

    partition_key = _string(data["partition_key"], ("partition_key",), nullable=True)
    key_range = _nullable(data["partition_key_range"], ("partition_key_range",), _key_range)
    window = _nullable(data["partition_time_window"], ("partition_time_window",), _time_window)
    _check_partition_scope(partition_key, key_range, window)
    return {
        "asset_keys": asset_keys,
        "code_version_by_asset_key": per_asset("code_version_by_asset_key", _code_version),
        "provenance_by_asset_key": per_asset("provenance_by_asset_key", _provenance),
        "partition_key": partition_key,
        "partition_key_range": key_range,
        "partition_time_window": window,
        "run_id": _required_string(data["run_id"], ("run_id",)),
        "job_name": _string(data["job_name"], ("job_name",), nullable=True),
        "retry_number": _retry_number(data["retry_number"], ("retry_number",)),
        "extras": _extras(data["extras"], ("extras",)),
    }
