"""Bench-only: the least a functions-framework HTTP function is (the cold-start baseline)."""

import flask
import functions_framework


@functions_framework.http
def main(request: flask.Request) -> str:
    return "ok"
