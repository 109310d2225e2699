"""Start the real local stack (emulator + function) on free ports: for tests and the bench."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from devstack.net import LOOPBACK, free_port
from devstack.readiness import Check, emulator_probe, wait_ready
from devstack.services import (
    BIN,
    FUNCTION_SOURCE,
    ServiceFailed,
    adapter_command,
    emulator_command,
    function_command,
    running,
)

if TYPE_CHECKING:
    from devstack.lakes import Lake

GS_LAKE_BUCKET = "people-lake-test"


@dataclass(frozen=True)
class LocalStack:
    """Addresses of a running local stack."""

    emulator_url: str  # the XML-API adapter, which passes the JSON API through
    function_url: str
    pipes_bucket: str
    data_lake_uri: str  # the function's default lake (gs_lake_uri unless gs_lake=False)
    log_dir: Path
    directory_lake: str = ""
    gs_lake_uri: str = ""  # gs://<lake bucket>/lake in the emulator; always allowed too

    def function_log(self) -> str:
        return (self.log_dir / "function.log").read_text(errors="replace")

    def fresh_lake(self, kind: Literal["gs", "directory"] | None = None) -> Lake:
        """A new, empty lake root under an allowed root: of the stack's default kind, or
        ``kind`` (a directory is created; a ``gs://`` prefix needs nothing)."""
        from devstack.lakes import Lake  # (deltalake and polars: only where a test reads)

        name = f"lake-{uuid.uuid4().hex[:8]}"
        default = "gs" if self.data_lake_uri == self.gs_lake_uri else "directory"
        if (kind or default) == "gs":
            return Lake(f"{self.gs_lake_uri}/{name}", self.emulator_url)
        path = Path(self.directory_lake) / name
        path.mkdir()
        return Lake(str(path), self.emulator_url)


@contextmanager
def local_stack(
    work_dir: Path,
    *,
    pipes_bucket: str = "dagster-pipes-test",
    function_env: Mapping[str, str] | None = None,
    function_source: Path = FUNCTION_SOURCE,
    function_bin: Path = BIN,
    gs_lake: bool = True,
) -> Iterator[LocalStack]:
    """Run the GCS emulator (fake-gcs-server behind the XML-API adapter, the Pipes and lake
    buckets created) and a function (by default the people function, served by
    functions-framework with 8 request threads) until the block exits.

    The function may write to both lakes, ``gs://<lake bucket>/lake`` and a directory; the
    ``gs://`` one is its default (``DATA_LAKE_URI``), as in the cloud, unless ``gs_lake`` is
    False (for what only a directory lake has: symlinks, local paths). ``function_bin``
    is the bin directory of the venv whose functions-framework serves the function.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    emulator_port, adapter_port, function_port = free_port(), free_port(), free_port()
    emulator_url = f"http://{LOOPBACK}:{adapter_port}"
    lake = work_dir / "lake"
    lake.mkdir(exist_ok=True)
    emulator_data = work_dir / "emulator-data"  # its objects, and the adapter's log
    emulator_data.mkdir(exist_ok=True)
    gs_lake_uri = f"gs://{GS_LAKE_BUCKET}/lake"
    default_lake = gs_lake_uri if gs_lake else str(lake)
    env = {
        "STORAGE_EMULATOR_HOST": emulator_url,
        "PIPES_BUCKET": pipes_bucket,
        "DATA_LAKE_URI": default_lake,
        "ALLOWED_DATA_LAKE_ROOTS": f"{lake},{gs_lake_uri}",
        "THREADS": "8",
        **(function_env or {}),
    }
    with ExitStack() as stack:
        stack.enter_context(
            running(
                "GCS emulator",
                emulator_command(emulator_port, emulator_url, emulator_data / "objects"),
                emulator_port,
                log_path=work_dir / "emulator.log",
            )
        )
        stack.enter_context(
            running(
                "GCS XML-API adapter",
                adapter_command(
                    adapter_port, f"http://{LOOPBACK}:{emulator_port}",
                    [pipes_bucket, GS_LAKE_BUCKET],
                ),
                adapter_port,
                log_path=emulator_data / "adapter.log",
            )
        )  # fmt: skip
        _wait_for_bucket(emulator_url, pipes_bucket)
        stack.enter_context(
            running(
                "function",
                function_command(function_port, source=function_source, bin_dir=function_bin),
                function_port,
                env=env,
                log_path=work_dir / "function.log",
            )
        )
        yield LocalStack(
            emulator_url=emulator_url,
            function_url=f"http://{LOOPBACK}:{function_port}",
            pipes_bucket=pipes_bucket,
            data_lake_uri=default_lake,
            log_dir=work_dir,
            directory_lake=str(lake),
            gs_lake_uri=gs_lake_uri,
        )


def _wait_for_bucket(emulator_url: str, bucket: str) -> None:
    problems = wait_ready(
        [Check("GCS emulator", emulator_url, emulator_probe(emulator_url, bucket))], 30
    )
    if problems:
        raise ServiceFailed("; ".join(problems))
