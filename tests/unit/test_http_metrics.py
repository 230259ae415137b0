"""The route-labelled middleware exposes exactly what the instrumentator's own middleware
does: names, help, types, labels, buckets, counts and sizes (not the measured times)."""

from __future__ import annotations

import re

import httpx
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import Mount

from payment_service.http_metrics import RouteLabelInstrumentatorMiddleware

REQUESTS = [
    ("GET", "/ping"),
    ("GET", "/api/items/1"),
    ("GET", "/api/items/2"),
    ("GET", "/api/items/abc"),  # 422 under the template
    ("POST", "/api/items/1"),  # 405: the route's template, as the package labels it
    ("GET", "/api/items/1/"),  # trailing-slash redirect
    ("GET", "/nowhere/42"),  # no route: not recorded
    ("GET", "/static/assets/app.js"),  # a mount, excluded
    ("GET", "/again/items/7"),  # one route included under a second prefix
    ("GET", "/boom"),  # unhandled error: 500
]


def _app(
    middleware: type[PrometheusInstrumentatorMiddleware], registry: CollectorRegistry
) -> FastAPI:
    app = FastAPI()
    router = APIRouter()

    @router.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"status": "UP"}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.include_router(router, prefix="/api")
    app.include_router(router, prefix="/again")
    app.routes.append(Mount("/static/assets", app=PlainTextResponse("asset")))
    app.add_middleware(
        middleware,
        should_group_status_codes=False,
        should_ignore_untemplated=True,
        excluded_handlers=["/metrics", "/static/.*"],
        registry=registry,
        latency_lowr_buckets=(0.005, 0.01, 1),
    )
    return app


async def _series(middleware: type[PrometheusInstrumentatorMiddleware]) -> list[str]:
    registry = CollectorRegistry(auto_describe=True)
    transport = httpx.ASGITransport(app=_app(middleware, registry), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for method, path in REQUESTS:
            await client.request(method, path)
    lines = generate_latest(registry).decode().splitlines()
    series = []
    for line in lines:
        if "_created" in line:
            continue
        if re.match(r"http_request_duration_(highr_)?seconds_(bucket|sum)", line):
            line = line.rsplit(" ", 1)[0]  # measured times: the bucket, not its count
        series.append(line)
    return series


async def test_labels_and_counts_match_the_instrumentators_own_middleware() -> None:
    ours = await _series(RouteLabelInstrumentatorMiddleware)

    assert ours == await _series(PrometheusInstrumentatorMiddleware)
    assert (
        'http_requests_total{handler="/api/items/{item_id}",method="POST",status="405"} 1.0' in ours
    )
    assert 'http_requests_total{handler="/ping",method="GET",status="200"} 1.0' in ours
    assert not any("/nowhere" in line or "/static" in line for line in ours)
