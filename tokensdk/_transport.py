"""The thin I/O layer: aiohttp calls to the token service, error mapping, retry.

Every call of the SDK's own goes through :class:`Transport`; it never passes through
the application's client middleware. Contract errors become the typed errors of
:mod:`tokensdk._errors`; transient failures (connection errors, timeouts, 5xx, 429)
are retried with exponential backoff and jitter, honouring ``Retry-After``, within a
deadline the caller sets.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import aiohttp
import attrs
import tenacity
from multidict import CIMultiDict, CIMultiDictProxy

from tokensdk._backend import ErrorDetails
from tokensdk._clock import Clock
from tokensdk._dpop import DPoPState
from tokensdk._errors import (
    AccountFrozen,
    Conflict,
    InvalidCredentials,
    InvalidInput,
    InvalidState,
    NotFound,
    ProtocolError,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    SessionClosed,
    printable,
)

__all__ = ["AttemptHook", "Backoff", "RetryConfig", "Transport"]

log = logging.getLogger("tokensdk")

# ProtocolError counts: a garbled answer (truncated, an HTML page) is a fault in transit.
_TRANSIENT = (ServiceUnavailable, RateLimited, ProtocolError)

# The headers of a call without a bearer or extra headers, built once: aiohttp copies
# a multidict it is given as it is, and converts anything else first.
_ACCEPT_JSON = CIMultiDictProxy(CIMultiDict({"Accept": "application/json"}))


@attrs.frozen
class RetryConfig:
    """Backoff for transient failures.

    Attributes:
        initial: The first backoff in seconds.
        maximum: The largest backoff in seconds.
        multiplier: Growth per attempt.
        jitter: Random extra, as a fraction of the backoff.
        max_attempts: Give up after this many attempts, deadline or not.
    """

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5
    max_attempts: int = 50

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial * self.multiplier ** max(attempt - 1, 0), self.maximum)
        return base * (1 + self.jitter * (rng or random).random())


class AttemptHook(Protocol):
    """Wraps every HTTP attempt of the SDK's own calls: instrumentation, or a test's gate.

    The SDK's own calls never pass through the application's client middleware; this
    is where to watch them. ``hook(method, path)`` returns an async context manager
    that is entered before the attempt is sent and left once its answer was read
    (or it failed), before the SDK uses it. Retries are attempts of their own.
    """

    def __call__(self, method: str, path: str) -> AbstractAsyncContextManager[object]:
        """Return the context to run one attempt in.

        Args:
            method: The HTTP method.
            path: The path below the API root (``/refresh``).
        """
        ...


@attrs.frozen
class Reply:
    """A decoded answer and when its request was sent (for lifespans that err early).

    ``body`` is always a JSON object: an empty answer (204) is an empty one, so a
    caller that needs fields finds them missing and says so (ProtocolError).
    """

    body: dict[str, Any]
    sent_wall: float
    sent_monotonic: float


_ERRORS: dict[int, type[ServiceError]] = {
    401: InvalidCredentials,
    403: AccountFrozen,
    404: NotFound,
    409: Conflict,
    491: InvalidState,
}


def _no_details(status: int, body: Any) -> ErrorDetails:
    # A transport on its own reads no body: which members a protocol's errors carry
    # is the backend's knowledge (AuthBackend.error_details).
    return ErrorDetails()


class Transport:
    """JSON calls to the service under its API root.

    Args:
        base_url: The API root the backend names, e.g. ``http://127.0.0.1:8080/v1``;
            call paths are appended to it.
        clock: The clock backoff sleeps on.
        http: An aiohttp session to use; one is created (and closed) otherwise.
        timeout: Seconds one attempt may take.
        retry: Backoff settings.
        max_response: Largest response body accepted, in bytes.
        hook: Entered around every attempt (see :class:`AttemptHook`).
        error_details: Reads the body of a failed answer: the backend's
            (``AuthBackend.error_details``); without it only the status counts.
    """

    def __init__(
        self,
        base_url: str,
        clock: Clock,
        *,
        http: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        retry: RetryConfig = RetryConfig(),
        max_response: int = 1 << 20,
        hook: AttemptHook | None = None,
        error_details: Callable[[int, Any], ErrorDetails] = _no_details,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InvalidInput("base_url must be an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self._prefix = self.base_url
        self._clock = clock
        self._http = http
        self._own_http = http is None
        self._closed = False
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.timeout = timeout
        self.retry = retry
        self.wait = Backoff(retry)
        self._hook = hook
        self._error_details = error_details
        self._max_response = max_response
        # Path -> monotonic time before which the service asked not to be called
        # (its last 429's Retry-After): honoured by every later call, not only the
        # retries of the call that got it.
        self._not_before: dict[str, float] = {}
        #: The session's DPoP state, when its backend uses DPoP: servers' nonces land here.
        self.dpop: DPoPState | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The aiohttp session, created on first use.

        Raises:
            SessionClosed: The transport was closed.
        """
        if self._closed:
            raise SessionClosed("the session was closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        return self._http

    async def aclose(self) -> None:
        """Close the aiohttp session if this transport created it; later calls fail."""
        self._closed = True
        if self._own_http and self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        bearer: str | Callable[[], Awaitable[str]] | None = None,
        headers: Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]] | None = None,
        deadline: float | None = None,
        retry: bool = True,
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        """Call ``{base_url}{path}`` and decode the JSON answer, retrying transient failures.

        A ``bearer`` given as an async callable is asked again for every attempt, so
        a retry after a long wait (a 429's Retry-After) never sends a token that
        expired meanwhile.

        Args:
            method: The HTTP method.
            path: The path below the API root.
            body: The JSON body, if any.
            bearer: An access token for ``Authorization: Bearer``, or an async
                callable returning a valid one.
            headers: Extra headers, or an async callable returning them, asked again
                for every attempt (a DPoP proof is single-use).
            deadline: Monotonic time after which no new attempt starts.
            retry: Whether transient failures are retried at all.
            form: A form-encoded body (OAuth 2.0 endpoints) instead of ``body``.

        ``path`` may be an absolute http(s) URL (an endpoint a discovery document
        names): it is used as it is.

        Raises:
            ServiceError: A contract error (a typed subclass where one fits).
            ProtocolError: The answer is not what the contract describes.
        """
        if deadline is None:
            deadline = self._clock.monotonic() + self.timeout
        # Waiting before a first attempt is safe even for a call that is never
        # retried: nothing was sent yet.
        if path in self._not_before:
            await self._respect_retry_after(path, deadline)
        if not retry:
            return await self._attempt(method, path, body, bearer, headers, form)
        # Attempt 1 is sent before tenacity is involved, and only its failure is
        # handed over: tenacity then decides about every attempt (1 included) by its
        # own numbering. Building and running AsyncRetrying for a call that succeeds
        # at once costs about 45 us, nearly a tenth of a loopback refresh (row 3).
        try:
            return await self._attempt(method, path, body, bearer, headers, form)
        except _TRANSIENT as exc:
            first: BaseException | None = exc

        async def attempt() -> Reply:
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error  # attempt 1's outcome, replayed for tenacity to judge
            return await self._attempt(method, path, body, bearer, headers, form)

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(_TRANSIENT),
            wait=self.wait,
            stop=tenacity.stop_after_attempt(self.retry.max_attempts)
            | _PastDeadline(self._clock, deadline),
            sleep=self._sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        reply: Reply = await retrying(attempt)
        return reply

    async def _respect_retry_after(self, path: str, deadline: float) -> None:
        not_before = self._not_before.get(path)
        if not_before is None:
            return
        left = not_before - self._clock.monotonic()
        if left <= 0:
            del self._not_before[path]
            return
        if not_before > deadline:
            raise RateLimited(
                f"{path}: rate limited by the service for {left:.1f}s more",
                retry_after=left,
            )
        await self._clock.sleep_until(not_before)

    async def _sleep(self, seconds: float) -> None:
        await self._clock.sleep_until(self._clock.monotonic() + seconds)

    def _attempt(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        bearer: str | Callable[[], Awaitable[str]] | None,
        headers: Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]] | None,
        form: Mapping[str, str] | None = None,
    ) -> Awaitable[Reply]:
        if (
            self._hook is None
            and (bearer is None or isinstance(bearer, str))
            and (headers is None or isinstance(headers, dict))
        ):
            # Nothing to ask or wrap: the attempt is the request itself, one coroutine
            # less on a path every resumption of the request walks through.
            return self._once(method, path, body, bearer, headers, form)
        return self._wrapped_attempt(method, path, body, bearer, headers, form)

    async def _wrapped_attempt(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        bearer: str | Callable[[], Awaitable[str]] | None,
        headers: Mapping[str, str] | Callable[[], Awaitable[Mapping[str, str]]] | None,
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        token = bearer if bearer is None or isinstance(bearer, str) else await bearer()
        sent = headers if headers is None or isinstance(headers, Mapping) else await headers()
        if self._hook is None:
            return await self._once(method, path, body, token, sent, form)
        async with self._hook(method, path):
            return await self._once(method, path, body, token, sent, form)

    async def _once(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        bearer: str | None,
        headers: Mapping[str, str] | None,
        form: Mapping[str, str] | None = None,
    ) -> Reply:
        sent_wall, sent_mono = self._clock.time(), self._clock.monotonic()
        send_headers: Mapping[str, str]
        if headers or bearer is not None:
            send_headers = {"Accept": "application/json"}
            if headers:
                send_headers.update(headers)
            if bearer is not None:
                send_headers["Authorization"] = f"Bearer {bearer}"
        else:
            send_headers = _ACCEPT_JSON
        url = path if path.startswith(("http://", "https://")) else self._prefix + path
        try:
            # middlewares=(): the SDK's own calls never pass through client middleware,
            # even when the application shares its ClientSession with us.
            async with self.http.request(
                method,
                url,
                json=body if form is None else None,
                data=None if form is None else dict(form),
                headers=send_headers,
                timeout=self._timeout,
                middlewares=(),
            ) as resp:
                raw = await self._read(resp)
                status = resp.status
                # The header as sent: it is read only to name a body that is not JSON.
                content_type = resp.headers.get("Content-Type", "")
                retry_after = resp.headers.get("Retry-After")
                if self.dpop is not None:
                    self.dpop.remember(url, resp.headers.get("DPoP-Nonce"))
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            if self._closed:  # closed under our feet: no retry can help
                raise SessionClosed("the session was closed") from None
            if isinstance(exc, RuntimeError):
                raise
            # The exception text of aiohttp may carry the URL but never our headers.
            raise ServiceUnavailable(
                f"{method} {path}: the service could not be reached ({type(exc).__name__})",
                error="unavailable",
            ) from None
        if status == 204 or (form is not None and status < 300 and not raw):
            # RFC 7009: a revocation answers 200 with an empty body.
            return Reply({}, sent_wall, sent_mono)
        try:
            decoded = _decode_json(raw, content_type, method, path)
        except ProtocolError:
            if status < 500 and status != 429:
                raise
            decoded = None  # a proxy's HTML error page: the status says enough
        if status < 400:
            if not isinstance(decoded, dict):
                raise ProtocolError(f"{method} {path}: the answer is not a JSON object")
            return Reply(decoded, sent_wall, sent_mono)
        error = _error_from(status, self._error_details(status, decoded), retry_after, method, path)
        if isinstance(error, RateLimited):
            self._not_before[path] = self._clock.monotonic() + error.retry_after
        raise error

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        length = resp.content_length
        if length is not None:
            if length > self._max_response:
                raise ProtocolError(f"the answer is too large ({length} bytes)")
            if "Content-Encoding" not in resp.headers:
                # The parser stops at Content-Length, and an unencoded body is not
                # inflated: the size is checked already, one read does (cheaper than
                # the chunk iterator on every refresh).
                return await resp.read()
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_response:
                raise ProtocolError("the answer is too large")
            chunks.append(chunk)
        return b"".join(chunks)


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


class Backoff(tenacity.wait.wait_base):
    """The one backoff of the SDK: a call's retries and the background refresh's.

    As a tenacity wait strategy it gives the wait after a failed attempt; the
    background refresh, which retries from the scheduler rather than in a loop, asks
    :meth:`after` directly.

    Args:
        config: The backoff settings.
        rng: The random source for jitter (the ``random`` module otherwise).
    """

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng

    def after(self, attempt: int, error: BaseException | None) -> float:
        """The wait after failed attempt number ``attempt`` (1-based) that raised ``error``.

        The configured backoff, or longer when the service said when to come back
        (a 429's Retry-After).
        """
        wait = self.config.backoff(attempt, self._rng)
        if isinstance(error, RateLimited):
            wait = max(wait, error.retry_after)
        return wait

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.after(retry_state.attempt_number, _error(retry_state))


class _PastDeadline(tenacity.stop.stop_base):
    """Stop when the next attempt would start after the call's deadline."""

    def __init__(self, clock: Clock, deadline: float) -> None:
        self._clock = clock
        self._deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._clock.monotonic() + retry_state.upcoming_sleep > self._deadline


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    log.info(
        "tokensdk: attempt %d failed (%s), retrying in %.2fs",
        retry_state.attempt_number,
        type(_error(retry_state)).__name__,
        retry_state.upcoming_sleep,
    )


def _decode_json(raw: bytes, content_type: str, method: str, path: str) -> Any:
    if not raw:
        return None
    try:
        if raw[:1] == b"{" and raw[1:2] != b"\x00":
            # An object in UTF-8 (the usual answer): decoded directly, without
            # json's sniffing for UTF-16 and UTF-32, which cannot start this way.
            return json.loads(raw.decode())
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # The media type as aiohttp names it (parameters dropped, lower case; a missing
        # header is application/octet-stream), parsed only on this error path.
        media = content_type.partition(";")[0].strip().lower() or "application/octet-stream"
        kind = printable(media, 64)
        raise ProtocolError(f"{method} {path}: the answer is not JSON ({kind})") from None


def _error_from(
    status: int,
    details: ErrorDetails,
    retry_after: str | None,
    method: str,
    path: str,
) -> ServiceError:
    error, message, reason = details.error, details.message, details.reason
    code = status if details.code is None else details.code
    text = f"{method} {path}: {status} {error or 'error'}" + (f": {message}" if message else "")
    if status == 429:
        return RateLimited(
            text,
            status=status,
            error=error or "rate_limited",
            code=code,
            reason=reason,
            retry_after=_retry_after(retry_after),
        )
    if status >= 500:
        return ServiceUnavailable(
            text, status=status, error=error or "internal", code=code, reason=reason
        )
    cls = _ERRORS.get(status, ServiceError)
    return cls(text, status=status, error=error, code=code, reason=reason)


def _retry_after(value: str | None) -> float:
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        return 1.0
    return min(max(seconds, 0.0), 3600.0) if math.isfinite(seconds) else 1.0
