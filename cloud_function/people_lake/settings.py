"""The function's configuration: every environment variable it reads is read here."""

from __future__ import annotations

import os
from dataclasses import dataclass

# Names of the environment variables the function reads (Terraform sets each one).
DATA_LAKE_URI_VAR = "DATA_LAKE_URI"
# Read by functions-framework's gunicorn: request threads per instance (= Cloud Run concurrency).
THREADS_VAR = "THREADS"

FUNCTION_ENV_VARS = (DATA_LAKE_URI_VAR, THREADS_VAR)


@dataclass(frozen=True)
class FunctionSettings:
    """Runtime settings of the people function.

    Attributes:
        data_lake_uri: default data-lake root when the request has no ``dl_bucket``:
            ``gs://bucket[/prefix]`` in the cloud, a local directory when run locally.
    """

    data_lake_uri: str | None

    @classmethod
    def from_env(cls) -> FunctionSettings:
        return cls(data_lake_uri=os.environ.get(DATA_LAKE_URI_VAR) or None)
