"""Asset access tokens: proof of key, validation, and the session's observable array.

- :class:`Signer` is what proves possession of an asset's key (an Ed25519 key in
  memory is provided; a hardware or remote signer implements the same protocol).
- :class:`TokenValidator` validates PASETO v4.public access tokens locally with a
  key set fetched from the service (refreshed, rate-limited, on an unknown ``kid``)
  and a cache of verified tokens, or remotely (which also catches revocation).
  :func:`validate_access_token` is the standalone entry point for web backends.
- :class:`AccessTokens` is ``session.access_tokens``: a read-only sequence of
  :class:`AssetToken` whose every change is a session commit (change callbacks,
  events, persistence). Each token's expiry is one entry on the session's timer
  heap; entries that fall due together are removed in one commit.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, overload, runtime_checkable

import aiohttp
import anyio
import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tokensdk._backend import AuthBackend, NativeBackend, ResourceBackend
from tokensdk._calls import send_call
from tokensdk._clock import Clock, SystemClock
from tokensdk._errors import (
    BadSignature,
    InvalidCredentials,
    InvalidInput,
    ProtocolError,
    ServiceError,
    SessionClosed,
    StoreError,
    TokenExpired,
    TokenInvalid,
    TokenMalformed,
    TokenNotYetValid,
    TokenRevoked,
    TokenSDKError,
    UnknownKey,
)
from tokensdk._flight import fresh_error
from tokensdk._models import AssetToken, EventType
from tokensdk._paseto import (
    AccessTokenInfo,
    KeySet,
    PublicKey,
    ValidationCache,
    verify_access_token,
)
from tokensdk._scheduler import Timer
from tokensdk._transport import Transport

if TYPE_CHECKING:
    from tokensdk._context import SessionContext

__all__ = [
    "AccessTokenInfo",
    "AccessTokens",
    "Ed25519Signer",
    "Signer",
    "TokenValidator",
    "validate_access_token",
]

log = logging.getLogger("tokensdk")


@runtime_checkable
class Signer(Protocol):
    """Proves possession of an asset's private key by signing a challenge."""

    async def sign(self, message: bytes) -> bytes:
        """Return the Ed25519 signature (64 bytes) of ``message``."""
        ...


class Ed25519Signer:
    """A :class:`Signer` holding an Ed25519 private key in memory.

    Args:
        private_key: The key; see :meth:`generate` and :meth:`from_seed`.
    """

    __slots__ = ("_key", "public_key_hex")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_key_hex = raw.hex()

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """Create a signer with a new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Ed25519Signer:
        """Create a signer from a 32-byte private seed.

        Raises:
            InvalidInput: The seed is not 32 bytes.
        """
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise InvalidInput("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    async def sign(self, message: bytes) -> bytes:
        """Sign ``message`` with the private key."""
        return self._key.sign(message)

    def __repr__(self) -> str:
        return f"Ed25519Signer(public_key_hex={self.public_key_hex!r})"


def canonical_challenge(challenge: Mapping[str, object]) -> bytes:
    """The bytes an asset's key signs for proof of key: the challenge as sorted, compact JSON.

    The one definition for both sides: the SDK signs these bytes, the reference
    service verifies the signature over them.

    Args:
        challenge: The challenge object (``assetId``, ``nonce``, ``timestamp``).

    Returns:
        ``json.dumps(challenge, separators=(",", ":"), sort_keys=True)`` in UTF-8.
    """
    return json.dumps(challenge, separators=(",", ":"), sort_keys=True).encode()


class TokenValidator:
    """Validates asset access tokens, locally (cached) or against the service.

    Args:
        url: The token service: its root URL (the reference contract, i.e.
            ``NativeBackend(url)``) or a backend naming the API root; needed to fetch
            keys or validate remotely, which takes a backend with the contract's
            resource endpoints (a :class:`~tokensdk.ResourceBackend`, such as
            :class:`NativeBackend`).
        keys: Trusted keys (a :class:`KeySet`, or PASERK ``k4.public`` strings). If
            none are given they are fetched from the backend's key set
            (``{url}/v1/keys``).
        remote: Also ask the service (``POST /v1/assets/validate``), which catches
            revoked tokens; local validation still runs first.
        leeway: Seconds of clock skew tolerated on ``exp``/``iat``.
        cache_size: Verified tokens remembered (0 disables the cache).
        key_refresh_interval: The least time between two key-set fetches.
        max_token_size: The longest token accepted, in characters.
        clock: The clock (inject one in tests).
        http: An aiohttp session to use.
        transport: An existing transport to share (the session's, below ``url``'s
            API root).

    Raises:
        InvalidInput: ``url`` is not an http(s) URL or a backend; no keys are given
            and there is no backend to fetch them from; ``remote`` without one.
    """

    def __init__(
        self,
        url: str | AuthBackend | ResourceBackend | None = None,
        *,
        keys: KeySet | Sequence[str] | None = None,
        remote: bool = False,
        leeway: float = 0.0,
        cache_size: int = 10_000,
        key_refresh_interval: float = 5.0,
        max_token_size: int = 8192,
        clock: Clock | None = None,
        http: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        backend = NativeBackend(url) if isinstance(url, str) else url
        if backend is not None and not isinstance(backend, AuthBackend | ResourceBackend):
            raise InvalidInput("url must be a URL or an AuthBackend")
        # Only a backend with the contract's resource endpoints has keys to fetch and
        # validates remotely (an OAuth 2.0 provider has neither).
        resources = backend if isinstance(backend, ResourceBackend) else None
        self._own_transport = transport is None and resources is not None
        if transport is None and resources is not None:
            if not isinstance(backend, AuthBackend):
                raise InvalidInput("url must be a URL or an AuthBackend")
            transport = Transport(
                backend.base_url + backend.api_path,
                self._clock,
                http=http,
                error_details=backend.error_details,
            )
        self._transport = transport if resources is not None else None
        self._resources = resources
        if keys is not None and not isinstance(keys, KeySet):
            keys = KeySet(PublicKey.from_paserk(k) for k in keys)
        if keys is None and resources is None:
            raise InvalidInput(
                "give keys, or the url of a service with a key set (the reference contract)"
            )
        if remote and resources is None:
            raise InvalidInput(
                "remote validation needs the url of a service that validates asset tokens"
                " (the reference contract)"
            )
        self.keys: KeySet = keys if keys is not None else KeySet()
        self.remote = remote
        self.leeway = leeway
        self.max_token_size = max_token_size
        self._cache = ValidationCache(cache_size) if cache_size > 0 else None
        self._interval = key_refresh_interval
        self._attempted_at = -float("inf")  # the last fetch that was sent (rate limit)
        self._fetches_done = 0  # fetches that brought a key set back
        self._fetch_failures = 0  # fetches that failed, the last one's error kept
        self._fetch_error: Exception | None = None
        self._lock = anyio.Lock()
        self.key_fetches = 0

    async def aclose(self) -> None:
        """Close the HTTP session this validator created, if any."""
        if self._transport is not None and self._own_transport:
            await self._transport.aclose()

    async def __aenter__(self) -> TokenValidator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def validate_local(self, token: str) -> AccessTokenInfo:
        """Validate with the keys at hand, without any I/O.

        Raises:
            TokenInvalid: A subclass saying why.
        """
        return verify_access_token(
            token,
            self.keys,
            self._clock.time(),
            self.leeway,
            max_size=self.max_token_size,
            cache=self._cache,
        )

    async def validate(self, token: str, *, trusted_source: bool = False) -> AccessTokenInfo:
        """Validate a token: locally, then remotely if configured.

        Args:
            token: The token text.
            trusted_source: The token came straight from the service (proof of
                key), so an unknown ``kid`` fetches the keys even inside the
                rate-limit interval (the service just rotated).

        Returns:
            What the token grants (``asset_ids``, ``expires_at``, ...).

        Raises:
            TokenInvalid: Why the token is invalid, as a subclass: TokenExpired,
                TokenNotYetValid, TokenMalformed, BadSignature, UnknownKey, TokenRevoked.
            ServiceUnavailable: Keys or remote validation were needed and the
                service could not be reached.
        """
        try:
            info = self.validate_local(token)
        except UnknownKey:
            if not await self._refresh_keys_for(token, force=trusted_source):
                raise
            info = self.validate_local(token)
        if self.remote:
            await self._validate_remote(token)
        return info

    async def refresh_keys(self) -> KeySet:
        """Fetch the key set from ``GET /v1/keys`` now.

        Raises:
            ProtocolError: The answer is not a valid key set.
        """
        if self._transport is None:
            raise InvalidInput("this validator has no service with a key set")
        async with self._lock:
            return await self._fetch_keys()

    async def _fetch_keys(self) -> KeySet:
        assert self._transport is not None
        assert self._resources is not None
        previous, self._attempted_at = self._attempted_at, self._clock.monotonic()
        self.key_fetches += 1
        try:
            reply = await send_call(self._transport, self._resources.keys())
            try:
                keys = KeySet.from_json(reply.body)
            except InvalidInput as exc:
                raise ProtocolError(f"the service's key set is invalid: {exc}") from None
        except anyio.get_cancelled_exc_class():
            # The caller went away, not the service: the next caller may try at once.
            # (A failed fetch does count, so a down service is not hammered.)
            self._attempted_at = previous
            raise
        except Exception as exc:
            # The callers queued behind this fetch get its error: their token was
            # not found invalid, its keys could not be had.
            self._fetch_failures += 1
            self._fetch_error = exc
            raise
        self.keys = keys
        self._fetches_done += 1
        self._fetch_error = None  # its traceback holds frames: let them go
        return keys

    async def _refresh_keys_for(self, token: str, *, force: bool = False) -> bool:
        # One fetch serves every caller that hit the same unknown kid; after it,
        # no new fetch before the interval passes (an attacker's random kids
        # must not turn into a request flood).
        if self._transport is None:
            return False
        before, failures = self._fetches_done, self._fetch_failures
        async with self._lock:
            if self._fetches_done != before:
                return True  # someone brought the keys back while we waited
            if self._fetch_failures != failures and self._fetch_error is not None:
                raise fresh_error(self._fetch_error)  # someone's fetch failed meanwhile
            if not force and self._clock.monotonic() - self._attempted_at < self._interval:
                return False
            await self._fetch_keys()
            return True

    async def _validate_remote(self, token: str) -> None:
        assert self._transport is not None
        assert self._resources is not None
        try:
            reply = await send_call(self._transport, self._resources.asset_validate(token))
        except InvalidCredentials as exc:
            if self._cache is not None:
                self._cache.discard(token)
            if exc.code == 701 or exc.error == "token_expired":
                raise TokenExpired("the service says the token expired") from None
            # ``error`` and ``code`` are the same for every invalid token; the body's
            # ``reason`` (an extension, see docs/PROTOCOL-EXTENSIONS.md) says which.
            cls = _REMOTE_REASONS.get(exc.reason, TokenInvalid)
            raise cls(f"the service rejected the token ({cls.reason})") from None
        ids = reply.body.get("assetIds")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("the validate answer has no assetIds")


_REMOTE_REASONS: dict[str, type[TokenInvalid]] = {
    "revoked": TokenRevoked,
    "malformed": TokenMalformed,
    "bad_signature": BadSignature,
    "unknown_key": UnknownKey,
    "expired": TokenExpired,
    "not_yet_valid": TokenNotYetValid,
}


def _expiry(item: AssetToken) -> float:
    return item.expires_at if item.expires_at is not None else float("inf")


async def validate_access_token(token: str, validator: TokenValidator) -> AccessTokenInfo:
    """Validate an asset access token (standalone, for backends that only verify).

    Args:
        token: The PASETO v4.public token.
        validator: Keys, cache and options; reuse one for the process.

    Returns:
        What the token grants (``asset_ids``, the contract's ``assetIds``).

    Raises:
        TokenInvalid: A subclass saying why (expired, malformed, bad signature,
            unknown key, revoked).
    """
    return await validator.validate(token)


class AccessTokens(Sequence[AssetToken]):
    """The session's observable array of asset access tokens (read-only sequence).

    Changes come only from the session (:meth:`request`, revalidation, expiry,
    :meth:`remove`); each one is a commit that change callbacks, events and the
    store see.
    """

    def __init__(self, context: SessionContext, *, renew_before: float = 60.0) -> None:
        self._ctx = context
        self._timers: dict[str, Timer] = {}
        self._due: list[str] = []  # the token text of each expiry timer that fired
        self._sweep_pending = False
        self._signers: dict[str, Signer] = {}
        self._renew_before = renew_before
        self._validator: TokenValidator | None = None
        context.on_open(self._start)

    # -- the sequence ----------------------------------------------------------------

    @property
    def _items(self) -> tuple[AssetToken, ...]:
        return self._ctx.hub.snapshot.access_tokens

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> AssetToken: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[AssetToken]: ...
    def __getitem__(self, index: int | slice) -> AssetToken | Sequence[AssetToken]:
        return self._items[index]

    def __iter__(self) -> Iterator[AssetToken]:
        return iter(self._items)

    def find(self, asset_id: str) -> AssetToken | None:
        """Return the token for ``asset_id``, or None."""
        for item in self._items:
            if item.asset_id == asset_id:
                return item
        return None

    def headers_for(self, asset_id: str) -> dict[str, str]:
        """Return the ``Authorization`` header that presents the asset's token.

        Raises:
            LookupError: The array holds no token for ``asset_id``.
        """
        item = self.find(asset_id)
        if item is None:
            raise LookupError(f"no access token for asset {asset_id!r}")
        return {"Authorization": f"Bearer {item.token}"}

    def __repr__(self) -> str:
        return f"AccessTokens({[t.asset_id for t in self._items]!r})"

    # -- validation ------------------------------------------------------------------

    @property
    def validator(self) -> TokenValidator:
        """The session's validator (keys fetched from the session's service).

        Raises:
            InvalidInput: The session's backend has no asset endpoints (OAuth 2.0).
        """
        if self._validator is None:
            ctx = self._ctx
            self._validator = TokenValidator(
                self._resources(), transport=ctx.transport, clock=ctx.clock
            )
        return self._validator

    def _resources(self) -> ResourceBackend:
        resources = self._ctx.resources
        if resources is None:
            raise InvalidInput(
                "asset access tokens are a feature of the reference service: this"
                " session's backend has no asset endpoints (OAuth 2.0 providers have none)"
            )
        return resources

    async def validate(self, token: str, *, remote: bool = False) -> AccessTokenInfo:
        """Validate ``token``; if it is invalid and in the array, remove it.

        Args:
            token: The token.
            remote: Also ask the service (catches revocation).

        Raises:
            TokenInvalid: A subclass saying why.
            InvalidInput: The session's backend has no asset endpoints (OAuth 2.0).
        """
        validator = self.validator
        try:
            info = await validator.validate(token)
            if remote:
                await validator._validate_remote(token)
        except TokenInvalid as exc:
            self._drop(lambda t: t.token == token, exc.reason)
            raise
        return info

    async def revalidate(self, *, remote: bool = False) -> list[AssetToken]:
        """Validate every token now; remove the invalid ones in one change.

        Args:
            remote: Also ask the service about each token.

        Returns:
            The tokens removed.

        Raises:
            ServiceUnavailable: Keys or remote validation were needed and the
                service could not be reached. The tokens found invalid before
                that are still removed (in one change); the ones not checked
                yet stay until the next revalidation.
            InvalidInput: The session's backend has no asset endpoints (OAuth 2.0).
        """
        validator = self.validator
        bad: set[str] = set()
        learned: dict[str, float] = {}  # expiries of tokens restored without one
        for item in self._items:
            try:
                info = await validator.validate(item.token)
                if remote:
                    await validator._validate_remote(item.token)
            except TokenInvalid:
                bad.add(item.token)
            except TokenSDKError:
                # What was found so far holds whatever the service does next: a
                # token found invalid must not stay just because a later one
                # could not be checked.
                with contextlib.suppress(SessionClosed):  # closing: the saved state stands
                    self._settle(bad, learned)
                raise
            else:
                if item.expires_at is None:
                    learned[item.token] = info.expires_at
        return self._settle(bad, learned)

    def _settle(self, bad: set[str], learned: dict[str, float]) -> list[AssetToken]:
        removed = self._drop(lambda t: t.token in bad, "invalid")
        if learned:
            self._learn_expiries(learned)
        return removed

    def _learn_expiries(self, learned: dict[str, float]) -> None:
        updated = [
            attrs.evolve(t, expires_at=learned[t.token])
            if t.expires_at is None and t.token in learned
            else t
            for t in self._items
        ]
        self._ctx.hub.commit(access_tokens=tuple(updated))
        for item in updated:
            if item.token in learned:
                self._schedule(item)

    # -- proof of key ----------------------------------------------------------------

    async def request(self, asset_id: str, signer: Signer, *, renew: bool = False) -> AssetToken:
        """Obtain a token for ``asset_id`` by proof of key and put it in the array.

        Runs challenge -> sign -> token, validates the answer locally, then adds it
        (or replaces the asset's previous token). Members sharing a store (a fleet)
        ask once: under their lock, a member takes a live token for the asset that
        a sibling obtained since it asked.

        Args:
            asset_id: The asset.
            signer: Holds the asset's private key.
            renew: Keep requesting a fresh token before this one expires.

        Raises:
            InvalidInput: A bad argument, or the session's backend has no asset
                endpoints (OAuth 2.0): nothing was sent.
            NotFound: The service does not know the asset.
            InvalidCredentials: The signature was refused (wrong key).
            TokenInvalid: The service's token does not validate.
        """
        if not isinstance(asset_id, str) or not asset_id:
            raise InvalidInput("asset_id must be a non-empty string")
        if not isinstance(signer, Signer):
            raise InvalidInput("signer must implement Signer (async sign(message) -> bytes)")
        self._resources()
        had = self.find(asset_id)
        had_token = had.token if had is not None else None
        # Members sharing a store ask once: under their lock, with the state reloaded,
        # a live token a sibling obtained since this member asked is taken (in one
        # process the block is a no-op and nothing can have changed: always a request).
        entered = False
        try:
            async with self._ctx.exclusive():
                entered = True
                shared = self.find(asset_id)
                if shared is not None and shared.token != had_token and self._live(shared):
                    if renew:
                        self._signers[asset_id] = signer
                    self._schedule(shared)
                    return shared
                return await self._request_locked(asset_id, signer, renew)
        except StoreError as exc:
            if entered:
                raise
            # The shared store cannot coordinate (Redis down): sharing only saves calls,
            # and an asset token does not depend on the shared state, so ask alone.
            log.info("tokensdk: asking for an asset token unshared: %s", type(exc).__name__)
            return await self._request_locked(asset_id, signer, renew)

    def _live(self, item: AssetToken) -> bool:
        return item.expires_at is None or item.expires_at > self._ctx.clock.time()

    async def _request_locked(self, asset_id: str, signer: Signer, renew: bool) -> AssetToken:
        transport, resources = self._ctx.transport, self._resources()
        reply = await send_call(transport, resources.asset_challenge(asset_id))
        challenge = reply.body
        if challenge.get("assetId") != asset_id:
            raise ProtocolError("the challenge is for another asset")
        signature = await signer.sign(canonical_challenge(challenge))
        reply = await send_call(transport, resources.asset_token(challenge, signature))
        token = reply.body.get("accessToken")
        if not isinstance(token, str):
            raise ProtocolError("the token answer has no accessToken")
        info = await self.validator.validate(token, trusted_source=True)
        if asset_id not in info.asset_ids:
            raise TokenMalformed("the token does not grant the requested asset")
        if renew:
            self._signers[asset_id] = signer
        item = AssetToken(asset_id, token, info.expires_at)
        self._put(item)
        return item

    def remove(self, asset_id: str) -> bool:
        """Remove the asset's token from the array (and stop renewing it).

        Returns:
            Whether a token was removed.
        """
        self._signers.pop(asset_id, None)
        return bool(self._drop(lambda t: t.asset_id == asset_id, "removed"))

    async def revoke(self, asset_id: str) -> bool:
        """Revoke the asset's token on the service, then remove it locally.

        Returns:
            Whether a token was revoked.

        Raises:
            InvalidInput: The session's backend has no asset endpoints (OAuth 2.0):
                nothing was sent, the token stays.
        """
        item = self.find(asset_id)
        if item is None:
            return False
        call = self._resources().asset_revoke(item.token)
        # InvalidCredentials: already invalid on the service; removing it locally is left.
        with contextlib.suppress(InvalidCredentials):
            await send_call(self._ctx.transport, call)
        self.remove(asset_id)
        return True

    # -- internals -------------------------------------------------------------------

    def _put(self, item: AssetToken) -> None:
        hub = self._ctx.hub
        items = list(self._items)
        for index, old in enumerate(items):
            if old.asset_id == item.asset_id:
                items[index] = item
                kind = EventType.ACCESS_TOKEN_REPLACED
                break
        else:
            items.append(item)
            kind = EventType.ACCESS_TOKEN_ADDED
        hub.commit(hub.event(kind, item.asset_id), access_tokens=tuple(items))
        self._schedule(item)

    def _drop(self, doomed: object, reason: str) -> list[AssetToken]:
        assert callable(doomed)
        keep: list[AssetToken] = []
        gone: list[AssetToken] = []
        for item in self._items:
            (gone if doomed(item) else keep).append(item)
        if gone:
            hub = self._ctx.hub
            for item in gone:
                timer = self._timers.pop(item.asset_id, None)
                if timer is not None:
                    timer.cancel()
            gone.sort(key=_expiry)  # report removals in the order the tokens die
            hub.commit(
                *(hub.event(EventType.ACCESS_TOKEN_REMOVED, item.asset_id) for item in gone),
                access_tokens=tuple(keep),
            )
            log.info("tokensdk: removed %d access token(s) (%s)", len(gone), reason)
        return gone

    def _schedule(self, item: AssetToken) -> None:
        old = self._timers.pop(item.asset_id, None)
        if old is not None:
            old.cancel()
        if item.expires_at is None:
            return
        clock = self._ctx.clock
        # The token's expiry on the monotonic clock, fixed now: a later step of
        # the wall clock does not move it (see _sweep).
        deadline = clock.monotonic() + (item.expires_at - clock.time())
        if item.asset_id in self._signers:
            asset_id, token = item.asset_id, item.token
            renew_at = max(deadline - self._renew_before, clock.monotonic())
            self._timers[asset_id] = self._ctx.scheduler.call_at(
                renew_at, lambda: self._renew_due(asset_id, token, deadline)
            )
        else:
            self._expire_at(item, deadline)

    def _expire_at(self, item: AssetToken, deadline: float) -> None:
        asset_id, token = item.asset_id, item.token
        self._timers[asset_id] = self._ctx.scheduler.call_at(
            deadline, lambda: self._expire_due(asset_id, token)
        )

    def _expire_due(self, asset_id: str, token: str) -> None:
        # Called from the timer heap: batch everything that falls due together
        # into one commit instead of one per token.
        self._timers.pop(asset_id, None)
        self._due.append(token)
        if not self._sweep_pending:
            self._sweep_pending = True
            self._ctx.spawn(self._sweep)

    async def _sweep(self) -> None:
        self._sweep_pending = False
        due, self._due = set(self._due), []
        now = self._ctx.clock.time()
        # A token goes as soon as either clock says it has expired, like every
        # deadline in tokensdk. A fired timer is the monotonic clock saying so; if
        # the wall clock still puts ``exp`` ahead, it was stepped back since the
        # timer was set, and the service's clock was not: keeping the token (or
        # rescheduling it on the wall clock) would present a token the service
        # already refuses. The wall clock runs ahead of the timers only after a
        # forward step, which the heap cannot see, so each sweep checks it too.
        # Tokens are matched by text, not asset: a token that replaced a due one
        # before this sweep ran has a timer of its own.
        with contextlib.suppress(SessionClosed):  # closing: the saved state stands
            self._drop(
                lambda t: t.token in due or (t.expires_at is not None and t.expires_at <= now),
                "expired",
            )

    def _renew_due(self, asset_id: str, token: str, deadline: float) -> None:
        self._timers.pop(asset_id, None)
        self._ctx.spawn(self._renew, asset_id, token, deadline)

    async def _renew(self, asset_id: str, token: str, deadline: float) -> None:
        signer = self._signers.get(asset_id)
        if signer is None:
            return
        try:
            await self.request(asset_id, signer, renew=True)
        except Exception as exc:  # the signer is the application's code: any error
            log.warning(
                "tokensdk: renewing the token of %r failed: %s", asset_id, type(exc).__name__
            )
            item = self.find(asset_id)
            # A token put there meanwhile (request()) already has its own timer.
            if item is not None and item.token == token and item.expires_at is not None:
                # Fall back to expiry: the old token goes when it dies, by the
                # earlier of the deadline set when it arrived and the wall clock.
                clock = self._ctx.clock
                wall_deadline = clock.monotonic() + max(item.expires_at - clock.time(), 0.0)
                self._expire_at(item, min(deadline, wall_deadline))

    async def _start(self) -> None:
        """Drop restored tokens already expired, schedule the rest, revalidate in the background."""
        now = self._ctx.clock.time()
        self._drop(lambda t: t.expires_at is not None and t.expires_at <= now, "expired")
        for item in self._items:
            self._schedule(item)
        # Without asset endpoints there is no key set to check restored tokens with.
        if self._items and self._ctx.resources is not None:
            self._ctx.spawn(self._revalidate_quietly)

    async def _revalidate_quietly(self) -> None:
        try:
            await self.revalidate()
        except (TokenSDKError, ServiceError) as exc:
            log.info("tokensdk: revalidating restored tokens failed: %s", type(exc).__name__)
