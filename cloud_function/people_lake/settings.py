"""The function's configuration: every environment variable it reads is read here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# Names of the environment variables the function reads (Terraform sets each one).
DATA_LAKE_URI_VAR = "DATA_LAKE_URI"
# Comma-separated data-lake roots the function may write under; unset: DATA_LAKE_URI only.
ALLOWED_DATA_LAKE_ROOTS_VAR = "ALLOWED_DATA_LAKE_ROOTS"
# Read by functions-framework's gunicorn: request threads per instance (= Cloud Run concurrency).
THREADS_VAR = "THREADS"

FUNCTION_ENV_VARS = (DATA_LAKE_URI_VAR, ALLOWED_DATA_LAKE_ROOTS_VAR, THREADS_VAR)
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
    """

    data_lake_uri: str | None
    allowed_roots: tuple[str, ...] = ()
    storage_emulator_host: str | None = None

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
        )
