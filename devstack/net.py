"""Small network helpers for starting local servers on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    host: str = LOOPBACK,
    timeout: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
) -> bool:
    """True once something accepts connections on ``host:port``; False after ``timeout`` or
    as soon as ``alive()`` says the process that should listen there has gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def url_port(url: str, default_port: int) -> int:
    """The port of an ``http://host:port`` URL (or a bare ``host:port``)."""
    return urlsplit(url if "://" in url else f"http://{url}").port or default_port
