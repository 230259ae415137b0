"""The RFC 9457 problem document, as one shared OpenAPI component (`Problem`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FieldError(BaseModel):
    """One field's error; request validation also names where and what kind it is."""

    model_config = ConfigDict(extra="allow")

    field: str = Field(description="Dotted path of the offending field, e.g. `trip_id`")
    message: str
    location: str | None = Field(None, description="`body`, `query`, `path` or `header`")
    type: str | None = Field(None, description="Machine-readable error kind, e.g. `missing`")


class Problem(BaseModel):
    """Every 4xx/5xx answer; extra members (such as `payment_id`) may appear."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="`/problems/<slug>` (GET it for a description) or `about:blank`",
        examples=["/problems/payment-not-found"],
    )
    title: str
    status: int
    detail: str
    instance: str | None = Field(None, description="The request path")
    errors: list[FieldError] | None = Field(None, description="Field errors of a 422")


class ProblemType(BaseModel):
    type: str = Field(examples=["/problems/payment-not-found"])
    slug: str
    title: str
    status: int
    description: str


class ProblemTypeList(BaseModel):
    problems: list[ProblemType]
    count: int
