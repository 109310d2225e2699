"""``python -m devstack up|fn|emulator``: the local stack behind ``just dd``.

Processes run under honcho (prefixed, coloured output; one stops, all stop; Ctrl-C stops
every process it started). Before anything starts, each port is checked; a ``ready`` step
waits until every service answers and prints where each one listens. When a service exits
on its own (say, the function fails to import), its last output is repeated with a hint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import webbrowser
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from devstack.dagster_dev import LOCAL_THREADS
from devstack.net import LOOPBACK, free_port, port_is_free, url_port
from devstack.readiness import (
    Check,
    banner,
    dagster_probe,
    emulator_probe,
    port_probe,
    wait_ready,
)
from devstack.services import (
    EMULATOR_DATA,
    FUNCTION_SOURCE,
    REPO_ROOT,
    adapter_command,
    dagster_command,
    emulator_command,
    function_command,
    lake_bucket,
)
from devstack.supervise import run_processes

DEFAULT_DAGSTER_PORT = 3000
DEFAULT_EMULATOR_PORT, DEFAULT_FUNCTION_PORT = 9023, 8080
DEFAULT_EMULATOR = f"http://{LOOPBACK}:{DEFAULT_EMULATOR_PORT}"
EMULATOR_DATA_VAR = "EMULATOR_DATA_DIR"  # where the emulator keeps objects (.data/gcs)
READY_CHECKED = ("emulator", "function", "dagster")  # fake-gcs: checked through the emulator
READY_TIMEOUT = float(os.environ.get("DEVSTACK_READY_TIMEOUT", "180"))


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    port: int
    url: str


class ConfigError(Exception):
    """The environment describes a stack that cannot work; the message says how to fix it."""


def ensure_env_file() -> None:
    """First run: create ``.env`` from ``.env.example`` (local-stack defaults)."""
    env_file, example = REPO_ROOT / ".env", REPO_ROOT / ".env.example"
    if not env_file.exists() and example.exists():
        shutil.copyfile(example, env_file)
        print("devstack: created .env from .env.example (local stack defaults)")


def plan(
    which: Sequence[str], dagster_port: int | None = None
) -> tuple[list[Service], dict[str, str]]:
    """The services to start and the environment they share (env vars win over ``.env``)."""
    from dagster_pipes_gcf import needs_id_token
    from gcf_demo.settings import DemoSettings

    settings = DemoSettings.from_env()  # also loads .env into os.environ (no override)
    env = {"DATA_LAKE_URI": settings.data_lake_uri, "PIPES_BUCKET": settings.pipes_bucket}
    services: list[Service] = []
    local_function = not needs_id_token(settings.function_url)
    mismatch = settings.emulator_mismatch()
    if mismatch and "function" in which:
        raise ConfigError(
            f"{mismatch}. Remove STORAGE_EMULATOR_HOST from .env and your shell (`just "
            "cloud-env` writes a .env without it), or set "
            "CLOUD_FUNCTION_URL=http://127.0.0.1:8080 for the local stack."
        )
    if "emulator" in which:
        if not local_function:
            print("devstack: CLOUD_FUNCTION_URL is a deployed function; not starting the emulator")
        else:
            emulator = os.environ.get("STORAGE_EMULATOR_HOST") or DEFAULT_EMULATOR
            env["STORAGE_EMULATOR_HOST"] = emulator
            services += emulator_services(emulator, settings.pipes_bucket, settings.data_lake_uri)
    if "function" in which:
        if local_function:
            port = url_port(settings.function_url, DEFAULT_FUNCTION_PORT)
            env["THREADS"] = os.environ.get("THREADS", str(LOCAL_THREADS))
            source = os.environ.get("FUNCTION_SOURCE") or str(FUNCTION_SOURCE)
            command = function_command(port, source=source)
            services.append(Service("function", command, port, settings.function_url))
        else:
            print(f"devstack: using the deployed function at {settings.function_url}")
    if "dagster" in which and "function" in which and local_function:
        services.append(cloud_run_jobs_service(env))
    if "dagster" in which:
        # After DemoSettings.from_env(): a DAGSTER_PORT in .env counts too.
        dagster_port = dagster_port or int(os.environ.get("DAGSTER_PORT") or DEFAULT_DAGSTER_PORT)
        url = f"http://{LOOPBACK}:{dagster_port}"
        services.append(Service("dagster", dagster_command(dagster_port), dagster_port, url))
    return services, env


def emulator_services(emulator: str, pipes_bucket: str, data_lake_uri: str) -> list[Service]:
    """fake-gcs-server on a free port behind the XML-API adapter, which listens at
    ``emulator`` (STORAGE_EMULATOR_HOST) and creates the Pipes bucket and a ``gs://`` lake's."""
    port, backend_port = url_port(emulator, DEFAULT_EMULATOR_PORT), free_port()
    backend = f"http://{LOOPBACK}:{backend_port}"
    buckets = [pipes_bucket, *filter(None, [lake_bucket(data_lake_uri)])]
    data_dir = Path(os.environ.get(EMULATOR_DATA_VAR) or EMULATOR_DATA)
    return [
        Service(
            "fake-gcs", emulator_command(backend_port, emulator, data_dir), backend_port, backend
        ),
        Service("emulator", adapter_command(port, backend, buckets), port, emulator),
    ]


def cloud_run_jobs_service(env: dict[str, str]) -> Service:
    """The Cloud Run Jobs stand-in serving the demo's people-job; Dagster is told where."""
    # Imported here: the light emulator (devstack.emulator_standalone) imports this module.
    from devstack.cloud_run_jobs import DEFAULT_ENDPOINT, local_jobs_command

    endpoint = os.environ.get("CLOUD_RUN_JOBS_ENDPOINT") or DEFAULT_ENDPOINT
    env["CLOUD_RUN_JOBS_ENDPOINT"] = endpoint
    port = url_port(f"http://{endpoint}", 8091)
    command = local_jobs_command(port, REPO_ROOT / ".data" / "cloud-run-jobs")
    return Service("jobs", command, port, f"http://{endpoint}")


def preflight(services: Sequence[Service]) -> list[str]:
    """One message per port that is already taken."""
    problems = []
    for service in services:
        if not port_is_free(service.port):
            problems.append(
                f"port {service.port} on {LOOPBACK} is already in use, so the {service.name} "
                f"cannot start. Stop whatever listens there (`lsof -i :{service.port}`) or "
                "choose another port in .env."
            )
    return problems


def run_stack(which: Sequence[str], dagster_port: int | None, open_browser: bool) -> int:
    ensure_env_file()
    try:
        services, env = plan(which, dagster_port)
    except ConfigError as error:
        print(f"devstack: error: {error}", file=sys.stderr)
        return 2
    problems = preflight(services)
    if problems:
        for problem in problems:
            print(f"devstack: error: {problem}", file=sys.stderr)
        return 2
    if not services:
        print("devstack: nothing to start", file=sys.stderr)
        return 2
    full_env = {**os.environ, **env}
    commands: dict[str, Sequence[str]] = {s.name: s.command for s in services}
    ready = [sys.executable, "-m", "devstack", "ready"]
    ready += [f"--{s.name}={s.url}" for s in services if s.name in READY_CHECKED]
    ready += [f"--bucket={env['PIPES_BUCKET']}"]
    commands["ready"] = [*ready, *(["--open-browser"] if open_browser else [])]
    with terminal_foreground():
        return run_processes(commands, full_env, cwd=str(REPO_ROOT))


@contextmanager
def terminal_foreground() -> Iterator[None]:
    """Make the stack the terminal's foreground process group while it runs.

    Ctrl-C then reaches the stack (which stops cleanly and exits 0) but not ``just`` above
    it, which would otherwise end a clean shutdown with "error: interrupted by SIGINT".
    Without a terminal (tests, CI) nothing changes.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield
        return
    try:
        previous = os.tcgetpgrp(tty)
        if previous != os.getpgrp():  # not in the foreground (e.g. started with `&`)
            yield
            return
        ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # tcsetpgrp from a background group
        try:
            os.setpgid(0, 0)
            os.tcsetpgrp(tty, os.getpgrp())
        except OSError:  # e.g. a session leader: Ctrl-C reaches `just` too, as before
            pass
        try:
            yield
        finally:
            with suppress(OSError):
                os.tcsetpgrp(tty, previous)
            signal.signal(signal.SIGTTOU, ttou)
    finally:
        os.close(tty)


def ready_checks(args: argparse.Namespace) -> list[Check]:
    checks = []
    if args.emulator:
        checks.append(Check("emulator", args.emulator, emulator_probe(args.emulator, args.bucket)))
    if args.function:
        port = url_port(args.function, DEFAULT_FUNCTION_PORT)
        checks.append(Check("function", args.function, port_probe(port)))
    if args.jobs:
        port = url_port(args.jobs, 8091)
        checks.append(Check("jobs", args.jobs, port_probe(port)))  # Cloud Run Jobs
    if args.dagster:
        checks.append(Check("dagster", args.dagster, dagster_probe(args.dagster)))
    return checks


def wait_until_ready(args: argparse.Namespace) -> int:
    """Wait for every service, print the banner, then idle until stopped."""
    checks = ready_checks(args)
    problems = wait_ready(checks, timeout=READY_TIMEOUT)
    if problems:
        for problem in problems:
            print(f"devstack: error: {problem}; stopping everything.", flush=True)
        return 1
    print(banner(checks), flush=True)
    dagster = [check.url for check in checks if check.name == "dagster"]
    if args.open_browser and dagster and (os.environ.get("DISPLAY") or sys.platform == "darwin"):
        webbrowser.open(dagster[0])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [
        ("up", "emulator + function + Dagster (just dd)"),
        ("fn", "the function alone, with the emulator it writes to (just fn)"),
        ("emulator", "the GCS emulator alone (just emulator)"),
    ]:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--dagster-port", type=int, help="default: DAGSTER_PORT or 3000")
        cmd.add_argument("--no-browser", action="store_true")
    table = sub.add_parser("table", help="print a table of the local lake (DATA_LAKE_URI)")
    table.add_argument("asset", nargs="?", default="cloud_function_pipes_asset")
    ready = sub.add_parser("ready", help=argparse.SUPPRESS)
    for name in ("emulator", "function", "jobs", "dagster", "bucket"):
        ready.add_argument(f"--{name}")
    ready.add_argument("--open-browser", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "ready":
        return wait_until_ready(args)
    if args.command == "table":
        from devstack.read_table import main as print_table

        return print_table(args.asset)
    which = {
        "up": ("emulator", "function", "dagster"),
        "fn": ("emulator", "function"),
        "emulator": ("emulator",),
    }[args.command]
    open_browser = args.command == "up" and not args.no_browser and not os.environ.get("CI")
    return run_stack(which, args.dagster_port, open_browser)


if __name__ == "__main__":
    sys.exit(main())
