"""The cold-start baseline: a bare Flask function on the same server (functions-framework)."""

import functions_framework
from flask import Request


@functions_framework.http
def bare(request: Request) -> str:
    """Answer 200 with a fixed body."""
    return "ok"
