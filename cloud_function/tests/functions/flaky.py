"""The real people function behind a platform-style failure: the first call per invocation
id gets a bare 503 (as Cloud Run's front end answers during a cold-start overload)."""

import threading

import flask
import functions_framework
import main as people_function

_seen: set[str] = set()
_lock = threading.Lock()


@functions_framework.http
def main(request: flask.Request) -> tuple[object, int]:
    invocation = request.headers.get("X-Dagster-Invocation-Id", "")
    with _lock:
        first = invocation not in _seen
        _seen.add(invocation)
    if first:
        return "Service Unavailable", 503
    return people_function.main(request)
