"""Cloud Storage naming rules the function enforces itself (an emulator may be laxer)."""

from __future__ import annotations

import ipaddress
import re

MAX_KEY_PREFIX_CHARS = 512

_BUCKET_CHARS = re.compile(r"[a-z0-9][a-z0-9._-]*[a-z0-9]")
_KEY_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# "google" and the close misspellings GCS refuses (0 for o, 3 for e, doubled or missing o).
_GOOGLE_LOOKALIKE = re.compile(r"g[o0]{1,3}g[l1][e3]")


def is_bucket_name(name: str) -> bool:
    """Whether ``name`` follows the GCS bucket naming rules.

    3-63 characters (up to 222 when dotted, each dot-separated part 1-63); lowercase letters,
    digits, ``-``, ``_`` and ``.``; starting and ending with a letter or digit; not an IPv4
    address; not starting with ``goog``; no ``google`` or look-alike.
    """
    if not 3 <= len(name) <= 222 or not _BUCKET_CHARS.fullmatch(name):
        return False
    parts = name.split(".")
    if "." not in name and len(name) > 63:
        return False
    if any(not 1 <= len(part) <= 63 for part in parts):
        return False
    if name.startswith("goog") or _GOOGLE_LOOKALIKE.search(name):
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


def is_key_prefix(prefix: str) -> bool:
    """Whether ``prefix`` is a safe Pipes key prefix.

    Segments of ``[A-Za-z0-9._-]`` (never ``.`` or ``..``) joined by single ``/``, no leading
    or trailing ``/``, at most :data:`MAX_KEY_PREFIX_CHARS` characters in all.
    """
    if not 1 <= len(prefix) <= MAX_KEY_PREFIX_CHARS:
        return False
    return all(
        _KEY_PREFIX_SEGMENT.fullmatch(segment) and segment not in {".", ".."}
        for segment in prefix.split("/")
    )
