"""A function that answers 200 without ever opening Pipes (the mistake the reader must catch)."""

import flask
import functions_framework


@functions_framework.http
def main(request: flask.Request) -> tuple[str, int]:
    return "OK", 200
