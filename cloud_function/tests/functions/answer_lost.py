"""The real people function whose first answer per invocation id is lost after it worked.

The handler runs in full (Pipes logs, the Delta commit, the materialization, ``closed``);
then the answer of the first request for each invocation id never reaches the caller, as the
URL path says:

- ``/drop_connection``: the connection is shut down instead of answering (as when an
  instance dies or a proxy cuts the connection after the work was done);
- ``/bare_500``: the platform-style bare ``500`` page replaces the function's answer;
- ``/bare_503``: a bare ``503``, as Cloud Run answers when an instance dies mid-request.

Each request is printed to the server's output (``CALL_LINE``) so a test can count them.
"""

import socket
import threading

import flask
import functions_framework
import main as people_function

CALL_LINE = "answer_lost.py: request for invocation"

_answered: set[str] = set()
_lock = threading.Lock()


def _first_request(request: flask.Request) -> bool:
    invocation = request.headers.get("X-Dagster-Invocation-Id", "")
    print(CALL_LINE, invocation, flush=True)
    with _lock:
        first = invocation not in _answered
        _answered.add(invocation)
    return first


@functions_framework.http
def main(request: flask.Request) -> tuple[object, int]:
    first = _first_request(request)
    answer = people_function.main(request)
    if not first:
        return answer
    if request.path.strip("/") == "drop_connection":
        connection = request.environ["gunicorn.socket"]  # functions-framework serves gunicorn
        connection.shutdown(socket.SHUT_RDWR)
        return answer  # never reaches the caller
    if request.path.strip("/") == "bare_503":
        return "<html><body>Service Unavailable</body></html>", 503
    return "<html><body>Internal Server Error</body></html>", 500
