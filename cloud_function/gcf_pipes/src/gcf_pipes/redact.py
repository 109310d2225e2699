"""Environment values never leave the function in an error report.

A crash is reported to the caller (HTTP 500 body) and to Dagster (the ``closed`` message) with
its type, message and traceback; this replaces environment values in them with the variable's
name, e.g. ``${DATA_LAKE_URI}``. The rule:

- Every variable counts except the platform's public identifiers of the serving function
  (:data:`PUBLIC_VARS`: the service and revision names, the entry point, the port; the
  revision is in every JSON answer anyway).
- A value is looked for whole, as each part of a comma-separated list
  (``ALLOWED_DATA_LAKE_ROOTS="gs://a,gs://b"``), and for a URL also as its host alone: the
  bare bucket of ``gs://bucket/lake``, the host of ``http://host:port``.
- Each of these is also looked for as it appears escaped: inside a JSON string (ASCII or
  not), inside a Python ``repr``, URL-quoted, and those escaped once more.
- A *specific* value (at least :data:`MIN_REDACTED_CHARS` characters and not a plain word or
  number) is replaced wherever it occurs. A plain word or number (``people``, ``8``,
  ``noninteractive``) is left alone: replacing it would garble every report and hide nothing.
  Except for a variable whose name says it names a resource or a secret
  (:data:`RESOURCE_NAME`: ``PIPES_BUCKET=pipes``): then any value of at least
  :data:`MIN_RESOURCE_CHARS` characters is replaced where it stands as a whole token (``pipes``
  in ``gs://pipes/x``, not in ``dagster-pipes``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

MIN_REDACTED_CHARS = 6
MIN_RESOURCE_CHARS = 3  # the shortest GCS bucket name
PUBLIC_VARS = frozenset(
    {
        "K_SERVICE",
        "K_REVISION",
        "K_CONFIGURATION",
        "FUNCTION_TARGET",
        "FUNCTION_SIGNATURE_TYPE",
        "PORT",
    }
)
RESOURCE_NAME = re.compile(
    r"BUCKET|URI|URL|ROOT|PROJECT|HOST|ACCOUNT|SECRET|TOKEN|PASSWORD|PASSWD|KEY|CREDENTIAL|DSN"
)
_TOKEN_CHAR = "A-Za-z0-9_-"  # characters that continue a token: a match may not border one


def _json_ascii(value: str) -> str:
    return json.dumps(value)[1:-1]


def _json_unicode(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _repr(value: str) -> str:
    return repr(value)[1:-1]


def _url_quoted(value: str) -> str:
    return quote(value, safe="")


_ESCAPES: tuple[Callable[[str], str], ...] = (_json_ascii, _json_unicode, _repr, _url_quoted)


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret-or-internal values in text and JSON-like structures."""

    pattern: re.Pattern[str] | None = None
    placeholders: Mapping[str, str] = field(default_factory=dict)  # matched text -> ${NAME}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        return _redactor(tuple(sorted(env.items())))

    def text(self, text: str) -> str:
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda match: self.placeholders[match.group()], text)

    def json(self, value: object) -> object:
        """``value`` with every string in it (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(key)): self.json(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(item) for item in value]
        return value


@functools.lru_cache(maxsize=8)
def _redactor(environ: tuple[tuple[str, str], ...]) -> Redactor:
    placeholders: dict[str, str] = {}
    anywhere: dict[str, bool] = {}
    for name, value in environ:
        if name in PUBLIC_VARS:
            continue
        for form, specific in _forms(name, value):
            placeholders.setdefault(form, f"${{{name}}}")
            anywhere[form] = anywhere.get(form, False) or specific
    if not placeholders:
        return Redactor()
    longest_first = sorted(placeholders, key=len, reverse=True)
    pattern = "|".join(_alternative(form, anywhere[form]) for form in longest_first)
    return Redactor(re.compile(pattern), placeholders)


def _forms(name: str, value: str) -> Iterator[tuple[str, bool]]:
    """Each text to replace for ``name=value``, and whether it is specific (see the module)."""
    resource = RESOURCE_NAME.search(name.upper()) is not None
    for candidate in _candidates(value):
        specific = len(candidate) >= MIN_REDACTED_CHARS and not (
            candidate.isalpha() or candidate.isdigit()
        )
        if specific or (resource and len(candidate) >= MIN_RESOURCE_CHARS):
            for form in _escaped(candidate):
                yield form, specific


def _candidates(value: str) -> set[str]:
    parts = {value.strip(), *(part.strip() for part in value.split(","))}
    hosts = set()
    for part in parts:
        if "://" in part:
            try:
                split = urlsplit(part)
                hosts |= {split.netloc, split.hostname or ""}
            except ValueError:  # not a URL after all: the part itself is still looked for
                continue
    return {candidate for candidate in parts | hosts if candidate}


def _escaped(value: str) -> set[str]:
    forms = {value}
    for _ in range(2):  # escaped, and escaped once more (a repr inside a JSON string)
        forms |= {escape(form) for form in forms for escape in _ESCAPES}
    return forms


def _alternative(form: str, anywhere: bool) -> str:
    escaped = re.escape(form)
    if anywhere:
        return escaped
    before = rf"(?<![{_TOKEN_CHAR}])" if re.match(rf"[{_TOKEN_CHAR}]", form[0]) else ""
    after = rf"(?![{_TOKEN_CHAR}])" if re.match(rf"[{_TOKEN_CHAR}]", form[-1]) else ""
    return f"{before}{escaped}{after}"
