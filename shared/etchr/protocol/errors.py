"""The one error body every service returns (SPEC §5)."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """OpenAI's error shape, so SDKs read it: ``param`` names the request field at fault, when one is."""

    type: str
    message: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
