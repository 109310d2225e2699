"""Is each service of the local stack really up? Probes with messages a user can act on."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from devstack.net import LOOPBACK, wait_for_port

Probe = Callable[[], str | None]  # None when ready, else why not


@dataclass(frozen=True)
class Check:
    """One service to wait for: its name, URL shown in the banner and its probe."""

    name: str
    url: str
    probe: Probe


def http_probe(url: str, expect: str = "") -> Probe:
    """Ready when ``GET url`` answers 200 (and the body contains ``expect``)."""

    def probe() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read(65536).decode(errors="replace")
        except urllib.error.HTTPError as error:
            return f"GET {url} answered HTTP {error.code}"
        except (OSError, ValueError) as error:
            return f"GET {url} failed: {error}"
        if expect and expect not in body:
            return f"GET {url} answered without {expect!r}: is this the right server?"
        return None

    return probe


def emulator_probe(url: str, bucket: str) -> Probe:
    """Ready when the GCS emulator serves the Pipes bucket (created at start)."""
    return http_probe(f"{url.rstrip('/')}/storage/v1/b/{bucket}", expect=bucket)


def dagster_probe(url: str) -> Probe:
    return http_probe(f"{url.rstrip('/')}/server_info", expect="dagster_webserver_version")


def port_probe(port: int) -> Probe:
    def probe() -> str | None:
        ok = wait_for_port(port, timeout=0.5)
        return None if ok else f"nothing listens on {LOOPBACK}:{port}"

    return probe


def wait_ready(checks: Sequence[Check], timeout: float, interval: float = 0.25) -> list[str]:
    """Wait for every check; return one problem per service still not ready at ``timeout``."""
    deadline = time.monotonic() + timeout
    pending = {check.name: check for check in checks}
    reasons: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for name, check in list(pending.items()):
            reason = check.probe()
            if reason is None:
                del pending[name]
            else:
                reasons[name] = reason
        if pending:
            time.sleep(interval)
    return [
        f"the {name} is not up after {timeout:g}s ({reasons.get(name, 'not checked')})"
        for name in pending
    ]


def banner(checks: Sequence[Check]) -> str:
    """The short "it's up" message with every URL."""
    width = max(len(check.name) for check in checks)
    lines = [f"  {check.name.ljust(width)}  {check.url}" for check in checks]
    return "\n".join(["", "Local stack is up:", *lines, "", "Press Ctrl-C to stop everything.", ""])
