"""Contract errors of the service: :class:`ApiError` and the refusals of a bearer token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ApiError", "BearerRejected", "account_frozen"]


class ApiError(Exception):
    """A contract error: rendered as ``{"error", "code", "message"}`` with ``status``.

    Args:
        status: The HTTP status.
        error: The contract's snake_case error name.
        message: Text for humans; never contains a secret.
        code: The contract's numeric code (defaults to ``status``).
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
        extra: Extra body fields (e.g. ``reason``).
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        code: int | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.code = status if code is None else code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BearerRejected(ApiError):
    """A presented token was refused, with ``WWW-Authenticate: Bearer error="invalid_token"``.

    Args:
        message: Text for humans.
        expired: Whether the token was only too old (the service counts those apart).
        code: The contract's numeric code (701 for ``token_expired``).
        error: The contract's error name.
    """

    def __init__(
        self,
        message: str,
        *,
        expired: bool = False,
        code: int = 401,
        error: str = "invalid_token",
    ) -> None:
        super().__init__(
            401,
            error,
            message,
            code=code,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
        self.expired = expired


def account_frozen() -> ApiError:
    """The 403 ``account_frozen`` refusal."""
    return ApiError(403, "account_frozen", "the account is frozen")
