"""``python -m devstack up|fn|emulator``: the local stack behind ``just dd``.

Processes run under honcho (prefixed, coloured output; one stops, all stop; Ctrl-C stops
every process it started). Before anything starts, each port is checked; a ``ready`` step
waits for every service and prints where each one listens.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass

from honcho.manager import Manager
from honcho.printer import Printer

from devstack.net import LOOPBACK, host_port, port_is_free, wait_for_port
from devstack.services import REPO_ROOT, dagster_command, emulator_command, function_command

DEFAULT_DAGSTER_PORT = 3000
DEFAULT_EMULATOR = "http://127.0.0.1:9023"
READY_TIMEOUT = 180.0


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    port: int
    url: str


def ensure_env_file() -> None:
    """First run: create ``.env`` from ``.env.example`` (local-stack defaults)."""
    env_file, example = REPO_ROOT / ".env", REPO_ROOT / ".env.example"
    if not env_file.exists() and example.exists():
        shutil.copyfile(example, env_file)
        print("devstack: created .env from .env.example (local stack defaults)")


def plan(which: Sequence[str], dagster_port: int) -> tuple[list[Service], dict[str, str]]:
    """The services to start and the environment they share."""
    from dagster_pipes_gcf import needs_id_token
    from gcf_demo.settings import DemoSettings

    settings = DemoSettings.from_env()  # also loads .env into os.environ
    env: dict[str, str] = {"DATA_LAKE_URI": settings.data_lake_uri}
    services: list[Service] = []
    local_function = not needs_id_token(settings.function_url)
    if "emulator" in which:
        if not local_function and not os.environ.get("STORAGE_EMULATOR_HOST"):
            print("devstack: CLOUD_FUNCTION_URL is a deployed function; not starting the emulator")
        else:
            emulator = os.environ.get("STORAGE_EMULATOR_HOST") or DEFAULT_EMULATOR
            env["STORAGE_EMULATOR_HOST"] = emulator
            _, port = host_port(emulator, 9023)
            services.append(
                Service("emulator", emulator_command(port, settings.pipes_bucket), port, emulator)
            )
    if "function" in which:
        if local_function:
            _, port = host_port(settings.function_url, 8080)
            env.setdefault("THREADS", os.environ.get("THREADS", "8"))
            services.append(
                Service("function", function_command(port), port, settings.function_url)
            )
        else:
            print(f"devstack: using the deployed function at {settings.function_url}")
    if "dagster" in which:
        services.append(
            Service(
                "dagster",
                dagster_command(dagster_port),
                dagster_port,
                f"http://{LOOPBACK}:{dagster_port}",
            )
        )
    return services, env


def preflight(services: Sequence[Service]) -> list[str]:
    problems = []
    for service in services:
        if not port_is_free(service.port):
            problems.append(
                f"port {service.port} on {LOOPBACK} is already in use, so the {service.name} "
                f"cannot start. Stop whatever listens there (`lsof -i :{service.port}`) or "
                "choose another port in .env."
            )
    return problems


def run_stack(which: Sequence[str], dagster_port: int, open_browser: bool) -> int:
    ensure_env_file()
    services, env = plan(which, dagster_port)
    problems = preflight(services)
    if problems:
        for problem in problems:
            print(f"devstack: error: {problem}", file=sys.stderr)
        return 2
    manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty(), prefix=True))
    full_env = {**os.environ, **env}
    for service in services:
        manager.add_process(
            service.name, shlex.join(service.command), env=full_env, cwd=str(REPO_ROOT)
        )
    ready = [sys.executable, "-m", "devstack", "ready"]
    ready += [f"{s.name}={s.port}={s.url}" for s in services]
    if open_browser:
        ready.append("--open-browser")
    manager.add_process("ready", shlex.join(ready), env=full_env, cwd=str(REPO_ROOT))
    manager.loop()
    return int(manager.returncode or 0)


def wait_until_ready(specs: Sequence[str], open_browser: bool) -> int:
    """Wait for every ``name=port=url``, print the banner, then idle until stopped."""
    parsed = [spec.split("=", 2) for spec in specs]
    for name, port, _ in parsed:
        if not wait_for_port(int(port), timeout=READY_TIMEOUT):
            print(f"error: {name} did not listen on {LOOPBACK}:{port} within {READY_TIMEOUT:g}s")
            return 1
    width = max(len(name) for name, _, _ in parsed)
    lines = [f"  {name.ljust(width)}  {url}" for name, _, url in parsed]
    print("\n".join(["", "Local stack is up:", *lines, "", "Press Ctrl-C to stop everything.", ""]))
    sys.stdout.flush()
    dagster = [url for name, _, url in parsed if name == "dagster"]
    if open_browser and dagster and (os.environ.get("DISPLAY") or sys.platform == "darwin"):
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
        cmd.add_argument(
            "--dagster-port",
            type=int,
            default=int(os.environ.get("DAGSTER_PORT", DEFAULT_DAGSTER_PORT)),
        )
        cmd.add_argument("--no-browser", action="store_true")
    ready = sub.add_parser("ready", help=argparse.SUPPRESS)
    ready.add_argument("specs", nargs="+")
    ready.add_argument("--open-browser", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "ready":
        return wait_until_ready(args.specs, args.open_browser)
    which = {
        "up": ("emulator", "function", "dagster"),
        "fn": ("emulator", "function"),
        "emulator": ("emulator",),
    }[args.command]
    open_browser = args.command == "up" and not args.no_browser and not os.environ.get("CI")
    return run_stack(which, args.dagster_port, open_browser)


if __name__ == "__main__":
    sys.exit(main())
