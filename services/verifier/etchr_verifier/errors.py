"""How the verifier reports a failure, in one place for JSON responses and for streams already under way.

A stream has sent its 200 before EVR can fail, so there the error travels as an event holding the same
error body (``{"error": {...}}``, which the openai client raises as ``APIError``). ``Retry-After`` only where
waiting helps: a busy or down MLLM, never a missing configuration (asking again cannot help). Where asking
again cannot help, ``x-should-retry: false`` also tells the OpenAI SDKs, which retry every 5xx by default.
"""

from __future__ import annotations

import logging

from etchr.http import NO_RETRY_HEADERS, ServiceError
from etchr.imaging import ImageError
from etchr.mllm import MLLMNotConfigured, MLLMRejected, MLLMUnavailable
from etchr.protocol.errors import ErrorBody, ErrorDetail

logger = logging.getLogger("etchr.verifier.errors")

RETRY_AFTER_MLLM_UNAVAILABLE_S = "5"


def as_service_error(exc: Exception) -> ServiceError | None:
    """``exc`` as the status and error type the verifier answers with, or None for an unexpected error."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, MLLMUnavailable):
        headers = {"Retry-After": RETRY_AFTER_MLLM_UNAVAILABLE_S}
        return ServiceError(503, "mllm_unavailable", str(exc), headers=headers)
    if isinstance(exc, MLLMNotConfigured):
        return ServiceError(503, "mllm_not_configured", str(exc), headers=dict(NO_RETRY_HEADERS))
    if isinstance(exc, MLLMRejected):  # the same request gets the same refusal (or the same cut)
        return ServiceError(502, "mllm_rejected", str(exc), headers=dict(NO_RETRY_HEADERS))
    if isinstance(exc, ImageError):
        return ServiceError(400, "invalid_image", str(exc))
    return None


def error_body(exc: Exception) -> ErrorBody:
    """The error body for a failure inside a stream; an unexpected one is logged and reads as internal."""
    known = as_service_error(exc)
    if known is None:
        logger.error("unhandled error in a stream", exc_info=exc)
        return ErrorBody(error=ErrorDetail(type="internal_error", message="internal server error"))
    return ErrorBody(error=ErrorDetail(type=known.type, message=known.message, param=known.param))
