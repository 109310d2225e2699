"""The function's configuration: every environment variable it reads is read here."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from gcf_pipes import RequestError
from gcf_pipes.gcs_names import is_bucket_name
from people_lake.storage import parse_lake_uri

# Names of the environment variables the function reads (Terraform sets each one).
DATA_LAKE_URI_VAR = "DATA_LAKE_URI"
# Comma-separated data-lake roots the function may write under; unset: DATA_LAKE_URI only.
ALLOWED_DATA_LAKE_ROOTS_VAR = "ALLOWED_DATA_LAKE_ROOTS"
# The only bucket the function writes Pipes messages to (requests naming another get 403).
PIPES_BUCKET_VAR = "PIPES_BUCKET"
# Read by functions-framework's gunicorn: request threads per instance (= Cloud Run concurrency).
THREADS_VAR = "THREADS"
# The function's project (Terraform: var.project_id), for trace names in structured log lines.
GOOGLE_CLOUD_PROJECT_VAR = "GOOGLE_CLOUD_PROJECT"
# Most rows one request may write (num_rows x days); sized with the instance memory.
MAX_ROWS_PER_REQUEST_VAR = "MAX_ROWS_PER_REQUEST"
DEFAULT_MAX_ROWS_PER_REQUEST = 5_000_000
# The platform's request timeout in seconds (Terraform: the function's timeout_seconds). The
# function stops at its next check once this minus the margin has passed; unset: no deadline.
FUNCTION_TIMEOUT_S_VAR = "FUNCTION_TIMEOUT_S"

FUNCTION_ENV_VARS = (
    DATA_LAKE_URI_VAR,
    ALLOWED_DATA_LAKE_ROOTS_VAR,
    PIPES_BUCKET_VAR,
    THREADS_VAR,
    GOOGLE_CLOUD_PROJECT_VAR,
    MAX_ROWS_PER_REQUEST_VAR,
    FUNCTION_TIMEOUT_S_VAR,
)
# Optional (not set by Terraform): seconds the deadline leaves before the platform's timeout,
# for the commit in progress and the last Pipes messages. Default: 10% of it, at most 30 s.
FUNCTION_DEADLINE_MARGIN_S_VAR = "FUNCTION_DEADLINE_MARGIN_S"
MAX_DEFAULT_DEADLINE_MARGIN_S = 30.0
# Set by the platform (Cloud Run): the revision serving the request, reported to the caller.
K_REVISION_VAR = "K_REVISION"
# Local development only (never set by Terraform): delta-rs then sends gs:// requests there.
STORAGE_EMULATOR_HOST_VAR = "STORAGE_EMULATOR_HOST"


@dataclass(frozen=True)
class FunctionSettings:
    """Runtime settings of the people function.

    Attributes:
        data_lake_uri: default data-lake root when the request has no ``dl_bucket``:
            ``gs://bucket[/prefix]`` in the cloud, a local directory when run locally.
        allowed_roots: the only data-lake roots (and their sub-paths) the function writes
            to; empty means every write is refused.
        storage_emulator_host: GCS emulator for ``gs://`` tables (local development).
        pipes_bucket: the bucket Pipes messages go to; unset, every request is refused.
        project: the function's project, naming the trace of its structured log lines.
        revision: the platform's name for the revision serving requests (unset locally).
        max_rows_per_request: most rows one request writes (``num_rows`` x days).
        function_timeout_s: the platform's request timeout; None: requests have no deadline.
        deadline_margin_s: how long before that timeout a request stops at its next check;
            None: 10% of the timeout, at most 30 s.
    """

    data_lake_uri: str | None
    allowed_roots: tuple[str, ...] = ()
    storage_emulator_host: str | None = None
    pipes_bucket: str | None = None
    project: str | None = None
    revision: str | None = None
    max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST
    function_timeout_s: float | None = None
    deadline_margin_s: float | None = None

    @property
    def request_deadline_s(self) -> float | None:
        """Seconds a request may run before its checks stop it (timeout minus margin)."""
        if self.function_timeout_s is None:
            return None
        margin = self.deadline_margin_s
        if margin is None:
            margin = min(MAX_DEFAULT_DEADLINE_MARGIN_S, self.function_timeout_s / 10)
        return self.function_timeout_s - margin

    def __post_init__(self) -> None:
        lakes = ((DATA_LAKE_URI_VAR, self.data_lake_uri),) if self.data_lake_uri else ()
        for name, uri in (*lakes, *((ALLOWED_DATA_LAKE_ROOTS_VAR, r) for r in self.allowed_roots)):
            try:  # the rules a request's dl_bucket is held to, so no request is refused for them
                parse_lake_uri(uri, field=name)
            except RequestError as exc:
                raise ValueError(exc.message) from None
        if self.pipes_bucket is not None and not is_bucket_name(self.pipes_bucket):
            raise ValueError(f"{PIPES_BUCKET_VAR} is not a valid Cloud Storage bucket name")
        if self.max_rows_per_request < 1:
            raise ValueError(f"{MAX_ROWS_PER_REQUEST_VAR} must be a positive whole number")
        self._check_deadline()

    def _check_deadline(self) -> None:
        timeout, margin = self.function_timeout_s, self.deadline_margin_s
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"{FUNCTION_TIMEOUT_S_VAR} must be a positive number of seconds")
        if margin is None:
            return
        if timeout is None:
            raise ValueError(f"{FUNCTION_DEADLINE_MARGIN_S_VAR} needs {FUNCTION_TIMEOUT_S_VAR}")
        if not (math.isfinite(margin) and 0 <= margin < timeout):
            raise ValueError(
                f"{FUNCTION_DEADLINE_MARGIN_S_VAR} must be at least 0 and less than "
                f"{FUNCTION_TIMEOUT_S_VAR} ({timeout:g})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FunctionSettings:
        env = os.environ if environ is None else environ
        lake = env.get(DATA_LAKE_URI_VAR, "").strip() or None
        roots = tuple(root.strip() for root in env.get(ALLOWED_DATA_LAKE_ROOTS_VAR, "").split(","))
        allowed = tuple(root for root in roots if root) or ((lake,) if lake else ())
        return cls(
            data_lake_uri=lake,
            allowed_roots=allowed,
            storage_emulator_host=env.get(STORAGE_EMULATOR_HOST_VAR, "").strip() or None,
            pipes_bucket=env.get(PIPES_BUCKET_VAR, "").strip() or None,
            project=env.get(GOOGLE_CLOUD_PROJECT_VAR, "").strip() or None,
            revision=env.get(K_REVISION_VAR, "").strip() or None,
            max_rows_per_request=_whole_number(
                env, MAX_ROWS_PER_REQUEST_VAR, DEFAULT_MAX_ROWS_PER_REQUEST
            ),
            function_timeout_s=_seconds(env, FUNCTION_TIMEOUT_S_VAR),
            deadline_margin_s=_seconds(env, FUNCTION_DEADLINE_MARGIN_S_VAR),
        )


def _whole_number(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{name} must be a positive whole number")
    return int(text)


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    text = env.get(name, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {text[:40]!r}") from None
