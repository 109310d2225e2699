"""JSON as the function reads every byte of a request: strict, so one body has one meaning.

Python's ``json`` module accepts more than JSON: ``NaN`` and ``Infinity``, a repeated key
(the last one silently wins, while another reader may take the first) and ``\\ud800``-style
escapes of lone surrogates, which are not Unicode text and make any later encoding (a file
path, an object name, a log line) fail far from the request. Each is refused here with the
reason, naming the field it was found in.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from gcf_pipes.errors import RequestError

# How much of an attacker's key a refusal quotes.
MAX_QUOTED_CHARS = 64


class StrictJSONError(ValueError):
    """The text is not strict JSON; ``reason`` says why (no input echoed beyond a short key)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def quoted(text: str) -> str:
    """``text`` as a refusal may show it: repr-quoted, at most :data:`MAX_QUOTED_CHARS`."""
    shown = repr(text[:MAX_QUOTED_CHARS])
    return shown + "..." if len(text) > MAX_QUOTED_CHARS else shown


def _no_constant(name: str) -> NoReturn:
    raise StrictJSONError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJSONError(f"the key {quoted(key)} appears twice in one object")
        result[key] = value
    return result


def _is_text(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def loads_strict(text: str) -> object:
    """``json.loads`` refusing ``NaN``/``Infinity`` and repeated keys.

    Raises:
        StrictJSONError: not strict JSON (also for nesting past the recursion limit).
    """
    try:
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError("it is nested too deeply") from None
    except ValueError:  # also an integer longer than Python converts
        raise StrictJSONError("it is not valid JSON") from None


def refuse_lone_surrogates(value: object, field: str) -> None:
    """Refuse (400, ``field``) a value holding a string that is not Unicode text; in an
    object, name the top-level key holding it (``field.key`` unless ``field`` is ``body``)."""
    try:
        if _is_text(value):
            return
    except RecursionError:  # within what ``loads_strict`` took, but the check's frames add up
        raise RequestError(f"{field} is nested too deeply", field=field) from None
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_text(key) and not _is_text(item):
                named = key if field == "body" else f"{field}.{key}"
                _refuse_surrogate(named[: MAX_QUOTED_CHARS * 2])
    _refuse_surrogate(field)


def _refuse_surrogate(field: str) -> NoReturn:
    raise RequestError(
        f"{field} holds an escaped lone surrogate (\\ud800-\\udfff): not Unicode text",
        field=field,
    )
