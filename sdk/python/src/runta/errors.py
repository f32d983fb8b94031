"""Errors raised by the SDK.

Every failure is a :class:`RuntaError` carrying the server's ``status``, ``code`` and
``message`` (the admin API answers ``{"error": {"code", "message"}}``), so callers can catch one
type. Subclasses sort them by what a caller does about it: fix the request
(:class:`InvalidRequestError`), fix the credential (:class:`AuthenticationError`,
:class:`PermissionDeniedError`), handle absence or conflict (:class:`NotFoundError`,
:class:`ConflictError`), or try again later (:class:`UnavailableError`).

The server never quotes a secret value in a message, and the SDK builds its own messages from
the method, the path and the error class only, so no error carries a value that was sent.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type


class RuntaError(Exception):
    """An error of the runta admin API, or of reaching it.

    ``status`` is the HTTP status, or ``None`` when no answer came (connection failure,
    timeout) or the SDK refused a request before sending it.
    """

    def __init__(self, message: str, *, status: Optional[int] = None, code: str = "error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no HTTP status"
        return f"{self.message} ({where}, {self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class InvalidRequestError(RuntaError, ValueError):
    """400 (the message names the field), 405 or 413; also raised before sending a request the
    SDK can tell is invalid, such as an :class:`~runta.Injection` with both header and param."""


class AuthenticationError(RuntaError):
    """401: missing or invalid API key or operator token."""


class PermissionDeniedError(RuntaError):
    """403: a valid credential that may not make this call (an API key managing tenants)."""


class NotFoundError(RuntaError):
    """404: no such secret, rule, token or key in the caller's tenant."""


class ConflictError(RuntaError):
    """409: already exists, still in use (a secret rules use), or changed concurrently."""


class UnavailableError(RuntaError):
    """503 (the server's database is unavailable), 502/504 from a proxy in front of it, or
    no answer at all (the subclasses). Idempotent calls have been retried before this is raised."""


class APIConnectionError(UnavailableError):
    """The server could not be reached: connection refused, reset or closed early."""


class APITimeoutError(UnavailableError):
    """The server did not answer within the client's timeout."""


_BY_STATUS: Dict[int, Type[RuntaError]] = {
    400: InvalidRequestError,
    405: InvalidRequestError,
    413: InvalidRequestError,
    422: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    502: UnavailableError,
    503: UnavailableError,
    504: UnavailableError,
}


def error_from_response(status: int, reason: str, content: bytes) -> RuntaError:
    """The error for a non-2xx answer: the server's code and message when the body has the API's
    error shape, else the status line (a proxy's HTML page is not worth quoting)."""
    code, message = "http_error", f"HTTP {status} {reason}".strip()
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
        if isinstance(detail.get("code"), str):
            code = detail["code"]
        if isinstance(detail.get("message"), str):
            message = detail["message"]
    cls = _BY_STATUS.get(status, RuntaError)
    return cls(message, status=status, code=code)
