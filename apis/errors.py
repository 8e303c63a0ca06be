"""Errors are part of the API: each maps to one HTTP status and one JSON error body.

Providers raise these; the server answers them as ``{"error": {"status", "type", "message", ...}}`` and
the clients raise the same classes again, so callers handle one set of exceptions whichever transport
they use.

The body is also OpenAI's error object: ``message``, ``type``, ``param`` (the invalid parameter, or null)
and ``code`` (a machine-readable reason, or null) are always there, so OpenAI SDKs read it as they read
OpenAI's own errors.
"""

from __future__ import annotations

from typing import Any


class LlamaStackError(Exception):
    # Each class's own; an instance may differ, as an error rebuilt from an answer or put as OpenAI puts it.
    status: int = 500
    type: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        provider: str | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.provider = provider
        # Seconds after which a retry may succeed; the server sends it as the Retry-After header.
        self.retry_after = retry_after
        # The request parameter at fault; defaults to the first invalid field of `details`.
        self.param = param if param is not None else next((d.get("loc") or None for d in self.details), None)
        self.code = code

    def to_body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "status": self.status,
            "type": self.type,
            "message": self.message,
            "param": self.param,
            "code": self.code,
        }
        if self.details:
            error["details"] = self.details
        if self.provider:
            error["provider"] = self.provider
        return {"error": error}


class BadRequestError(LlamaStackError):
    status = 400
    type = "bad_request"


class AuthenticationError(LlamaStackError):
    status = 401
    type = "unauthorized"

    def __init__(self, message: str, **kwargs: Any):
        kwargs.setdefault("code", "invalid_api_key")
        super().__init__(message, **kwargs)


class NotFoundError(LlamaStackError):
    status = 404
    type = "not_found"


class MethodNotAllowedError(LlamaStackError):
    status = 405
    type = "method_not_allowed"


class ConflictError(LlamaStackError):
    status = 409
    type = "conflict"


class PayloadTooLargeError(LlamaStackError):
    """The request body is larger than the server accepts (``server.max_request_body_bytes``)."""

    status = 413
    type = "payload_too_large"


class ValidationError(LlamaStackError):
    """The request is well-formed JSON but does not match the schema; ``details`` name each field."""

    status = 422
    type = "validation_error"


class NotSupportedError(LlamaStackError):
    """The request is valid but this provider cannot honour it."""

    status = 501
    type = "not_implemented"


class ProviderError(LlamaStackError):
    """A service behind a provider failed."""

    status = 502
    type = "provider_error"


class ServiceUnavailableError(LlamaStackError):
    """Temporarily unable to serve (a full queue, a service down); retrying later may succeed."""

    status = 503
    type = "service_unavailable"


class ProviderTimeoutError(LlamaStackError):
    status = 504
    type = "provider_timeout"


ERRORS_BY_STATUS: dict[int, type[LlamaStackError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        NotFoundError,
        MethodNotAllowedError,
        ConflictError,
        PayloadTooLargeError,
        ValidationError,
        NotSupportedError,
        ProviderError,
        ServiceUnavailableError,
        ProviderTimeoutError,
    )
}


def error_from_body(status: int, body: Any) -> LlamaStackError:
    """Rebuild the exception a server answered (used by the HTTP client)."""
    cls = ERRORS_BY_STATUS.get(status, LlamaStackError)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        exc = cls(f"HTTP {status}: {body!r}"[:2000])
    else:
        exc = cls(
            str(error.get("message", "")),
            details=error.get("details"),
            provider=error.get("provider"),
            param=error.get("param"),
            code=error.get("code"),
        )
    if cls is LlamaStackError:
        exc.status = status
    return exc
