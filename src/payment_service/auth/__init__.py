"""Authentication and the caller of a request (SPEC §7a).

- `caller`: the `Caller` dataclass and `current_caller()` (a ContextVar), import-light.
- `keys`: generating, parsing and hashing API keys.
- `store`: finding a key's caller, cached briefly in process.
- `guard`: the FastAPI dependencies that authenticate, rate-limit and check scopes.
"""

from payment_service.auth.caller import DEFAULT_CALLER, SCOPES, Caller, current_caller

__all__ = ["DEFAULT_CALLER", "SCOPES", "Caller", "current_caller"]
