"""Answers like Cloud Run's front end refusing a call before the function runs.

The URL path picks the answer: ``/401`` (no or wrong ID token, e.g. a wrong audience) or
``/403`` (a valid token of a principal without ``roles/run.invoker``). The bodies are the
platform's HTML, not the function's JSON errors.
"""

import flask
import functions_framework

PAGES = {
    401: ("Unauthorized", "Your client does not have permission to the requested URL"),
    403: ("Forbidden", "Your client does not have permission to get URL"),
}


@functions_framework.http
def main(request: flask.Request) -> tuple[str, int, dict[str, str]]:
    status = int(request.path.strip("/") or 403)
    title, text = PAGES[status]
    page = (
        f"<html><head><title>{status} {title}</title></head><body>"
        f"<h1>Error: {title}</h1><h2>{text} <code>{request.path}</code>.</h2></body></html>"
    )
    return page, status, {"Content-Type": "text/html; charset=UTF-8"}
