"""Pieces of the login flows the Session runs: input checks, PKCE, device-code polling.

The login methods stay on :class:`Session` (they commit the grant); what they share
and what does not touch the session's state lives here.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tokensdk._backend import Call
from tokensdk._clock import Clock
from tokensdk._errors import InvalidCredentials, InvalidInput, ServiceError
from tokensdk._transport import Reply

if TYPE_CHECKING:  # annotations only: `import tokensdk` does not load the OAuth 2.0 backend
    from tokensdk._oauth2 import DeviceCode, OAuth2

__all__ = ["check_text", "pkce_pair", "poll_device"]


def check_text(name: str, value: object) -> None:
    """Refuse a login input that is not a non-empty string of sane length.

    Raises:
        InvalidInput: It is not.
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{name} must be a non-empty string")
    if len(value) > 4096:
        raise InvalidInput(f"{name} is too long")


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        .rstrip(b"=")
        .decode("ascii")
    )
    return verifier, challenge


async def poll_device(
    send: Callable[[Call], Awaitable[Reply]],
    clock: Clock,
    backend: OAuth2,
    code: DeviceCode,
    expires: float,
) -> Reply:
    """Poll the token endpoint until the user approves the device code (RFC 8628 §3.4).

    Args:
        send: Sends a call as the session does.
        clock: The session's clock (the waits between polls).
        backend: The OAuth 2.0 backend that issued ``code``.
        code: The device code.
        expires: Monotonic time the code expires.

    Returns:
        The token endpoint's answer granting the tokens.

    Raises:
        InvalidCredentials: The code expired, or the user refused.
    """
    interval = code.interval
    while True:
        if clock.monotonic() + interval >= expires:
            raise InvalidCredentials(
                "the device code expired before the user approved it",
                status=400,
                error="expired_token",
            )
        await clock.sleep_until(clock.monotonic() + interval)
        try:
            return await send(backend.device_poll(code))
        except ServiceError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += 5  # RFC 8628 §3.5: for this and every later poll
                continue
            raise
