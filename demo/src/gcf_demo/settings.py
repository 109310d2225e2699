"""The demo code location's configuration: every environment variable it reads is read here.

Values come from the process environment, then from ``.env`` at the repository root
(``just cloud-env`` writes one for a deployed function); the defaults are the local stack.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dotenv import load_dotenv

from dagster_pipes_gcf.auth import needs_id_token

REPO_ROOT = Path(__file__).resolve().parents[3]

LOCAL_DEFAULTS = {
    "CLOUD_FUNCTION_URL": "http://127.0.0.1:8080",
    "PIPES_BUCKET": "dagster-pipes-local",
    "DATA_LAKE_URI": "gs://data-lake-local/lake",
    "GOOGLE_IMPERSONATE_SERVICE_ACCOUNT": "",
    "CLOUD_FUNCTION_AUDIENCE": "",
    "CLOUD_FUNCTION_PROJECT": "",
}


def _resolve_lake(uri: str) -> str:
    """Local lake paths are made absolute (the function may run from another directory)."""
    if "://" in uri:
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else (REPO_ROOT / path).resolve())


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo asset's function runs, where Pipes messages go, where the lake is."""

    function_url: str
    pipes_bucket: str
    data_lake_uri: str
    impersonate_service_account: str | None = None
    function_audience: str | None = None  # ID-token audience; derived from the URL if unset
    function_project: str | None = None  # for Cloud Logging links; run.app URLs lack it

    @classmethod
    def from_env(cls, env_file: Path | None = REPO_ROOT / ".env") -> DemoSettings:
        if env_file is not None and env_file.is_file():
            load_dotenv(env_file, override=False)

        def get(name: str) -> str:
            return os.environ.get(name) or LOCAL_DEFAULTS[name]

        return cls(
            function_url=get("CLOUD_FUNCTION_URL"),
            pipes_bucket=get("PIPES_BUCKET"),
            data_lake_uri=_resolve_lake(get("DATA_LAKE_URI")),
            impersonate_service_account=get("GOOGLE_IMPERSONATE_SERVICE_ACCOUNT") or None,
            function_audience=get("CLOUD_FUNCTION_AUDIENCE") or None,
            function_project=get("CLOUD_FUNCTION_PROJECT") or None,
        )

    def emulator_mismatch(self) -> str | None:
        """What is wrong when the function is deployed but ``STORAGE_EMULATOR_HOST`` is set
        (the function writes Pipes messages to real GCS, Dagster would read the emulator)."""
        emulator = os.environ.get("STORAGE_EMULATOR_HOST")
        if not emulator or not needs_id_token(self.function_url):
            return None
        return (
            f"CLOUD_FUNCTION_URL ({self.function_url}) is a deployed function but "
            f"STORAGE_EMULATOR_HOST={emulator} is set: the function writes its Pipes messages "
            "to real GCS while Dagster would read them from the local emulator"
        )
