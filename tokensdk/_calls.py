"""The session's calls to its backend: DPoP proofs, OAuth 2.0 discovery, what a failure means.

:class:`BackendCalls` sends a backend's :class:`Call` through the transport (a fresh
DPoP proof per attempt, one retry with the server's nonce), refines a failure with
the backend's word on it, and resolves an OAuth 2.0 backend's endpoints once.
Discovery replaces the backend with one that knows its endpoints: read
:attr:`BackendCalls.backend` for the current one. :func:`send_call` sends a resource
call (asset tokens, MAC tokens) for a component, as the backend built it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, cast

from tokensdk._backend import AccessExpired, AuthBackend, Call, GrantBackend, Lost
from tokensdk._dpop import DPoPState
from tokensdk._errors import InvalidInput, NotFound, ServiceError, TokenSDKError
from tokensdk._transport import Reply, Transport

__all__ = ["BackendCalls", "send_call"]


class BackendCalls:
    """Sends a backend's calls for a session.

    Args:
        backend: The backend (replaced by discovery, see :attr:`backend`).
        transport: The session's transport.
        dpop: The DPoP proof state, when the backend binds tokens to a key.

    Attributes:
        backend: The current backend.
    """

    def __init__(self, backend: AuthBackend, transport: Transport, dpop: DPoPState | None) -> None:
        self.backend = backend
        self._transport = transport
        self._dpop = dpop
        # Checked once: a runtime Protocol check costs tens of microseconds, and the
        # refresh path asks on every refresh.
        self._grants = isinstance(backend, GrantBackend)
        self._discovering = asyncio.Lock()

    async def send(
        self, call: Call, *, bearer: str | None = None, deadline: float | None = None
    ) -> Reply:
        dpop = self._dpop
        headers: Any = call.headers
        if dpop is not None and call.path == getattr(self.backend, "token_endpoint", None):

            async def headers() -> Mapping[str, str]:
                # A fresh proof (new jti, the latest nonce) for every attempt.
                return {**(call.headers or {}), "DPoP": await dpop.proof(call.method, call.path)}

        send = partial(
            self._transport.call,
            call.method,
            call.path,
            call.body,
            bearer=bearer,
            deadline=deadline,
            retry=call.retry,
            headers=headers,
            form=call.form,
        )
        if dpop is None and not self._grants:
            # The native contract: no proof to make, no OAuth 2.0 error to refine.
            return await send()
        try:
            try:
                return await send()
            except ServiceError as exc:
                if dpop is None or exc.error != "use_dpop_nonce":
                    raise
            # RFC 9449 §8: the server wants its nonce in the proof (the transport kept
            # the DPoP-Nonce it sent); once, so a server that keeps refusing fails.
            return await send()
        except TokenSDKError as exc:
            backend = self.backend
            if isinstance(backend, GrantBackend):
                refined = backend.refine(exc)
                if refined is not exc:
                    raise refined from None
            raise

    async def discover(self) -> None:
        """Read the backend's endpoint metadata once (OAuth 2.0 discovery), if it needs any."""
        if not self._grants:
            return
        backend = cast(GrantBackend, self.backend)
        if not backend.discovery():
            return
        async with self._discovering:
            backend = cast(GrantBackend, self.backend)  # another call may have resolved it
            calls = backend.discovery()
            for index, call in enumerate(calls):
                try:
                    reply = await self.send(call)
                except NotFound:
                    if index == len(calls) - 1:
                        raise
                    continue  # no OpenID Connect document: try RFC 8414's
                self.backend = backend.discovered(reply.body)
                return

    def gone(self, error: TokenSDKError) -> Lost | AccessExpired | None:
        """The backend's word on a failed call, when it means the activation is at stake."""
        outcome = self.backend.classify(error)
        return outcome if isinstance(outcome, Lost | AccessExpired) else None


async def send_call(
    transport: Transport,
    call: Call,
    *,
    bearer: str | Callable[[], Awaitable[str]] | None = None,
) -> Reply:
    """Send a resource call (:class:`~tokensdk.ResourceBackend`) as it is.

    Args:
        transport: The transport below the backend's API root.
        call: The call.
        bearer: The access token, or an async callable asked again for every
            attempt; sent only when the call asks for it (``call.bearer``).

    Raises:
        InvalidInput: The call needs a bearer and none was given.
    """
    if call.bearer and bearer is None:
        raise InvalidInput("this call needs the session's access token")
    return await transport.call(
        call.method,
        call.path,
        call.body,
        bearer=bearer if call.bearer else None,
        retry=call.retry,
        headers=call.headers,
        form=call.form,
    )
