"""``python -m devstack``: the checks a user meets before, during and after ``just dd``."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from devstack.net import LOOPBACK, port_is_free, url_port
from devstack.tests.conftest import Devstack

BROKEN_FUNCTION = "import no_such_module_xyz\n\n\ndef main(request):\n    return 'ok'\n"


def test_a_taken_port_is_named_before_anything_starts(devstack: Devstack) -> None:
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        devstack.env["DAGSTER_PORT"] = str(port)
        code, output = devstack.run("up", "--no-browser")
    assert code == 2
    assert f"port {port} on {LOOPBACK} is already in use, so the dagster cannot start" in output
    assert "started (pid=" not in output  # nothing was started
    assert devstack.survivors(timeout=0) == []


def test_a_function_that_fails_to_import_stops_everything_with_its_error(
    devstack: Devstack, tmp_path: Path
) -> None:
    source = tmp_path / "main.py"
    source.write_text(BROKEN_FUNCTION)
    devstack.env["FUNCTION_SOURCE"] = str(source)
    started = time.monotonic()
    code, output = devstack.run("fn", timeout=60)
    assert code != 0
    assert time.monotonic() - started < 30
    report = output.split("devstack: error: ", 1)[1]
    assert report.startswith("the function stopped (exit code 1), so devstack stopped everything")
    assert f'File "{source}", line 1' in report
    assert "ModuleNotFoundError: No module named 'no_such_module_xyz'" in report
    assert "site-packages" not in report  # library frames are left out of the summary
    assert "the function could not start" in report
    assert "Local stack is up" not in output
    assert devstack.survivors() == []


def test_a_deployed_function_with_the_emulator_set_is_refused(devstack: Devstack) -> None:
    devstack.env["CLOUD_FUNCTION_URL"] = "https://people-abc123-ew.a.run.app"
    code, output = devstack.run("up", "--no-browser")
    assert code == 2
    assert "is a deployed function but STORAGE_EMULATOR_HOST" in output
    assert "started (pid=" not in output


def test_ctrl_c_stops_every_process_of_the_stack(devstack: Devstack) -> None:
    ports = [
        url_port(devstack.env["CLOUD_FUNCTION_URL"], 0),
        url_port(devstack.env["STORAGE_EMULATOR_HOST"], 0),
        int(devstack.env["DAGSTER_PORT"]),
    ]
    process = devstack.start("up", "--no-browser")
    assert devstack.wait_for_output("Local stack is up:", timeout=150), devstack.log()
    log = devstack.log()
    for name, env_var in [
        ("emulator", "STORAGE_EMULATOR_HOST"),
        ("function", "CLOUD_FUNCTION_URL"),
    ]:
        assert f"{name}  {devstack.env[env_var]}" in log
    assert f"dagster   http://{LOOPBACK}:{devstack.env['DAGSTER_PORT']}" in log
    # Every line is prefixed with the time and the process name (honcho).
    assert " dagster  | " in log and " ready    | Local stack is up:" in log
    children = devstack.survivors(timeout=0)
    assert len(children) >= 8, "emulator, function, dagster dev (+ its servers), ready"

    stopped_at = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    assert process.wait(timeout=20) == 0, "a clean Ctrl-C is not a failure"
    assert time.monotonic() - stopped_at < 15
    assert devstack.survivors(timeout=3) == [], "processes left after Ctrl-C"
    assert all(port_is_free(port) for port in ports)
    log = devstack.log()
    assert "SIGINT received" in log
    assert "dagster stopped (rc=0)" in log  # dagster dev shut down cleanly, was not killed
    assert "SIGKILL" not in log
    assert "devstack: error" not in log
    assert "devstack: every process stopped" in log
