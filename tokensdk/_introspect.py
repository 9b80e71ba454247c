"""RFC 7662 token introspection for resource servers that validate opaque tokens.

:func:`introspect` asks the provider's introspection endpoint (authenticated as the
backend's client) whether a token is active, and keeps the answer in a bounded cache
until the token's ``exp`` or ``max_age`` seconds, whichever comes first; inactive
answers are kept ``negative_age`` seconds. Cache keys are SHA-256 digests, never the
tokens themselves.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from tokensdk._clock import Clock, SystemClock
from tokensdk._errors import InvalidInput, NotFound, ProtocolError, TokenSDKError
from tokensdk._oauth2 import OAuth2
from tokensdk._transport import Transport

__all__ = ["IntrospectionCache", "TokenInfo", "introspect"]


@attrs.frozen
class TokenInfo:
    """What the provider says about a token (RFC 7662 §2.2).

    Attributes:
        active: Whether the token is active; every other field is empty when not.
        subject: ``sub``, the resource owner (None for a client's own token).
        client_id: The client the token was issued to.
        scope: The granted scopes, space-separated.
        expires_at: ``exp`` as Unix seconds, if given.
        token_type: ``Bearer`` or ``DPoP``, if given.
        claims: Every member of the answer (``iss``, ``iat``, ``cnf``, ...).
    """

    active: bool
    subject: str | None = None
    client_id: str | None = None
    scope: str | None = None
    expires_at: float | None = None
    token_type: str | None = None
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    @classmethod
    def from_response(cls, body: Mapping[str, Any]) -> TokenInfo:
        """Parse an introspection answer.

        Raises:
            ProtocolError: ``active`` is missing or not a boolean.
        """
        active = body.get("active")
        if not isinstance(active, bool):
            raise ProtocolError("the introspection answer has no boolean 'active'")
        if not active:
            return cls(False)
        exp = body.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
            exp = None

        def text(name: str) -> str | None:
            value = body.get(name)
            return value if isinstance(value, str) else None

        return cls(
            True,
            subject=text("sub"),
            client_id=text("client_id"),
            scope=text("scope"),
            expires_at=None if exp is None else float(exp),
            token_type=text("token_type"),
            claims=dict(body),
        )


class IntrospectionCache:
    """A bounded, least-recently-used cache of introspection answers.

    Args:
        max_entries: Most answers kept; the least recently used go first.
        max_age: Longest time an active answer is trusted, in seconds (a token
            revoked meanwhile stays "active" here for up to this long).
        negative_age: How long an inactive answer is kept.
    """

    def __init__(
        self, max_entries: int = 10_000, max_age: float = 60.0, negative_age: float = 5.0
    ) -> None:
        if max_entries < 1 or max_age < 0 or negative_age < 0:
            raise InvalidInput("cache sizes and ages must be positive")
        self.max_entries = max_entries
        self.max_age = max_age
        self.negative_age = negative_age
        self._entries: OrderedDict[bytes, tuple[float, TokenInfo]] = OrderedDict()
        # Endpoint metadata discovered per backend: discovery runs once per issuer.
        self._backends: dict[OAuth2, OAuth2] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> TokenInfo | None:
        """The cached answer for ``key``, if still valid at wall time ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        until, info = entry
        if now >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return info

    def put(self, key: bytes, info: TokenInfo, now: float) -> None:
        """Keep ``info`` until its ``exp`` or the cache's age limit."""
        until = now + (self.max_age if info.active else self.negative_age)
        if info.expires_at is not None:
            until = min(until, info.expires_at)
        if until <= now:
            return
        self._entries[key] = (until, info)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


_DEFAULT_CACHE = IntrospectionCache()


async def introspect(
    token: str,
    backend: OAuth2,
    *,
    http: aiohttp.ClientSession | None = None,
    cache: IntrospectionCache | None = None,
    clock: Clock | None = None,
    request_timeout: float = 10.0,
) -> TokenInfo:
    """Ask the provider whether ``token`` is active (RFC 7662), with a cache.

    Args:
        token: The access token a client presented.
        backend: The provider and the client that may introspect (a resource
            server's own client id and secret).
        http: An aiohttp session to use (a short-lived one otherwise).
        cache: Where answers are kept (default: one shared by the process).
        clock: The clock the cache ages by.
        request_timeout: Seconds one request may take.

    Returns:
        What the provider said; ``active`` False for unknown, expired or revoked
        tokens.

    Raises:
        InvalidInput: The token is empty, or the provider has no introspection endpoint.
        InvalidClient: The provider refused the client.
        ServiceUnavailable: The provider could not be reached.
        ProtocolError: The answer is not an introspection answer.
    """
    if not isinstance(token, str) or not token:
        raise InvalidInput("token must be a non-empty string")
    cache = _DEFAULT_CACHE if cache is None else cache
    clock = clock or SystemClock()
    resolved = cache._backends.get(backend, backend)
    key = hashlib.sha256(
        f"{resolved.introspection_endpoint or resolved.issuer}\0{backend.client_id}\0".encode()
        + token.encode()
    ).digest()
    found = cache.get(key, clock.time())
    if found is not None:
        return found
    transport = Transport(
        backend.issuer,
        clock,
        http=http,
        timeout=request_timeout,
        error_details=backend.error_details,
    )
    try:
        if resolved.token_endpoint is None:
            resolved = await _discover(transport, backend)
            cache._backends[backend] = resolved
            key = hashlib.sha256(
                f"{resolved.introspection_endpoint}\0{backend.client_id}\0".encode()
                + token.encode()
            ).digest()
        call = resolved.introspection(token)
        if call is None:
            raise InvalidInput("the provider has no introspection endpoint")
        try:
            reply = await transport.call(
                call.method, call.path, headers=call.headers, form=call.form, retry=call.retry
            )
        except TokenSDKError as exc:
            refined = resolved.refine(exc)
            if refined is not exc:
                raise refined from None
            raise
    finally:
        await transport.aclose()
    info = TokenInfo.from_response(reply.body)
    cache.put(key, info, clock.time())
    return info


async def _discover(transport: Transport, backend: OAuth2) -> OAuth2:
    calls = backend.discovery()
    for index, call in enumerate(calls):
        try:
            reply = await transport.call(call.method, call.path)
        except NotFound:
            if index == len(calls) - 1:
                raise
            continue
        return backend.discovered(reply.body)
    return backend
