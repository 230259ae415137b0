"""Health answers; the seed's shape for GET /health."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

UpDown = Literal["UP", "DOWN"]


class Health(BaseModel):
    service: str
    version: str
    status: UpDown
    database_status: UpDown
    timestamp: datetime


class Readiness(BaseModel):
    status: UpDown
    database_status: UpDown
    schema_revision: str | None
    expected_revision: str | None
    reason: str | None = Field(
        None,
        description="Why it is not ready, e.g. `database unreachable` or "
        "`schema at 0004, head is 0005`; null when ready",
    )
