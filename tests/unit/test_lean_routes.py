"""LeanRoute: which routes skip FastAPI's generic handler, and that they answer alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from payment_service.api.routing import LeanRoute

calls: list[str] = []


async def guard(request: Request) -> str:
    """A scope guard's shape: takes the request, may refuse, names the caller."""
    calls.append("guard")
    if request.headers.get("authorization") != "Bearer ok":
        raise HTTPException(401, "no key")
    return "caller-1"


async def session() -> AsyncIterator[str]:
    yield "session"


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: str | None = Field(None, pattern="^[A-Z]+$")
    limit: int = Field(10, ge=1, le=50)


def build(route_class: type[APIRoute]) -> FastAPI:
    app = FastAPI()
    router = APIRouter(
        route_class=route_class, dependencies=[Depends(guard)], dependency_overrides_provider=app
    )

    @router.get("/items/{item_id}")
    async def item(request: Request, item_id: Annotated[int, Path(gt=0, le=1000)]) -> Response:
        return JSONResponse({"id": item_id, "path": request.url.path})

    @router.get("/items")
    async def items(filters: Annotated[Filters, Query()]) -> Response:
        return JSONResponse(filters.model_dump())

    @router.get("/named/{item_id}")
    async def named(
        item_id: int,
        caller: Annotated[str, Depends(guard)],
        accept: Annotated[str | None, Header()] = None,
        page: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        return JSONResponse({"id": item_id, "caller": caller, "accept": accept, "page": page})

    @router.get("/with-session")
    async def with_session(s: Annotated[str, Depends(session)]) -> Response:
        return JSONResponse({"s": s})

    @router.get("/model")
    async def model() -> dict[str, Any]:
        return {"a": 1}

    app.router.routes.extend(router.routes)  # as create_app installs the API's routes
    return app


def lean_paths(app: FastAPI) -> set[str]:
    return {
        route.path
        for route in app.routes
        if isinstance(route, LeanRoute) and route.lean_plan is not None
    }


def test_only_routes_that_need_nothing_more_than_the_request_are_lean() -> None:
    # A yield dependency, a dependency used twice (FastAPI's cache calls it once) and an
    # endpoint FastAPI must serialise take FastAPI's own handler.
    assert lean_paths(build(LeanRoute)) == {"/items/{item_id}", "/items"}


REQUESTS = [
    ("/items/7", {"authorization": "Bearer ok"}),
    ("/items/0", {"authorization": "Bearer ok"}),
    ("/items/abc", {"authorization": "Bearer ok"}),
    ("/items/99999999999999999999999", {"authorization": "Bearer ok"}),
    ("/items/7", {}),
    ("/items/abc", {}),
    ("/items?status=OK&limit=5", {"authorization": "Bearer ok"}),
    ("/items?status=bad&limit=0&extra=1", {"authorization": "Bearer ok"}),
    ("/items?limit=x", {}),
    ("/named/3?page=2", {"authorization": "Bearer ok", "accept": "text/html"}),
    ("/with-session", {"authorization": "Bearer ok"}),
    ("/model", {"authorization": "Bearer ok"}),
]


async def answers(app: FastAPI) -> list[tuple[int, bytes, list[tuple[str, str]]]]:
    transport = httpx.ASGITransport(app=app)
    out = []
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path, headers in REQUESTS:
            response = await client.get(path, headers=headers)
            out.append((response.status_code, response.content, list(response.headers.items())))
    return out


async def test_lean_routes_answer_exactly_as_fastapis_own_handler() -> None:
    calls.clear()
    lean = await answers(build(LeanRoute))
    lean_guard_calls = len(calls)
    calls.clear()
    stock = await answers(build(APIRoute))
    assert lean == stock
    assert lean_guard_calls == len(calls) == len(REQUESTS)  # each request: the guard once


@pytest.mark.parametrize("route_class", [LeanRoute, APIRoute])
async def test_dependency_overrides_take_fastapis_own_handler(route_class: type[APIRoute]) -> None:
    app = build(route_class)

    async def let_in(request: Request) -> str:
        return "override"

    app.dependency_overrides[guard] = let_in
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/items/5")
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/items/{item_id}", "/items"])
def test_the_openapi_document_is_the_same_for_lean_routes(path: str) -> None:
    assert build(LeanRoute).openapi()["paths"][path] == build(APIRoute).openapi()["paths"][path]
