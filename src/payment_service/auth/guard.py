"""The FastAPI dependencies that guard a route: who calls, within budget, allowed to.

`Security(ScopeGuard("refund"))` on a route (`RequireRefund`) does, in order:
1. find the caller from `Authorization: Bearer <key>` (cached lookups, see `store`);
2. count the request against the caller's budget for that scope — per key's client,
   else per address, before any 401, so guessing keys is rate-limited too;
3. 401 (with `WWW-Authenticate: Bearer`) for a missing, unknown or revoked key when
   AUTH_REQUIRED, 403 when the key lacks the scope;
4. bind the caller for the request (`current_caller()`, `CallerDep`).

With AUTH_REQUIRED=false a request without a key is the default client with every
scope; a request with a key is still that key's client (and a bad key still a 401).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from payment_service.auth.caller import DEFAULT_CALLER, Caller, set_caller
from payment_service.auth.keys import KEY_PATTERN, mask
from payment_service.auth.store import KeyStore
from payment_service.errors import PROBLEM_SCHEMA, PaymentServiceError, ServiceUnavailableError
from payment_service.ratelimit import QUOTA_STATE_KEY, RateLimiter

log = logging.getLogger(__name__)

SCHEME_NAME = "apiKey"
CALLER_STATE_KEY = "caller"

BEARER_FORMAT = "psk_<prefix>_<secret>"
SCHEME_DESCRIPTION = (
    "An API key from `payment-service api-keys create`, sent as "
    "`Authorization: Bearer psk_…`. Each operation names the scope it needs "
    "(`x-required-scope`): `read` (GET routes), `charge` or `refund`."
)


class UnauthenticatedError(PaymentServiceError):
    status = 401
    type = "unauthenticated"
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="payment-service"'})


class ForbiddenError(PaymentServiceError):
    status = 403
    type = "forbidden"
    title = "Forbidden"


class Guard:
    """Per-app authentication and rate limiting (held on `app.state.guard`)."""

    def __init__(self, *, auth_required: bool, keys: KeyStore, limiter: RateLimiter) -> None:
        self.auth_required = auth_required
        self.keys = keys
        self.limiter = limiter

    async def identify(self, key: str | None) -> Caller | str:
        """The caller, or why there is none (a 401 detail)."""
        if key is None:
            return "Send an API key: Authorization: Bearer <key>."
        try:
            caller = await self.keys.caller_for(key)
        except (DBAPIError, PoolTimeoutError, OSError, TimeoutError) as exc:
            log.warning("API key lookup failed", extra={"error": type(exc).__name__})
            raise ServiceUnavailableError(
                "Cannot check API keys right now; retry shortly.", headers={"Retry-After": "1"}
            ) from None
        if caller is None:
            match = KEY_PATTERN.match(key)
            log.info(
                "rejected an API key",
                extra={"key": mask(match.group(1)) if match else "(malformed)"},
            )
            return "The API key is unknown or revoked."
        return caller

    async def authorize(
        self,
        request: Request,
        key: str | None,
        scope: str,
    ) -> Caller:
        found = await self.identify(key)
        caller = found if isinstance(found, Caller) else None
        if caller is None and not self.auth_required and key is None:
            caller = DEFAULT_CALLER
        if caller is not None and caller.authenticated:
            identity = f"client:{caller.client_id}"
        else:
            identity = f"addr:{request.client.host if request.client else 'unknown'}"
        quota = await self.limiter.check(
            scope, identity, caller.rate_limit_per_minute if caller else None
        )
        if quota is not None:
            request.scope.setdefault("state", {})[QUOTA_STATE_KEY] = quota
        if caller is None:
            raise UnauthenticatedError(str(found))
        if scope not in caller.scopes:
            raise ForbiddenError(
                f"This API key lacks the {scope!r} scope "
                f"(it has: {', '.join(sorted(caller.scopes))})."
            )
        request.scope.setdefault("state", {})[CALLER_STATE_KEY] = caller
        set_caller(caller)
        return caller


class ScopeGuard(HTTPBearer):
    """The dependency authorising `scope`: `Security(ScopeGuard("read"))` on a route.

    It is FastAPI's HTTPBearer (so OpenAPI documents the `apiKey` scheme on every
    guarded operation) that also authorises, reading the key with `bearer_key`. One
    dependency node rather than a scope function over `Security(bearer)`: FastAPI solves
    the dependency tree on every request, each level a full pass over its parameters.
    """

    def __init__(self, scope: str) -> None:
        super().__init__(
            auto_error=False,
            scheme_name=SCHEME_NAME,
            bearerFormat=BEARER_FORMAT,
            description=SCHEME_DESCRIPTION,
        )
        self.required_scope = scope
        self.__name__ = f"require_{scope}_scope"

    async def __call__(self, request: Request) -> Caller:  # type: ignore[override]
        guard: Guard = request.app.state.guard
        return await guard.authorize(request, bearer_key(request), self.required_scope)


def bearer_key(request: Request) -> str | None:
    """The key of `Authorization: Bearer <key>`, read as HTTPBearer(auto_error=False) reads
    it (the first Authorization field; the scheme in any case; None when absent or not
    Bearer), straight from the ASGI headers: HTTPBearer builds the request's Headers and a
    pydantic HTTPAuthorizationCredentials for every request."""
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
            break
    else:
        return None
    scheme, key = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and key) or scheme.lower() != "bearer":
        return None
    return key


_SCOPE_DEPENDENCIES = {scope: ScopeGuard(scope) for scope in ("read", "charge", "refund")}
RequireRead = Security(_SCOPE_DEPENDENCIES["read"])
RequireCharge = Security(_SCOPE_DEPENDENCIES["charge"])
RequireRefund = Security(_SCOPE_DEPENDENCIES["refund"])


async def get_caller(request: Request) -> Caller:
    """The caller a scope dependency of this route authorised (route deps run first)."""
    caller: Caller | None = request.scope.get("state", {}).get(CALLER_STATE_KEY)
    if caller is None:
        raise RuntimeError("CallerDep on a route without RequireRead/RequireCharge/RequireRefund")
    return caller


def _required_scope(route: APIRoute) -> str | None:
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        scope: str | None = getattr(dependant.call, "required_scope", None)
        if scope is not None:
            return scope
        pending.extend(dependant.dependencies)
    return None


def document_scopes(router: APIRouter) -> None:
    """Name each guarded operation's scope in OpenAPI (`x-required-scope`, 401/403).

    Run on a module's router before it is included (FastAPI keeps included routers'
    route objects, so this reaches the app's OpenAPI document).
    """
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        scope = _required_scope(route)
        if scope is None:
            continue
        extra: dict[str, Any] = dict(route.openapi_extra or {})
        extra["x-required-scope"] = scope
        route.openapi_extra = extra
        route.responses.setdefault(
            401, {"description": "Missing, unknown or revoked API key", **PROBLEM_SCHEMA}
        )
        route.responses.setdefault(
            403, {"description": f"The API key lacks the {scope!r} scope", **PROBLEM_SCHEMA}
        )
        note = f"Requires an API key with the `{scope}` scope."
        if note not in (route.description or ""):
            route.description = f"{route.description}\n\n{note}".strip()
