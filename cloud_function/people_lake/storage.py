"""Where tables live: data-lake URIs (local or ``gs://``), the allow-list, table paths.

A local directory and a ``gs://`` bucket are handled the same way: both are parsed into a
:class:`LakeLocation` (normalised path segments), checked against the allowed roots by whole
segments, and given their delta-rs storage options by :func:`storage_options_for` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gcf_pipes import RequestError

GCS_SCHEME = "gs://"
FILE_SCHEME = "file://"

_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
# One table-path segment from an asset key: no separators, no dot-only or hidden names.
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class LakeLocation:
    """A normalised location: ``gs://<bucket>/<segments>`` or an absolute local path."""

    remote: bool
    segments: tuple[str, ...]  # bucket first when remote; path components when local

    @property
    def uri(self) -> str:
        if self.remote:
            return GCS_SCHEME + "/".join(self.segments)
        return str(Path("/", *self.segments))

    def is_within(self, root: LakeLocation) -> bool:
        """Whether this location is ``root`` or below it (whole segments, same kind)."""
        depth = len(root.segments)
        return self.remote == root.remote and self.segments[:depth] == root.segments

    def joinpath(self, *segments: str) -> LakeLocation:
        return LakeLocation(self.remote, (*self.segments, *segments))


def _refuse(uri: str, reason: str, field: str) -> RequestError:
    return RequestError(f"{field} {uri!r} is not a valid data-lake location: {reason}", field=field)


def parse_lake_uri(uri: str, *, field: str = "dl_bucket") -> LakeLocation:
    """Parse ``gs://bucket[/prefix]``, ``file:///path`` or a local path (made absolute).

    Raises:
        RequestError: (400) another scheme, a bad bucket name, or ``.``/``..`` segments in a
            ``gs://`` URI (local paths are resolved instead, symlinks included).
    """
    text = uri.strip()
    if text.startswith(GCS_SCHEME):
        bucket, _, prefix = text.removeprefix(GCS_SCHEME).partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise _refuse(uri, f"{bucket!r} is not a bucket name", field)
        segments = [part for part in prefix.split("/") if part]
        if any(part in {".", ".."} for part in segments):
            raise _refuse(uri, "'.' and '..' are not allowed in gs:// paths", field)
        return LakeLocation(remote=True, segments=(bucket, *segments))
    if "://" in text and not text.startswith(FILE_SCHEME):
        raise _refuse(uri, "only gs:// URIs and local paths are supported", field)
    if not text.removeprefix(FILE_SCHEME):
        raise _refuse(uri, "the path is empty", field)
    path = Path(text.removeprefix(FILE_SCHEME)).expanduser().resolve()
    return LakeLocation(remote=False, segments=path.parts[1:])


def ensure_allowed(location: LakeLocation, allowed_roots: Iterable[str]) -> None:
    """Refuse (HTTP 403) a location outside every allowed data-lake root."""
    roots = [parse_lake_uri(root, field="ALLOWED_DATA_LAKE_ROOTS") for root in allowed_roots]
    if not any(location.is_within(root) for root in roots):
        allowed = ", ".join(root.uri for root in roots) or "none configured"
        raise RequestError(
            f"writing to {location.uri} is not allowed (allowed data-lake roots: {allowed})",
            field="dl_bucket",
            status=403,
        )


def table_location(lake: LakeLocation, asset_key_path: Sequence[str]) -> LakeLocation:
    """``<lake>/<asset key path>``; every key segment must be a plain name (no ``..``, ``/``)."""
    if not asset_key_path:
        raise RequestError("the asset key is empty", field="asset_key")
    for part in asset_key_path:
        if not _KEY_SEGMENT.fullmatch(part):
            raise RequestError(
                f"asset key part {part!r} is not a valid table path segment "
                "(letters, digits, '_', '-', '.'; not starting with '.' or '-')",
                field="asset_key",
            )
    return lake.joinpath(*asset_key_path)


@dataclass(frozen=True)
class TableRef:
    """A Delta table's URI and the delta-rs storage options to open it with."""

    uri: str
    storage_options: dict[str, str] | None = None

    @property
    def is_local(self) -> bool:
        return not self.uri.startswith(GCS_SCHEME)


def storage_options_for(uri: str, emulator_host: str | None = None) -> dict[str, str] | None:
    """delta-rs storage options for ``uri``: the one place they are built.

    Local paths need none. On ``gs://`` credentials come from the environment (Application
    Default Credentials: the function's service account in the cloud); with an emulator
    host (``STORAGE_EMULATOR_HOST``, local only) requests go there unauthenticated.
    """
    if not uri.startswith(GCS_SCHEME) or not emulator_host:
        return None
    base_url = emulator_host if "://" in emulator_host else f"http://{emulator_host}"
    key = {"gcs_base_url": base_url.rstrip("/"), "disable_oauth": True,
           "client_email": "", "private_key": "", "private_key_id": ""}  # fmt: skip
    return {"google_service_account_key": json.dumps(key), "allow_http": "true"}


def table_ref(location: LakeLocation, emulator_host: str | None = None) -> TableRef:
    return TableRef(location.uri, storage_options_for(location.uri, emulator_host))
