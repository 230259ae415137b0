"""HTTP metrics: prometheus-fastapi-instrumentator's series, labelled from the route FastAPI chose.

The package's middleware finds a request's `handler` label before the app runs by
matching the request against every route of the app (a third of the CPU of the
cheapest request). Routing does that matching anyway and leaves the route it picked
in `scope["route"]`; `RouteLabelInstrumentatorMiddleware` reads it after the app ran
and maps it to its template once per route. Requests that no route took (404s,
trailing-slash redirects, mounts) still go through the package's own lookup, so the
labels, exclusions and grouping are exactly the package's.

The series are those of the package's `metrics.default()` (`HttpSeries`), recorded
through label children kept per label set: the package's instrumentation looks up
four children and builds a Request, a Response and an Info per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from timeit import default_timer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Summary
from prometheus_fastapi_instrumentator import metrics
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount
from starlette.types import Message, Receive, Scope, Send


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


_HIGHR_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 7.5,
    10, 30, 60,
)  # fmt: skip
"""`metrics.default`'s own default for http_request_duration_highr_seconds."""


class HttpSeries:
    """The five series of the package's `metrics.default()`, recorded through label
    children kept per (method, status, handler) rather than looked up four times per
    request. Names, help texts, label names and buckets are the package's (a unit test
    compares the exposition with the package's middleware's)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        latency_lowr_buckets: Sequence[float | str],
        latency_highr_buckets: Sequence[float | str] = _HIGHR_BUCKETS,
        namespace: str = "",
        subsystem: str = "",
    ) -> None:
        self.total = Counter(
            name="http_requests_total",
            documentation="Total number of requests by method, status and handler.",
            labelnames=("method", "status", "handler"),
            namespace=namespace,
            subsystem=subsystem,
            registry=registry,
        )
        self.in_size = Summary(
            name="http_request_size_bytes",
            documentation=(
                "Content length of incoming requests by handler. "
                "Only value of header is respected. Otherwise ignored. "
                "No percentile calculated. "
            ),
            labelnames=("handler",),
            namespace=namespace,
            subsystem=subsystem,
            registry=registry,
        )
        self.out_size = Summary(
            name="http_response_size_bytes",
            documentation=(
                "Content length of outgoing responses by handler. "
                "Only value of header is respected. Otherwise ignored. "
                "No percentile calculated. "
            ),
            labelnames=("handler",),
            namespace=namespace,
            subsystem=subsystem,
            registry=registry,
        )
        self.latency_highr = Histogram(
            name="http_request_duration_highr_seconds",
            documentation=(
                "Latency with many buckets but no API specific labels. "
                "Made for more accurate percentile calculations. "
            ),
            buckets=_with_inf(latency_highr_buckets),
            namespace=namespace,
            subsystem=subsystem,
            registry=registry,
        )
        self.latency_lowr = Histogram(
            name="http_request_duration_seconds",
            documentation=(
                "Latency with only few buckets by handler. "
                "Made to be only used if aggregation by handler is important. "
            ),
            buckets=_with_inf(latency_lowr_buckets),
            labelnames=("method", "handler"),
            namespace=namespace,
            subsystem=subsystem,
            registry=registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}

    def record(
        self,
        method: str,
        status: str,
        handler: str,
        request_bytes: int,
        response_bytes: int,
        duration: float,
    ) -> None:
        """One request, as `metrics.default()`'s instrumentation records it."""
        key = (method, status, handler)
        children = self._children.get(key)
        if children is None:
            children = (
                self.total.labels(method, status, handler),
                self.in_size.labels(handler),
                self.out_size.labels(handler),
                self.latency_lowr.labels(method, handler),
            )
            self._children[key] = children
        total, in_size, out_size, latency_lowr = children
        total.inc()
        in_size.observe(request_bytes)
        out_size.observe(response_bytes)
        self.latency_highr.observe(duration)
        latency_lowr.observe(duration)

    def __call__(self, info: metrics.Info) -> None:
        """As an instrumentation of the package's middleware (its own request path)."""
        response = info.response
        self.record(
            info.method,
            info.modified_status,
            info.modified_handler,
            int(info.request.headers.get("Content-Length", 0)),
            int(response.headers.get("Content-Length", 0)) if response is not None else 0,
            info.modified_duration,
        )


def _with_inf(buckets: Sequence[float | str]) -> list[float | str]:
    return [*buckets] if buckets[-1] == float("inf") else [*buckets, float("inf")]


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value)
    return 0


class RouteLabelInstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The package's middleware, with `handler` taken from `scope["route"]` after routing.

    Takes the package's own keyword arguments and records the package's default series
    (`HttpSeries`). With `body_handlers`, the in-progress gauge (which need the handler
    before the app runs), async instrumentations or `should_include_root_path` it runs
    the package's own request path; with instrumentations of one's own, custom labels,
    `should_only_respect_2xx_for_highr` or `should_exclude_streaming_duration` it also
    records through the package's instrumentations.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.series: HttpSeries | None = None
        if not any(
            kwargs.get(name)
            for name in (
                "instrumentations",
                "custom_labels",
                "should_only_respect_2xx_for_highr",
                "should_exclude_streaming_duration",
            )
        ):
            # The package's default series, as HttpSeries (the package then creates none).
            self.series = HttpSeries(
                kwargs.get("registry", REGISTRY),
                kwargs.get("latency_lowr_buckets", (0.1, 0.5, 1)),
                kwargs.get("latency_highr_buckets", _HIGHR_BUCKETS),
                kwargs.get("metric_namespace", ""),
                kwargs.get("metric_subsystem", ""),
            )
            kwargs["instrumentations"] = [self.series]
        super().__init__(*args, **kwargs)
        # By id(): routes compare by value and are unhashable; each entry keeps its route
        # alive (and is checked against it), so an id is never another route's.
        self._labels: dict[int, tuple[object, str, bool]] = {}
        self._templates: dict[int, tuple[object, str]] | None = None
        self._late_labels = not (
            self.series is None
            or self.body_handlers
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

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                nonlocal status_code, headers
                headers = message["headers"]
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            handler, excluded = self._label(scope, before_routing)
            if not excluded:
                self._record(before_routing, handler, int(status_code), headers, start_time)

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
    ) -> None:
        """Record as the package's middleware and default instrumentation do."""
        assert self.series is not None  # else `_late_labels` is off
        status = str(status_code)
        if self.should_group_status_codes:
            status = status[0] + "xx"
        duration = max(default_timer() - start_time, 0.0)
        if self.should_round_latency_decimals:
            duration = round(duration, self.round_latency_decimals)
        self.series.record(
            scope["method"],
            status,
            handler,
            _content_length(scope.get("headers", ())),
            _content_length(headers),
            duration,
        )
