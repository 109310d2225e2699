"""Where tables live: data-lake URIs (local or ``gs://``), the allow-list, table paths.

A local directory and a ``gs://`` bucket are handled the same way: both are parsed into a
canonical :class:`LakeLocation` (path segments; locally with symlinks resolved), the *table*
location is checked against the allowed roots by whole segments, and delta-rs gets its
storage options from :func:`storage_options_for` only. The same check guards reads and writes.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.cloud import storage

from gcf_pipes import RequestError
from gcf_pipes.gcs_names import is_bucket_name

GCS_SCHEME = "gs://"
FILE_SCHEME = "file://"
MAX_LAKE_URI_CHARS = 1024
# A file or directory name (Linux NAME_MAX); one segment of a lake URI.
MAX_SEGMENT_BYTES = 255
# A table's path (gs://: its object prefix), leaving room for the names of the files in it:
# Cloud Storage object names are at most 1024 bytes, local paths at most 4096.
MAX_TABLE_PATH_BYTES = 896
DELTA_LOG = "_delta_log"

# Refused anywhere in a lake URI: percent-escapes (delta-rs decodes them, so "%2e%2e" would
# become ".." after every check), backslashes, URL delimiters and control characters.
_UNSAFE_CHARS = re.compile(r"[%\\?#\x00-\x1f\x7f]")
# Also refused: characters that are not visible text (control, format such as bidi overrides
# and zero-width, lone surrogates, private use, unassigned, line and paragraph separators).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_DOT_SEGMENTS = frozenset({".", ".."})
_FOLDS_TO_SEPARATOR = re.compile(r"[/\\%]")  # in a segment: only after an NFKC fold
# One table-path segment from an asset key: no separators, no dot-only or hidden names.
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class LakeLocation:
    """A canonical location: ``gs://<bucket>/<segments>`` or an absolute local path with
    every symlink along it resolved."""

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
        if self.remote:
            return LakeLocation(True, (*self.segments, *segments))
        return _local(Path(self.uri, *segments))


def _local(path: Path) -> LakeLocation:
    return LakeLocation(remote=False, segments=path.resolve().parts[1:])


def _refuse(reason: str, field: str) -> RequestError:
    # The value is not echoed: a refusal never shows a path.
    return RequestError(f"{field} is not a valid data-lake location: {reason}", field=field)


def parse_lake_uri(uri: str, *, field: str = "dl_bucket") -> LakeLocation:
    """Parse ``gs://bucket[/prefix]``, ``file:///path`` or a local path into its canonical form.

    Local paths are made absolute with every existing symlink resolved.

    Raises:
        RequestError: (400) another scheme, a bad bucket name, ``.``/``..`` segments, or a
            ``%``, ``\\``, ``?``, ``#`` or control character anywhere.
    """
    text = uri.strip()
    if len(text) > MAX_LAKE_URI_CHARS:
        raise _refuse(f"longer than {MAX_LAKE_URI_CHARS} characters", field)
    if _UNSAFE_CHARS.search(text) or any(
        unicodedata.category(char) in _UNSAFE_CATEGORIES for char in text
    ):
        raise _refuse(
            "percent-escapes, backslashes, '?', '#', control characters and invisible "
            "characters are not accepted",
            field,
        )
    if text.startswith(GCS_SCHEME):
        bucket, _, prefix = text.removeprefix(GCS_SCHEME).partition("/")
        if not is_bucket_name(bucket):
            raise _refuse("not a valid Cloud Storage bucket name", field)
        segments = [part for part in prefix.split("/") if part]
        _check_segments(segments, field)
        return LakeLocation(remote=True, segments=(bucket, *segments))
    if "://" in text and not text.startswith(FILE_SCHEME):
        raise _refuse("only gs:// URIs and local paths are supported", field)
    path = text.removeprefix(FILE_SCHEME)
    if not path.startswith("/"):  # relative to wherever the server runs, or a file:// host
        raise _refuse("a local path must be absolute (and a file URI names no host)", field)
    _check_segments(path.split("/"), field)
    return _local(Path(path))


def _check_segments(segments: Iterable[str], field: str) -> None:
    """No ``.``/``..`` (also as look-alikes that NFKC folds to them, e.g. fullwidth dots, or
    to a separator or escape: fullwidth solidus, reverse solidus or percent), no Delta log
    directory (a table there would write into another table's log), no segment longer than a
    file name may be."""
    for segment in segments:
        folded = unicodedata.normalize("NFKC", segment)
        if folded in _DOT_SEGMENTS or _FOLDS_TO_SEPARATOR.search(folded):
            raise _refuse("'.' and '..' segments are not accepted", field)
        if segment == DELTA_LOG:
            raise _refuse(f"a {DELTA_LOG} segment is another table's log", field)
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise _refuse(f"a segment is longer than {MAX_SEGMENT_BYTES} bytes", field)


def _found_below(directory: Path) -> str | None:
    """What under ``directory`` makes it no place for a table (links are never followed): a
    symbolic link, or another table (a Delta log deeper than the table's own)."""
    pending = [(directory, 0)]
    while pending:
        current, depth = pending.pop()
        try:
            entries = list(os.scandir(current))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if entry.is_symlink():
                return "a symbolic link, which could lead out of the allowed data-lake roots"
            if entry.name == DELTA_LOG and depth > 0:
                return "another Delta table"
            if entry.is_dir(follow_symlinks=False):
                pending.append((Path(entry.path), depth + 1))
    return None


def _check_local_table_path(table: Path) -> None:
    """Locally, the table directory can be made (no file on its way), is not inside another
    table (whose files a vacuum would take for its own) and holds no link or other table."""
    existing = next(path for path in (table, *table.parents) if path.exists())
    if not existing.is_dir():
        raise RequestError(
            "dl_bucket is not a valid data-lake location: a file is in the way of the table path",
            field="dl_bucket",
        )
    if any(os.path.lexists(parent / DELTA_LOG) for parent in table.parents):
        raise RequestError(
            "dl_bucket is not allowed: the table location is inside another Delta table",
            field="dl_bucket",
            status=403,
        )
    if (found := _found_below(table)) is not None:
        raise RequestError(
            f"dl_bucket is not allowed: the table directory contains {found}",
            field="dl_bucket",
            status=403,
        )


def ensure_allowed(location: LakeLocation, allowed_roots: Iterable[str]) -> None:
    """Refuse (HTTP 403) a table location outside every allowed data-lake root.

    ``location`` is canonical (symlinks along a local path resolved), so the check holds for
    what is really read and written. Below a local table nothing may be a symlink: delta-rs
    would follow one out of the lake (a ``_delta_log`` or partition directory elsewhere).
    Locally a link created between this check and the write is not caught; GCS has no links.
    A table inside another (or around one) is refused locally, like a link as of this check
    (a racing request's table made in between is not caught); on ``gs://`` see
    :func:`check_remote_table_path`.
    """
    roots = [parse_lake_uri(root, field="ALLOWED_DATA_LAKE_ROOTS") for root in allowed_roots]
    if not any(location.is_within(root) for root in roots):
        raise RequestError(
            "dl_bucket is not allowed: the table location is outside the function's allowed "
            "data-lake roots",
            field="dl_bucket",
            status=403,
        )
    if not location.remote:
        _check_local_table_path(Path(location.uri))


@functools.cache
def lake_storage_client() -> storage.Client:
    """One client per instance for looking at ``gs://`` lakes (the runtime's credentials)."""
    return storage.Client()


def _holds_objects(client: storage.Client, bucket: str, prefix: str) -> bool:
    return any(True for _ in client.list_blobs(bucket, prefix=prefix, max_results=1))


def check_remote_table_path(location: LakeLocation, client: storage.Client) -> None:
    """On ``gs://``, a table about to be created is neither inside another table (whose
    files a vacuum would take for its own) nor around anything: its prefix must be empty.

    Checked only while the table does not exist (one listing per request otherwise): a
    table the function made was checked when it was made. GCS has no links, so unlike a
    local lake nothing can be redirected after the check; a racing request's table made
    in between is not caught, as locally.
    """
    bucket, *parts = location.segments
    table_prefix = "/".join(parts)
    if _holds_objects(client, bucket, f"{table_prefix}/{DELTA_LOG}/"):
        return  # the table exists
    for depth in range(len(parts)):
        ancestor = "".join(f"{part}/" for part in parts[:depth])
        if _holds_objects(client, bucket, f"{ancestor}{DELTA_LOG}/"):
            raise RequestError(
                "dl_bucket is not allowed: the table location is inside another Delta table",
                field="dl_bucket",
                status=403,
            )
    if _holds_objects(client, bucket, f"{table_prefix}/"):
        if _holds_objects(client, bucket, f"{table_prefix}/{DELTA_LOG}/"):
            return  # a racing copy of this request created the table meanwhile
        raise RequestError(
            "dl_bucket is not allowed: the new table's location already holds objects "
            "(possibly another Delta table)",
            field="dl_bucket",
            status=403,
        )


def table_location(lake: LakeLocation, asset_key_path: Sequence[str]) -> LakeLocation:
    """``<lake>/<asset key path>``, canonical; every key part must be a plain name."""
    if not asset_key_path:
        raise RequestError("the asset key is empty", field="asset_key")
    for part in asset_key_path:
        if not _KEY_SEGMENT.fullmatch(part) or part == DELTA_LOG:
            raise RequestError(
                "an asset key part is not a valid table path segment (letters, digits, '_', "
                f"'-', '.'; not starting with '.' or '-'; at most 128; not {DELTA_LOG})",
                field="asset_key",
            )
    table = lake.joinpath(*asset_key_path)
    path = "/".join(table.segments[1:] if table.remote else ("", *table.segments))
    if len(path.encode()) > MAX_TABLE_PATH_BYTES:
        field = "dl_bucket" if len(lake.uri.encode()) > MAX_TABLE_PATH_BYTES else "asset_key"
        raise RequestError(
            f"the table path (data-lake location and asset key) is longer than "
            f"{MAX_TABLE_PATH_BYTES} bytes",
            field=field,
        )
    return table


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
