"""One error path: domain exceptions carry their OpenAI error type, status and code.

Every error a client sees is rendered from a `HearthError` by `gateway.api.errors`
into the OpenAI error body ``{"error": {"message", "type", "param", "code"}}``
(https://platform.openai.com/docs/guides/error-codes). Nothing else builds error bodies.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HearthError(Exception):
    """Base of every error that reaches a client; subclasses set status, type and code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """`extra`: more members of the error object, e.g. Globus's ``authorization_parameters``."""
        super().__init__(message)
        self.message = message
        self.param = param
        self.error_code = code if code is not None else self.code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.error_code,
                **self.extra,
            }
        }


class InvalidRequest(HearthError):
    """400: the body is not JSON, or a field is missing or of the wrong type."""

    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(HearthError):
    """401: no credentials, or credentials that are not valid."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(HearthError):
    """403: the caller is known but may not do this."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(HearthError):
    """404: no such route or object (also used instead of 403 to avoid leaking ids)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """404 with code model_not_found, as OpenAI answers for an unknown model."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


class MethodNotAllowed(HearthError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(HearthError):
    """413: the request body is over the configured limit."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(HearthError):
    """429: a quota or rate limit was hit; carries Retry-After."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    """429: a daily token budget is spent; carries Retry-After (the next UTC day)."""

    type = "insufficient_quota"
    code = "quota_exceeded"


class UpstreamError(HearthError):
    """502: the worker answered badly (5xx, broken response, connection dropped)."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamUnavailable(HearthError):
    """503: no worker can take the request now (none configured up, all failing)."""

    status = 503
    type = "server_error"
    code = "upstream_unavailable"


class UpstreamTimeout(HearthError):
    """504: the worker did not answer in time."""

    status = 504
    type = "server_error"
    code = "upstream_timeout"


class ServiceUnavailable(HearthError):
    """503: a dependency of the gateway itself (store, Redis) is down."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class InternalError(HearthError):
    """500: a bug. The message never carries a stack trace, only the request id."""

    status = 500
    type = "server_error"
    code = "internal_error"
