"""Request-scoped dependencies as `Annotated` aliases; the lifespan owns what they hand out.

They are `async def` on purpose: FastAPI runs plain `def` dependencies in its thread pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from payment_service.auth.caller import Caller
from payment_service.auth.guard import get_caller
from payment_service.db import SessionFactory
from payment_service.settings import Settings

if TYPE_CHECKING:
    from payment_service.clients.gateway import PaymentGateway
    from payment_service.clients.trip import TripClient


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session_factory(request: Request) -> SessionFactory:
    return request.app.state.session_factory


async def unit_of_work(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent.

    Declared with `scope="function"` below: FastAPI then runs the exit (commit)
    before sending the response, so a client never sees 2xx for a failed commit.
    An exception rolls everything back.
    """
    async with request.app.state.session_factory() as session, session.begin():
        yield session


async def get_trip_client(request: Request) -> TripClient:
    return request.app.state.trip_client


async def get_gateway(request: Request) -> PaymentGateway:
    return request.app.state.gateway


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(unit_of_work, scope="function")]
SessionFactoryDep = Annotated[SessionFactory, Depends(get_session_factory)]
TripClientDep = Annotated["TripClient", Depends(get_trip_client)]
GatewayDep = Annotated["PaymentGateway", Depends(get_gateway)]
CallerDep = Annotated[Caller, Depends(get_caller)]
"""The authenticated caller of a route guarded by RequireRead/RequireCharge/RequireRefund
(`payment_service.auth.guard`); services may read the same through `current_caller()`."""
