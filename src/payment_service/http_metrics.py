"""HTTP metrics: prometheus-fastapi-instrumentator's series, labelled from the route FastAPI chose.

The package's middleware finds a request's `handler` label before the app runs by
matching the request against every route of the app (a third of the CPU of the
cheapest request). Routing does that matching anyway and leaves the route it picked
in `scope["route"]`; `RouteLabelInstrumentatorMiddleware` reads it after the app ran
and maps it to its template once per route. Requests that no route took (404s,
trailing-slash redirects, mounts) still go through the package's own lookup, so the
labels, exclusions and grouping are exactly the package's; the series are recorded by
the package's own instrumentation functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from timeit import default_timer
from typing import Any

from prometheus_fastapi_instrumentator import metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount
from starlette.types import Message, Receive, Scope, Send


class _Sent:
    """What the instrumentations read of a response: its headers (Content-Length)."""

    __slots__ = ("headers",)

    def __init__(self, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = Headers(raw=raw_headers)


def _route_templates(routes: Iterable[BaseRoute]) -> Iterator[tuple[object, str]]:
    """(route object routing puts in scope["route"], its full template) for the app's routes.

    Included routers expose their routes with the full prefix through
    `effective_route_contexts()` (as the package's own lookup relies on); mounts are
    left out, their handler depends on the sub-route.
    """
    for route in routes:
        contexts: Any = getattr(route, "effective_route_contexts", None)
        if callable(contexts):
            for context in contexts():
                original = getattr(context, "original_route", None)
                path = getattr(context, "path", None)
                if original is not None and isinstance(path, str) and path:
                    yield original, path
        elif not isinstance(route, Mount):
            path = getattr(route, "path", None)
            if isinstance(path, str):
                yield route, path


class RouteLabelInstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The package's middleware, with `handler` taken from `scope["route"]` after routing.

    Takes the package's own keyword arguments. With `body_handlers`, the in-progress
    gauge (which need the handler before the app runs), async instrumentations or
    `should_include_root_path` it is the package's middleware unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # By id(): routes compare by value and are unhashable; each entry keeps its route
        # alive (and is checked against it), so an id is never another route's.
        self._labels: dict[int, tuple[object, str, bool]] = {}
        self._templates: dict[int, tuple[object, str]] | None = None
        self._late_labels = not (
            self.body_handlers
            or self.should_instrument_requests_inprogress
            or self.async_instrumentations
            or self.should_include_root_path
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._late_labels:
            await super().__call__(scope, receive, send)
            return
        start_time = default_timer()
        before_routing = dict(scope)  # the package's lookup matches the request as it came
        status_code = 500
        headers: list[tuple[bytes, bytes]] = []
        response_start_time: float | None = None

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                nonlocal status_code, headers, response_start_time
                headers = message["headers"]
                status_code = message["status"]
                response_start_time = default_timer()
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            handler, excluded = self._label(scope, before_routing)
            if not excluded:
                self._record(
                    before_routing,
                    handler,
                    int(status_code),
                    headers,
                    start_time,
                    response_start_time,
                )

    def _label(self, scope: Scope, before_routing: Scope) -> tuple[str, bool]:
        """(handler label, excluded) of this request, memoised per route."""
        route = scope.get("route")
        if route is not None:
            known = self._labels.get(id(route))
            if known is not None and known[0] is route:
                return known[1], known[2]
            template = self._template_of(scope, route)
            if template is not None:
                excluded = self._is_handler_excluded(template, True)
                self._labels[id(route)] = (route, template, excluded)
                return template, excluded
        handler, is_templated = self._get_handler(Request(before_routing))
        excluded = self._is_handler_excluded(handler, is_templated)
        if not is_templated and self.should_group_untemplated:
            handler = "none"
        return handler, excluded

    def _template_of(self, scope: Scope, route: object) -> str | None:
        """The route's full template, if it is reachable under exactly one (else None)."""
        if self._templates is None:
            found: dict[int, tuple[object, str | None]] = {}
            for candidate, path in _route_templates(getattr(scope.get("app"), "routes", ())):
                key = id(candidate)
                found[key] = (candidate, path if key not in found else None)
            self._templates = {
                key: (candidate, path) for key, (candidate, path) in found.items() if path
            }
        known = self._templates.get(id(route))
        return known[1] if known is not None and known[0] is route else None

    def _record(
        self,
        scope: Scope,
        handler: str,
        status_code: int,
        headers: list[tuple[bytes, bytes]],
        start_time: float,
        response_start_time: float | None,
    ) -> None:
        """Run the instrumentations as the package's middleware does."""
        status = str(status_code)
        if self.should_group_status_codes:
            status = status[0] + "xx"
        now = default_timer()
        duration = max(now - start_time, 0.0)
        without_streaming = (
            max(response_start_time - start_time, 0.0) if response_start_time else 0.0
        )
        if self.should_round_latency_decimals:
            duration = round(duration, self.round_latency_decimals)
            without_streaming = round(without_streaming, self.round_latency_decimals)
        request = Request(scope)
        info = metrics.Info(
            request=request,
            response=_Sent(headers),  # type: ignore[arg-type]
            method=request.method,
            modified_handler=handler,
            modified_status=status,
            modified_duration=duration,
            modified_duration_without_streaming=without_streaming,
        )
        for instrumentation in self.instrumentations:
            instrumentation(info)
