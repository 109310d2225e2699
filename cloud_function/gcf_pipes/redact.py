"""Environment values never leave the function in an error report.

A crash is reported to the caller (HTTP 500 body) and to Dagster (the ``closed`` message) with
its type, message and traceback; this replaces every environment value in them with the
variable's name, e.g. ``${DATA_LAKE_URI}``. Values shorter than :data:`MIN_REDACTED_CHARS`
(``8``, ``main``, ``true``) are left alone: replacing them would garble every report and
hide nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

MIN_REDACTED_CHARS = 6


@dataclass(frozen=True)
class Redactor:
    """Replaces known secret-or-internal values in text and JSON-like structures."""

    replacements: tuple[tuple[str, str], ...] = ()  # (value, placeholder), longest value first

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Redactor:
        env = os.environ if environ is None else environ
        placeholders = {
            value: f"${{{name}}}"
            for name, value in sorted(env.items())
            if len(value) >= MIN_REDACTED_CHARS
        }
        ordered = sorted(placeholders.items(), key=lambda pair: len(pair[0]), reverse=True)
        return cls(tuple(ordered))

    def text(self, text: str) -> str:
        for value, placeholder in self.replacements:
            if value in text:
                text = text.replace(value, placeholder)
        return text

    def json(self, value: object) -> object:
        """``value`` with every string in it (keys included) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(key)): self.json(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(item) for item in value]
        return value
