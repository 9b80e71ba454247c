"""Token families: login, bearer checks, refresh rotation with reuse detection and retries.

A family is one login; every access and refresh token descended from it lives and
dies with it. A refresh token presented a second time revokes its family (RFC 9700
section 4.14.2), except for a retry of the same request within the idempotency
window (docs/PROTOCOL-EXTENSIONS.md), which gets the first answer again.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets

import attrs

from tokensdk.server._api_errors import BearerRejected, account_frozen
from tokensdk.server._housekeeping import Housekeeping
from tokensdk.server._passwords import token_digest
from tokensdk.server._records import (
    AccessRecord,
    ClientToken,
    FamilyRecord,
    LoginTokens,
    RefreshRecord,
)
from tokensdk.server._vault import SealError, derive_key, record_aad, seal, unseal

__all__ = ["Sessions"]


def _answer_key(refresh_token: str, idempotency_key: str) -> bytes:
    """The key of a refresh's kept answer: from what only the client holds."""
    return derive_key("tokensdk refresh-retry answer v1", refresh_token, idempotency_key)


def _answer_aad(key: str) -> bytes:
    return record_aad("refresh_tokens", key)


class Sessions(Housekeeping):
    """Families and their tokens (part of ``ServiceState``)."""

    def freeze_user(self, username: str) -> int:
        """Freeze an account: its logins get 403 and every session it has is revoked now.

        Freezing a frozen account revokes any family it still has (one started
        before the account was frozen in another way, e.g. an earlier version).

        Args:
            username: The account; an unknown one is left alone.

        Returns:
            How many live families were revoked.
        """
        record = self.users.get(username)
        if record is None:
            return 0
        if not record.frozen:
            self.users.put(username, attrs.evolve(record, frozen=True))
        families = [
            family
            for family, r in self.families.items()
            if r.username == username and not r.revoked
        ]
        for family in families:
            self.revoke_family(family)
        return len(families)

    def login(self, username: str, now: float, client: str | None = None) -> LoginTokens:
        """Start a new family for ``username`` and issue its first token pair.

        Args:
            username: An authenticated user.
            now: Wall time.
            client: The OAuth 2.0 client that asked, if any.

        Returns:
            The new pair.
        """
        self.maybe_purge(now)
        family = secrets.token_hex(16)
        self.families.put(
            family,
            FamilyRecord(
                username=username, created=now, expires=now + self.refresh_ttl, client=client
            ),
        )
        return self._issue(family, username, now)

    def client_token(self, client: str, now: float) -> ClientToken:
        """Issue an access token to an OAuth 2.0 client itself (``client_credentials``).

        The token's family has no refresh token and lives as long as the token; its
        subject (``/v1/me``'s ``username``) is the client id.

        Args:
            client: The authenticated client's id.
            now: Wall time.

        Returns:
            The access token and its lifetime.
        """
        self.maybe_purge(now)
        family = secrets.token_hex(16)
        expires = now + self.access_ttl
        self.families.put(
            family, FamilyRecord(username=client, created=now, expires=expires, client=client)
        )
        access = secrets.token_urlsafe(32)
        self.access.put(
            token_digest(access), AccessRecord(family=family, username=client, expires=expires)
        )
        return ClientToken(access_token=access, access_expire=self.access_ttl)

    def _issue(
        self, family: str, username: str, now: float, parent: str | None = None
    ) -> LoginTokens:
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        family_record = self.families[family]
        self.families.put(family, attrs.evolve(family_record, expires=now + self.refresh_ttl))
        self.access.put(
            token_digest(access),
            AccessRecord(
                family=family, username=username, expires=now + self.access_ttl, parent=parent
            ),
        )
        self.refresh_tokens.put(
            token_digest(refresh),
            RefreshRecord(
                family=family, username=username, expires=now + self.refresh_ttl, parent=parent
            ),
        )
        return LoginTokens(
            username=username,
            access_token=access,
            access_expire=self.access_ttl,
            refresh_token=refresh,
            refresh_expire=self.refresh_ttl,
        )

    def authenticate_bearer(self, token: str, now: float) -> AccessRecord:
        """Return the live access token record for a bearer token.

        Args:
            token: The bearer token.
            now: Wall time.

        Returns:
            The record (its family is alive and it has not expired).

        Raises:
            BearerRejected: Unknown, revoked, of a frozen account, or expired
                (``expired`` set).
        """
        record = self.access.get(token_digest(token))
        if record is not None:
            self._answer_received(record.parent)
        if record is None or self._family_revoked(record.family) or self.is_frozen(record.username):
            raise BearerRejected("the access token is not valid", expired=False)
        if now >= record.expires or not self.family_alive(record.family, now):
            raise BearerRejected("the access token has expired", expired=True)
        return record

    def login_with_token(self, username: str, token: str, now: float) -> int:
        """Check a saved access token; return the whole seconds it has left.

        Args:
            username: Who claims the token.
            token: The access token.
            now: Wall time.

        Returns:
            Remaining lifetime in whole seconds (rounded down).

        Raises:
            ApiError: 401 ``invalid_token``, 403 ``account_frozen`` or 401/701
                ``token_expired``.
        """
        record = self.access.get(token_digest(token))
        if record is not None:
            self._answer_received(record.parent)
        if record is None or record.username != username:
            raise BearerRejected("the access token is not valid")
        if self.is_frozen(username):
            raise account_frozen()
        if self._family_revoked(record.family):
            raise BearerRejected("the access token is not valid")
        if now >= record.expires:
            raise BearerRejected("the access token has expired", code=701, error="token_expired")
        return int(record.expires - now)

    def refresh(
        self, username: str, token: str, now: float, idempotency_key: str | None = None
    ) -> LoginTokens:
        """Rotate a refresh token into a new pair of the same family.

        Args:
            username: Who claims the token.
            token: The refresh token.
            now: Wall time.
            idempotency_key: The request's ``idempotencyKey``, if it sent one.

        Returns:
            The new pair, or for a retry the pair the first request got.

        Raises:
            ApiError: 401 ``invalid_token``, 403 ``account_frozen``, 401
                ``refresh_token_reused`` (the family is revoked as a side effect) or
                401/701 ``token_expired``.

        A used refresh token presented again with the ``idempotency_key`` of the
        request that used it is a retry of that request (its answer was lost) while
        the retry window is open: for :attr:`idempotency_window` seconds from that
        first success, never extended, and only until a token of its answer is used
        (the answer was received then). A retry gets the same answer, with lifetimes
        counted from now; it mints nothing and withdraws nothing, so whoever uses the
        answer's refresh token second trips reuse detection. A retry is checked like
        any refresh: a revoked family is ``invalid_token``, an expired refresh token
        or family ``token_expired``. Any other use of a used token is reuse.
        """
        self.maybe_purge(now)
        key = token_digest(token)
        record = self.refresh_tokens.get(key)
        if record is not None:
            self._answer_received(record.parent)
        if record is None or record.username != username:
            raise BearerRejected("the refresh token is not valid")
        if self.is_frozen(username):
            raise account_frozen()
        if self._family_revoked(record.family):
            raise BearerRejected("the refresh token is not valid")
        if record.used:
            retried = self._retry(key, record, token, idempotency_key, now)
            if retried is not None:
                return retried
            self.revoke_family(record.family)
            raise BearerRejected(
                "the refresh token was used before; the session is revoked",
                error="refresh_token_reused",
            )
        if now >= record.expires:
            raise BearerRejected("the refresh token has expired", code=701, error="token_expired")
        return self._rotate(key, record, token, username, now, idempotency_key)

    def _retry(
        self,
        key: str,
        record: RefreshRecord,
        token: str,
        idempotency_key: str | None,
        now: float,
    ) -> LoginTokens | None:
        """Return the kept answer when this request retries the one that used ``token``.

        Returns None when it is no retry (reuse, then).

        Raises:
            ApiError: 401/701 ``token_expired``: a retry, but the refresh token or the
                family has expired since.
        """
        if not idempotency_key or record.answer is None or record.idempotency is None:
            return None
        if not hmac.compare_digest(token_digest(idempotency_key), record.idempotency):
            return None
        if record.used_at is None or not now < record.used_at + self.idempotency_window:
            return None
        if now >= record.expires or not self.family_alive(record.family, now):
            # It never becomes servable again: drop the answer with the window.
            self._answer_received(key)
            raise BearerRejected("the refresh token has expired", code=701, error="token_expired")
        try:
            plain = unseal(_answer_key(token, idempotency_key), record.answer, _answer_aad(key))
            answer = json.loads(plain)
            access_token, refresh_token = answer["accessToken"], answer["refreshToken"]
        except (SealError, ValueError, KeyError, TypeError):  # altered: not a retry then
            return None
        access = self.access.get(token_digest(access_token))
        successor = self.refresh_tokens.get(token_digest(refresh_token))
        if access is None or successor is None or successor.used:
            return None  # pragma: no cover - using either closes the window first
        return LoginTokens(
            username=record.username,
            access_token=access_token,
            access_expire=max(0, math.floor(access.expires - now)),
            refresh_token=refresh_token,
            refresh_expire=max(0, math.floor(successor.expires - now)),
        )

    def _answer_received(self, parent: str | None) -> None:
        """A token of the answer kept for ``parent``'s retries was used: close its window.

        One write, on the first use only; later uses find no answer left.
        """
        if parent is None:
            return
        record = self.refresh_tokens.get(parent)
        if record is not None and record.answer is not None:
            self.refresh_tokens.put(parent, attrs.evolve(record, answer=None))

    def _rotate(
        self,
        key: str,
        record: RefreshRecord,
        token: str,
        username: str,
        now: float,
        idempotency_key: str | None,
    ) -> LoginTokens:
        if not idempotency_key:
            tokens = self._issue(record.family, username, now)
            self.refresh_tokens.put(key, attrs.evolve(record, used=True, used_at=now))
            return tokens
        tokens = self._issue(record.family, username, now, parent=key)
        answer = json.dumps(
            {"accessToken": tokens.access_token, "refreshToken": tokens.refresh_token}
        ).encode()
        self.refresh_tokens.put(
            key,
            attrs.evolve(
                record,
                used=True,
                used_at=now,
                idempotency=token_digest(idempotency_key),
                answer=seal(_answer_key(token, idempotency_key), answer, _answer_aad(key)),
            ),
        )
        return tokens

    def revoke_family(self, family: str) -> None:
        """Revoke a family: its access, refresh and MAC tokens stop working at once."""
        record = self.families.get(family)
        if record is not None and not record.revoked:
            self.families.put(family, attrs.evolve(record, revoked=True))
        for token_id in [t for t, r in self.mac_tokens.items() if r.family == family]:
            self.mac_tokens.delete(token_id)
