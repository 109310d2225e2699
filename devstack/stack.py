"""Start the real local stack (emulator + function) on free ports: for tests and the bench."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.net import LOOPBACK, free_port
from devstack.readiness import Check, emulator_probe, wait_ready
from devstack.services import (
    FUNCTION_SOURCE,
    ServiceFailed,
    emulator_command,
    function_command,
    running,
)


@dataclass(frozen=True)
class LocalStack:
    """Addresses of a running local stack."""

    emulator_url: str
    function_url: str
    pipes_bucket: str
    data_lake_uri: str
    log_dir: Path

    def function_log(self) -> str:
        return (self.log_dir / "function.log").read_text(errors="replace")


@contextmanager
def local_stack(
    work_dir: Path,
    *,
    pipes_bucket: str = "dagster-pipes-test",
    function_env: Mapping[str, str] | None = None,
    function_source: Path = FUNCTION_SOURCE,
) -> Iterator[LocalStack]:
    """Run the GCS emulator (fake-gcs-server, the Pipes bucket created) and a function (by
    default the people function, served by functions-framework with 8 request threads) until
    the block exits."""
    work_dir.mkdir(parents=True, exist_ok=True)
    emulator_port, function_port = free_port(), free_port()
    emulator_url = f"http://{LOOPBACK}:{emulator_port}"
    lake = work_dir / "lake"
    lake.mkdir(exist_ok=True)
    env = {
        "STORAGE_EMULATOR_HOST": emulator_url,
        "PIPES_BUCKET": pipes_bucket,
        "DATA_LAKE_URI": str(lake),
        "THREADS": "8",
        **(function_env or {}),
    }
    with ExitStack() as stack:
        stack.enter_context(
            running(
                "GCS emulator",
                emulator_command(emulator_port, pipes_bucket, work_dir / "emulator-data"),
                emulator_port,
                log_path=work_dir / "emulator.log",
            )
        )
        _wait_for_bucket(emulator_url, pipes_bucket)
        stack.enter_context(
            running(
                "function",
                function_command(function_port, source=function_source),
                function_port,
                env=env,
                log_path=work_dir / "function.log",
            )
        )
        yield LocalStack(
            emulator_url=emulator_url,
            function_url=f"http://{LOOPBACK}:{function_port}",
            pipes_bucket=pipes_bucket,
            data_lake_uri=str(lake),
            log_dir=work_dir,
        )


def _wait_for_bucket(emulator_url: str, bucket: str) -> None:
    problems = wait_ready(
        [Check("GCS emulator", emulator_url, emulator_probe(emulator_url, bucket))], 30
    )
    if problems:
        raise ServiceFailed("; ".join(problems))
