"""Who is calling: the `Caller` of the request being handled, readable anywhere in it.

The auth dependency sets it; services read `current_caller()` instead of taking a new
argument (the event log's `actor`, idempotency's client id). This module imports
nothing of the app, so models and services can use it without import cycles.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

SCOPES: frozenset[str] = frozenset({"read", "charge", "refund"})
DEFAULT_CLIENT_ID = "default"
"""Idempotency's client id for unauthenticated callers (AUTH_REQUIRED=false)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated API client (or the default client when auth is off)."""

    client_id: str
    """Scopes idempotency keys: two clients never see each other's stored answers."""
    name: str
    """Human-readable and unique; recorded as the `actor` of payment events."""
    scopes: frozenset[str]
    rate_limit_per_minute: int | None = None
    """The key's own budget per scope and minute, else the RATE_LIMIT_*_PER_MINUTE defaults."""
    key_prefix: str | None = None
    """The public prefix of the key used (None for the default client); safe to log."""

    @property
    def authenticated(self) -> bool:
        return self.key_prefix is not None


DEFAULT_CALLER = Caller(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_ID, SCOPES)

_caller: ContextVar[Caller | None] = ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    """The caller of the request being handled; None outside an authorised route."""
    return _caller.get()


def current_actor() -> str | None:
    """The acting client's name for audit records (None outside a request, e.g. the worker)."""
    caller = _caller.get()
    return caller.name if caller is not None else None


def set_caller(caller: Caller | None) -> object:
    """Bind the caller for the rest of this request; returns a token for `reset_caller`."""
    return _caller.set(caller)


def reset_caller(token: object) -> None:
    _caller.reset(token)  # type: ignore[arg-type]
