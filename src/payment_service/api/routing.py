"""Route classes: request JSON with Decimal money, and a lean handler for simple routes."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine, Sequence
from decimal import Decimal
from typing import Any, Protocol

from fastapi import Request, Response, params
from fastapi._compat import ModelField
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import (
    get_typed_return_annotation,
    get_validation_alias,
    request_params_to_args,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope, Send


class LeanRoute(APIRoute):
    """An APIRoute that skips FastAPI's generic per-request machinery where a route
    needs none of it.

    For every request FastAPI opens two AsyncExitStacks, wraps the handler in its own
    exception layer (the app's ExceptionMiddleware, outside the router, has the same
    handlers), then solves the dependency tree generically: cache keys, override
    lookups, a pass over path, query, header and cookie parameters at each level.
    That was a third of a GET /v1/payments/{id}'s CPU. A route qualifies (`LeanPlan.of`)
    when all it takes is the request, parameters from the path, query, headers or
    cookies, and dependencies that themselves take only the request (the scope guard);
    its endpoint must be a coroutine returning a Response. Its handler then calls those
    dependencies, validates the parameters as FastAPI does (each path parameter with its
    ModelField, the others with `request_params_to_args`, so a bad value is the same 422,
    errors in the same order) and awaits the endpoint.
    Anything else (a body, a yield dependency, a Depends with parameters, dependency
    overrides set on the app, as tests do) takes FastAPI's own path, unchanged; the
    OpenAPI document comes from the same Dependant either way.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.lean_plan = LeanPlan.of(self.dependant, set(self.param_convertors))
        if self.lean_plan is not None and self.app is not None:
            self.stock_app = self.app  # FastAPI's own (dependency overrides take it)
            self.app = self._lean_app

    async def _lean_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        provider = self.dependency_overrides_provider
        if provider is not None and getattr(provider, "dependency_overrides", None):
            await self.stock_app(scope, receive, send)
            return
        assert self.lean_plan is not None
        request = Request(scope, receive, send)
        response = await self.lean_plan.run(request)
        await response(scope, receive, send)


class LeanPlan:
    """What a lean route does per request, worked out once from its Dependant."""

    __slots__ = ("call", "guards", "params", "path_fields", "request_param")

    def __init__(
        self,
        call: Callable[..., Coroutine[Any, Any, Response]],
        guards: Sequence[tuple[str | None, Callable[[Request], Coroutine[Any, Any, Any]]]],
        path_fields: Sequence[tuple[ModelField, str]],
        params: Sequence[tuple[str, Sequence[Any]]],
        request_param: str | None,
    ) -> None:
        self.call = call
        self.guards = tuple(guards)
        self.path_fields = tuple(path_fields)
        self.params = tuple(params)
        self.request_param = request_param

    @classmethod
    def of(cls, dependant: Dependant, path_names: set[str]) -> LeanPlan | None:
        """The plan for `dependant` on a route whose path template names `path_names`, or
        None when the route needs FastAPI's own handler."""
        call = dependant.call
        if call is None or not _is_coroutine_function(call):
            return None
        if _uses_more_than_the_request(dependant, ignore_params=True):
            return None
        answer = get_typed_return_annotation(call)
        if not (inspect.isclass(answer) and issubclass(answer, Response)):
            return None  # FastAPI would serialise it through the response model
        guards = []
        seen: list[Callable[..., Any]] = []
        for sub in dependant.dependencies:
            sub_call = sub.call
            if (
                sub_call is None
                or sub_call in seen  # FastAPI calls a repeated dependency once (its cache)
                or not _is_coroutine_function(sub_call)
                or sub.dependencies
                or sub.request_param_name is None
                or _uses_more_than_the_request(sub, ignore_params=False)
            ):
                return None
            seen.append(sub_call)
            guards.append((sub.name, _bound_to_request(sub_call, sub.request_param_name)))
        path_fields = [(field, get_validation_alias(field)) for field in dependant.path_params]
        if any(
            not isinstance(field.field_info, params.Path)
            or field.field_info.validation_alias is not None
            or key not in path_names
            for field, key in path_fields
        ):
            return None  # an alias path or choices, or a name the template lacks
        params_by_source = [
            (source, fields)
            for source, fields in (
                ("query", dependant.query_params),
                ("header", dependant.header_params),
                ("cookie", dependant.cookie_params),
            )
            if fields
        ]
        return cls(call, guards, path_fields, params_by_source, dependant.request_param_name)

    async def run(self, request: Request) -> Response:
        """Dependencies first, then the parameters, as `solve_dependencies` orders them."""
        values: dict[str, Any] = {}
        for name, guard in self.guards:
            solved = await guard(request)
            if name is not None:
                values[name] = solved
        errors: list[Any] = []
        # What request_params_to_args ends in for a path parameter, which the router
        # always matched (a string), without its per-request look at the annotation.
        path_params = request.path_params
        for field, key in self.path_fields:
            value, failed = field.validate(path_params[key], values, loc=("path", key))
            if failed:
                errors += failed
            else:
                values[field.name] = value
        for source, fields in self.params:
            found, failed = request_params_to_args(fields, _received(request, source))
            values.update(found)
            errors += failed
        if errors:
            raise RequestValidationError(errors, body=None)
        if self.request_param is not None:
            values[self.request_param] = request
        return await self.call(**values)


def _received(request: Request, source: str) -> Any:
    if source == "query":
        return request.query_params
    if source == "header":
        return request.headers
    return request.cookies


def _is_coroutine_function(call: Callable[..., Any]) -> bool:
    if inspect.isroutine(call):
        return inspect.iscoroutinefunction(call)
    return inspect.iscoroutinefunction(getattr(call, "__call__", None))  # noqa: B004


def _uses_more_than_the_request(dependant: Dependant, *, ignore_params: bool) -> bool:
    """Whether FastAPI must supply something beyond the request (and, unless
    `ignore_params`, beyond no parameters at all)."""
    special = (
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
    )
    if any(name is not None for name in special) or dependant.body_params:
        return True
    if ignore_params:
        return False
    return bool(
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
    )


def _bound_to_request(
    call: Callable[..., Coroutine[Any, Any, Any]], param: str
) -> Callable[[Request], Coroutine[Any, Any, Any]]:
    if param == "request":
        return call

    def bound(request: Request) -> Coroutine[Any, Any, Any]:
        return call(**{param: request})

    return bound


class _DecimalJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_float=Decimal)
        return self._json


class MoneyRoute(LeanRoute):
    """Parse request JSON with `parse_float=Decimal` (stdlib json, so FastAPI still
    recognises a malformed body and answers 400). Routes without a body may be lean."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def decimal_handler(request: Request) -> Response:
            return await handler(_DecimalJSONRequest(request.scope, request.receive))

        return decimal_handler


class IdempotentOutcome(Protocol):
    """What the charge, refund, tip and adjustment services answer with."""

    @property
    def status_code(self) -> int: ...

    @property
    def body(self) -> bytes: ...

    @property
    def replayed(self) -> bool: ...


def idempotent_response(outcome: IdempotentOutcome) -> Response:
    """The stored (or just recorded) answer, marked `Idempotent-Replayed` on a replay."""
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return Response(
        outcome.body,
        status_code=outcome.status_code,
        media_type="application/json",
        headers=headers,
    )
