"""Route tables: each function answers its own paths, and 404/405 for everything else."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flask import Request, Response

from ..config import Settings
from ..errors import MethodNotAllowedError, RouteNotFoundError
from ..models import Caller
from ..service import JobService

__all__ = ["Context", "Handler", "Route", "Router"]


@dataclass
class Context:
    """What a handler gets: the request, its path parameters, the caller and the service."""

    request: Request
    service: JobService
    settings: Settings
    caller: Caller
    params: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Context], Response]


@dataclass(frozen=True)
class Route:
    """A method and a path template such as ``/api/v1/job/{job_id}/phase``.

    ``{name}`` matches one path segment; ``{name:path}`` matches the rest of the path.
    """

    method: str
    template: str
    handler: Handler
    public: bool = False  # answered without credentials (the API's own description)

    @property
    def pattern(self) -> re.Pattern[str]:
        """The template as a regular expression; each ``{name}`` is one path segment."""
        parts = re.split(r"\{(\w+(?::path)?)\}", self.template)
        regex = "".join(
            re.escape(part)
            if index % 2 == 0
            else f"(?P<{part[:-5]}>.+)"
            if part.endswith(":path")
            else f"(?P<{part}>[^/]+)"
            for index, part in enumerate(parts)
        )
        return re.compile(f"^{regex}$")


class Router:
    """Matches a request to one route of a table, in order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = [(route, route.pattern) for route in routes]

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and path parameters, or RouteNotFoundError / MethodNotAllowedError."""
        route, params = self.route_for(method, path)
        return route.handler, params

    def route_for(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route and path parameters, or RouteNotFoundError / MethodNotAllowedError."""
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        lookup = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route, pattern in self.routes:
            found = pattern.fullmatch(path)  # "$" alone would let a trailing newline through
            if found is None:
                continue
            if route.method == lookup:
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            raise MethodNotAllowedError(f"{method} is not allowed on {path}", sorted(set(allowed)))
        raise RouteNotFoundError(f"No resource at {path[:200]}")
