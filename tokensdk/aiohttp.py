"""aiohttp client middleware: every request of a ``ClientSession`` authenticated.

Use aiohttp's native client middlewares (aiohttp >= 3.12)::

    async with aiohttp.ClientSession(middlewares=(session.middleware(),)) as http:
        async with http.get(api_url) as response:  # Authorization: Bearer <fresh token>
            ...

    # per request: a named MAC token, or an asset access token instead of the bearer
    http.get(url, middlewares=(session.middleware(mac_token="payments"),))
    http.get(url, middlewares=(session.middleware(asset_id="door-1"),))

Recovery, at most one retry per request and never a loop:

- bearer: a 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` forces one
  refresh (single-flight with the session's own refreshes and every other request;
  a request whose token was already replaced just retries with the new one) and
  retries once; a second 401 is returned to the caller;
- MAC token: a 401 whose JSON ``error`` is ``timestamp_too_old`` or
  ``timestamp_in_future`` syncs the clock with the service and retries once with a
  fresh header;
- DPoP (an :class:`~tokensdk.OAuth2` backend with ``dpop=``): a DPoP-bound token is
  sent as ``Authorization: DPoP`` with a fresh proof (``ath`` = the token's hash);
  a 401 asking for the server's nonce (``error="use_dpop_nonce"``) is retried once
  with it, an ``invalid_token`` refreshes and retries once as for bearer tokens;
- a request whose body cannot be sent twice (a stream, an async generator) is not
  retried: the bearer is still refreshed, then :class:`~tokensdk.InvalidCredentials`
  (``error="invalid_token"``) says so, and resending the request will carry the
  fresh token; a MAC time error on such a body is returned as is after the sync.

A request that already carries ``Authorization`` (or ``X-PowerAuth-Token`` in MAC
mode) is passed through untouched, and so are the session's own login, refresh and
status calls should they reach this middleware.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, payload

from tokensdk._errors import InvalidCredentials
from tokensdk._token_store import TIME_ERRORS
from tokensdk.mac import HEADER_NAME

if TYPE_CHECKING:
    from tokensdk._assets import AccessTokens
    from tokensdk._context import SessionContext
    from tokensdk._token_store import MacTokenStore

__all__ = ["TokenMiddleware"]

log = logging.getLogger("tokensdk")


class TokenMiddleware:
    """Authenticates requests with a :class:`~tokensdk.Session`'s tokens.

    Build it with ``session.middleware(...)``; at most one of ``mac_token`` and
    ``asset_id`` may be given (neither: the session's bearer access token).

    Args:
        context: The context of the session whose tokens are used.
        access_tokens: That session's asset access tokens.
        token_store: That session's named MAC tokens.
        mac_token: Sign requests with this named MAC token (``X-PowerAuth-Token``).
        asset_id: Present this asset's access token as the bearer.

    Raises:
        ValueError: Both ``mac_token`` and ``asset_id`` were given.
    """

    __slots__ = ("_access_tokens", "_asset_id", "_ctx", "_mac_token", "_token_store")

    def __init__(
        self,
        context: SessionContext,
        access_tokens: AccessTokens,
        token_store: MacTokenStore,
        *,
        mac_token: str | None = None,
        asset_id: str | None = None,
    ) -> None:
        if mac_token is not None and asset_id is not None:
            raise ValueError("choose one of mac_token and asset_id")
        self._ctx = context
        self._access_tokens = access_tokens
        self._token_store = token_store
        self._mac_token = mac_token
        self._asset_id = asset_id

    def __repr__(self) -> str:
        mode = (
            f"mac_token={self._mac_token!r}"
            if self._mac_token is not None
            else f"asset_id={self._asset_id!r}"
            if self._asset_id is not None
            else "bearer"
        )
        return f"TokenMiddleware({mode})"

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Authenticate ``request``, send it, and recover once from a stale credential.

        Args:
            request: The outgoing request (its headers are set here).
            handler: The rest of the chain.

        Returns:
            The response (a second refusal is returned as is).
        """
        if self._is_own_call(request):
            return await handler(request)
        if self._mac_token is not None:
            return await self._with_mac(request, handler, self._mac_token)
        if "Authorization" in request.headers:
            return await handler(request)
        if self._asset_id is not None:
            request.headers.update(self._access_tokens.headers_for(self._asset_id))
            return await handler(request)
        return await self._with_bearer(request, handler)

    def _is_own_call(self, request: ClientRequest) -> bool:
        # The session's own unauthenticated calls are never touched, so a refresh
        # cannot wait on itself.
        return self._ctx.own_call(request.url)

    async def _with_bearer(
        self, request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        ctx = self._ctx
        sent = await ctx.bearer()
        dpop = ctx.dpop
        credentials = ctx.hub.snapshot.credentials
        if dpop is not None and credentials is not None and _dpop_bound(credentials.extra):
            return await self._with_dpop(request, handler, sent)
        request.headers["Authorization"] = f"Bearer {sent}"
        response = await handler(request)
        if response.status != 401 or not _invalid_token(response):
            return response
        response.release()
        credentials = ctx.hub.snapshot.credentials
        if credentials is None or credentials.access_token == sent:
            # Joins a refresh already under way; one refresh for every stale request.
            await ctx.refresh()
        if not _replayable(request):
            raise InvalidCredentials(
                f"{request.method} {request.url.path}: the access token was refused and the"
                " request body (a stream) cannot be sent again; the token is refreshed now,"
                " so resend the request",
                status=401,
                error="invalid_token",
                code=401,
            )
        request.headers["Authorization"] = f"Bearer {await ctx.bearer()}"
        return await handler(request)

    async def _with_dpop(
        self, request: ClientRequest, handler: ClientHandlerType, token: str
    ) -> ClientResponse:
        dpop = self._ctx.dpop
        assert dpop is not None
        url = str(request.url)
        await self._dpop_headers(request, token)
        response = await handler(request)
        # Any answer may hand out the next nonce (RFC 9449 §8.2).
        fresh_nonce = dpop.remember(url, response.headers.get("DPoP-Nonce"))
        if response.status != 401:
            return response
        challenge = response.headers.get("WWW-Authenticate", "")
        if 'error="use_dpop_nonce"' in challenge:
            if not fresh_nonce:
                return response  # no new nonce to try: a retry would fail the same way
        elif 'error="invalid_token"' in challenge:
            credentials = self._ctx.hub.snapshot.credentials
            if credentials is None or credentials.access_token == token:
                await self._ctx.refresh()
        else:
            return response
        if not _replayable(request):
            return response
        response.release()
        await self._dpop_headers(request, await self._ctx.bearer())
        return await handler(request)

    async def _dpop_headers(self, request: ClientRequest, token: str) -> None:
        dpop = self._ctx.dpop
        assert dpop is not None
        request.headers["Authorization"] = f"DPoP {token}"
        request.headers["DPoP"] = await dpop.proof(
            request.method, str(request.url), access_token=token
        )

    async def _with_mac(
        self, request: ClientRequest, handler: ClientHandlerType, name: str
    ) -> ClientResponse:
        if HEADER_NAME in request.headers:
            return await handler(request)
        store = self._token_store
        header, value = store.generate_header_for_token(name)
        request.headers[header] = value
        response = await handler(request)
        if response.status != 401 or await _error_name(response) not in TIME_ERRORS:
            return response
        if not _replayable(request):
            # Cannot resend it; sync anyway, so the caller's next request is on time.
            log.warning("tokensdk: MAC time error on a body that cannot be sent again")
            await store.sync_time()
            return response
        response.release()
        header, value = await store.header_after_time_error(name)
        request.headers[header] = value
        return await handler(request)


def _dpop_bound(extra: Mapping[str, str]) -> bool:
    return extra.get("token_type", "").lower() == "dpop"


def _invalid_token(response: ClientResponse) -> bool:
    challenge = response.headers.get("WWW-Authenticate", "")
    return challenge.lower().startswith("bearer") and 'error="invalid_token"' in challenge


def _replayable(request: ClientRequest) -> bool:
    body = request.body
    return not isinstance(body, payload.Payload) or not body.consumed


async def _error_name(response: ClientResponse) -> str | None:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None
