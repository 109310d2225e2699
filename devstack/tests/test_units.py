"""devstack's pieces without processes: printer, failure report, readiness probes."""

from __future__ import annotations

import datetime
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from honcho.printer import Message

from devstack.net import LOOPBACK, free_port
from devstack.readiness import Check, banner, emulator_probe, port_probe, wait_ready
from devstack.supervise import TailPrinter, failure_report, user_traceback


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def line(name: str, text: str, colour: str | None = "32") -> Message:
    return Message("line", text, datetime.datetime(2026, 1, 1, 12, 0, 0), name, colour)


def test_lines_are_prefixed_with_time_and_name_and_coloured_on_a_terminal() -> None:
    tty, pipe = Tty(), io.StringIO()
    for output in (tty, pipe):
        printer = TailPrinter(output, colour=output.isatty())
        printer.width = 8
        printer.write(line("function", b"listening\n"))
    assert tty.getvalue() == "\x1b[0m\x1b[32m12:00:00 function | \x1b[0mlistening\n"
    assert pipe.getvalue() == "12:00:00 function | listening\n"


def test_the_first_process_to_exit_is_reported_with_its_own_frames() -> None:
    printer = TailPrinter(io.StringIO(), colour=False)
    traceback = [
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/click/core.py", line 1, in main',
        "    rv = self.invoke(ctx)",
        "         ^^^^^^^^^^^^",
        '  File "<frozen importlib._bootstrap>", line 241, in _call',
        '  File "/repo/cloud_function/main.py", line 3, in <module>',
        "    import polars",
        "ModuleNotFoundError: No module named 'polars'",
    ]
    printer.write(line("function", "\n".join(traceback)))
    printer.write(line("system", "function stopped (rc=1)\n", None))
    printer.write(line("system", "emulator stopped (rc=-15)\n", None))
    report = failure_report(printer)
    assert report is not None
    assert "the function stopped (exit code 1)" in report
    assert '    File "/repo/cloud_function/main.py", line 3, in <module>' in report
    assert "ModuleNotFoundError: No module named 'polars'" in report
    assert "site-packages" not in report and "<frozen" not in report
    assert "the function could not start" in report


def test_nothing_is_reported_after_ctrl_c() -> None:
    printer = TailPrinter(io.StringIO(), colour=False)
    printer.write(line("system", "SIGINT received\n", None))
    printer.write(line("system", "function stopped (rc=-15)\n", None))
    assert failure_report(printer) is None


def test_output_without_a_traceback_is_kept_whole() -> None:
    assert user_traceback(["Error: port in use", "bye"]) == ["Error: port in use", "bye"]


class Emulator(BaseHTTPRequestHandler):
    """Answers like the GCS emulator for one bucket."""

    def do_GET(self) -> None:
        found = self.path == "/storage/v1/b/pipes"
        self.send_response(200 if found else 404)
        self.end_headers()
        self.wfile.write(b'{"kind": "storage#bucket", "name": "pipes"}' if found else b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def emulator_url() -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, 0), Emulator)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_emulator_is_ready_when_it_serves_the_pipes_bucket(emulator_url: str) -> None:
    assert emulator_probe(emulator_url, "pipes")() is None
    assert emulator_probe(emulator_url, "other")() == (
        f"GET {emulator_url}/storage/v1/b/other answered HTTP 404"
    )


def test_a_service_that_never_comes_up_is_named_with_the_reason() -> None:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    checks = [Check("emulator", url, emulator_probe(url, "pipes"))]
    problems = wait_ready(checks, timeout=0.5, interval=0.1)
    assert len(problems) == 1
    assert problems[0].startswith("the emulator is not up after 0.5s (GET ")
    assert "Connection refused" in problems[0]
    assert port_probe(port)() == f"nothing listens on {LOOPBACK}:{port}"


def test_the_banner_lists_every_url() -> None:
    checks = [
        Check("emulator", "http://127.0.0.1:9023", lambda: None),
        Check("dagster", "http://127.0.0.1:3000", lambda: None),
    ]
    assert wait_ready(checks, timeout=1) == []
    assert "  emulator  http://127.0.0.1:9023\n  dagster   http://127.0.0.1:3000\n" in banner(
        checks
    )


def test_the_dagster_port_is_read_after_env_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack.__main__ import plan
    from gcf_demo.settings import DemoSettings

    monkeypatch.delenv("DAGSTER_PORT", raising=False)

    def from_env_file() -> DemoSettings:  # what a `.env` with DAGSTER_PORT=3456 does
        monkeypatch.setenv("DAGSTER_PORT", "3456")
        return DemoSettings("http://127.0.0.1:8080", "pipes", "/tmp/lake")

    monkeypatch.setattr(DemoSettings, "from_env", staticmethod(from_env_file))
    (service,), _ = plan(["dagster"])
    assert (service.port, service.url) == (3456, f"http://{LOOPBACK}:3456")
    (service,), _ = plan(["dagster"], dagster_port=4567)  # --dagster-port wins
    assert service.port == 4567
