"""The one error body every service returns, and how a client reads it back (docs/api.md)."""

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


def error_detail(status: int, content: bytes) -> ErrorDetail:
    """What a service's error response says. A body that is not ours (a proxy's HTML page, a bare 502)
    reads as type ``http_<status>`` with the start of its text, so callers always have a message."""
    try:
        return ErrorBody.model_validate_json(content).error
    except ValueError:
        text = content[:500].decode("utf-8", "replace").strip()
        return ErrorDetail(type=f"http_{status}", message=text or f"HTTP {status}")
