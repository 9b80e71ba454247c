"""Assets: the registry, proof-of-key challenges, signing keys and PASETO asset tokens."""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from collections.abc import Mapping

import attrs

from tokensdk import canonical_challenge
from tokensdk._errors import InvalidInput, TokenExpired, TokenInvalid, TokenNotYetValid
from tokensdk._paseto import (
    AccessTokenInfo,
    KeySet,
    PublicKey,
    SigningKey,
    sign_asset_token,
    verify_access_token,
)
from tokensdk.server._api_errors import ApiError
from tokensdk.server._housekeeping import Housekeeping
from tokensdk.server._passwords import token_digest
from tokensdk.server._records import AssetRecord, ChallengeRecord, RevokedRecord, SigningKeyRecord

__all__ = ["Assets", "revocation_key"]


def _is_lower_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def revocation_key(token: str) -> str:
    """Key a verified token by its Ed25519 signature bytes, not by its spelling.

    The validator accepts only canonical encodings today; keying on the decoded
    signature keeps revocation sound even if it ever accepts a second spelling.
    Call only on a token that verified.
    """
    body = token.split(".")[2].rstrip("=")
    try:
        # Lenient on purpose (padding, junk characters): same bytes, same key.
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return "t:" + token_digest(token)
    return raw[-64:].hex()


class Assets(Housekeeping):
    """Assets, challenges, signing keys and asset tokens (part of ``ServiceState``)."""

    def register_asset(self, asset_id: str, public_key_hex: str) -> None:
        """Add an asset to the registry.

        Raises:
            ApiError: 409 ``asset_exists``.
        """
        if asset_id in self.assets:
            raise ApiError(409, "asset_exists", "the asset is registered already")
        self.assets.put(asset_id, AssetRecord(public_key=public_key_hex))

    def new_challenge(self, asset_id: str, now: float) -> dict[str, str]:
        """Issue a single-use challenge for a registered asset.

        Raises:
            ApiError: 404 ``unknown_asset``.
        """
        if asset_id not in self.assets:
            raise ApiError(404, "unknown_asset", "no such asset")
        self.maybe_purge(now)
        nonce = str(uuid.uuid4())
        timestamp = str(int(now))
        self.challenges.put(
            nonce,
            ChallengeRecord(
                asset_id=asset_id, timestamp=timestamp, expires=now + self.challenge_ttl
            ),
        )
        return {"assetId": asset_id, "timestamp": timestamp, "nonce": nonce}

    def check_challenge(self, challenge: Mapping[str, str], now: float) -> ChallengeRecord:
        """Return the live, unused stored challenge matching ``challenge``.

        Raises:
            ApiError: 401 ``challenge_used``, ``challenge_expired`` or
                ``invalid_signature`` (a challenge the service never issued).
        """
        record = self.challenges.get(challenge["nonce"])
        if record is None:
            # Purged records are expired ones; anything else was never issued.
            try:
                issued = float(int(challenge["timestamp"]))
            except (ValueError, OverflowError):
                issued = math.inf
            if issued + self.challenge_ttl <= now:
                raise ApiError(401, "challenge_expired", "the challenge has expired")
            raise ApiError(401, "invalid_signature", "the challenge was not issued here")
        if record.asset_id != challenge["assetId"] or record.timestamp != challenge["timestamp"]:
            raise ApiError(401, "invalid_signature", "the challenge was altered")
        if record.used:
            raise ApiError(401, "challenge_used", "the challenge was used already")
        if now >= record.expires:
            raise ApiError(401, "challenge_expired", "the challenge has expired")
        return record

    def use_challenge(self, nonce: str) -> None:
        """Mark a challenge used (kept until expiry so a second use says ``challenge_used``)."""
        record = self.challenges[nonce]
        self.challenges.put(nonce, attrs.evolve(record, used=True))

    # -- signing keys and asset tokens ------------------------------------------------

    def rotate_signing_key(self, now: float, key: SigningKey | None = None) -> str:
        """Make a new signing key the one that signs; older keys keep verifying.

        Args:
            now: Wall time.
            key: The key to add (a fresh random one by default).

        Returns:
            The new key's ``k4.pid``.
        """
        key = key if key is not None else SigningKey.generate()
        kid = key.public_key.pid
        serial = 1 + max((r.serial for r in self.signing_keys.values()), default=0)
        self.signing_keys.put(
            kid,
            SigningKeyRecord(
                seed=self.vault.seal("signing_keys", kid, key.seed.hex()),
                created=now,
                serial=serial,
            ),
        )
        self._signers[kid] = key
        self._key_set = KeySet(k.public_key for k in self._signers.values())
        return kid

    def drop_signing_key(self, kid: str) -> bool:
        """Remove a key: tokens it signed stop verifying. Returns whether it existed."""
        if kid not in self._signers:
            return False
        self.signing_keys.delete(kid)
        del self._signers[kid]
        self._key_set = KeySet(k.public_key for k in self._signers.values())
        return True

    def ensure_signing_key(self, now: float) -> None:
        """Create a signing key when there is none."""
        if not self._signers:
            self.rotate_signing_key(now)

    @property
    def key_set(self) -> KeySet:
        """Every verifying public key, by ``kid``."""
        return self._key_set

    def public_keys(self) -> list[dict[str, str]]:
        """Return the ``GET /v1/keys`` entries, oldest key first."""
        kids = sorted(self._signers, key=lambda kid: self.signing_keys[kid].serial)
        return [{"kid": kid, "paserk": self._signers[kid].public_key.paserk} for kid in kids]

    def active_signing_key(self) -> SigningKey:
        """Return the newest key: the one that signs."""
        kid = max(self._signers, key=lambda kid: self.signing_keys[kid].serial)
        return self._signers[kid]

    def issue_asset_token(
        self, challenge: Mapping[str, str], signature_hex: str, now: float, lifetime: float
    ) -> str:
        """Check a signed challenge and, if it holds, consume it and sign an access token.

        Args:
            challenge: The challenge as the client sent it back.
            signature_hex: The holder's Ed25519 signature, lowercase hex.
            now: Wall time.
            lifetime: Token lifetime in seconds.

        Returns:
            The PASETO v4.public access token.

        Raises:
            ApiError: 401 ``challenge_used`` / ``challenge_expired`` /
                ``invalid_signature``, 404 ``unknown_asset``.
        """
        self.check_challenge(challenge, now)
        asset = self.assets.get(challenge["assetId"])
        if asset is None:
            raise ApiError(404, "unknown_asset", "no such asset")
        canonical = {
            "assetId": challenge["assetId"],
            "nonce": challenge["nonce"],
            "timestamp": challenge["timestamp"],
        }
        data = canonical_challenge(canonical)
        if not _is_lower_hex(signature_hex, 128):
            raise ApiError(401, "invalid_signature", "the signature is not 128 lowercase hex")
        try:
            valid = PublicKey.from_hex(asset.public_key).verify(bytes.fromhex(signature_hex), data)
        except InvalidInput:
            valid = False
        if not valid:
            raise ApiError(401, "invalid_signature", "the signature does not verify")
        self.use_challenge(challenge["nonce"])
        return sign_asset_token(self.active_signing_key(), challenge["assetId"], now, lifetime)

    def validate_asset_token(self, token: str, now: float) -> AccessTokenInfo:
        """Validate an asset token as the service does: signature, time, revocation.

        Raises:
            ApiError: 401 ``invalid_token`` (with ``reason``) or 401/701 ``token_expired``.
        """
        try:
            info = verify_access_token(token, self._key_set, now)
        except TokenExpired:
            raise ApiError(
                401,
                "token_expired",
                "the token has expired",
                code=701,
                extra={"reason": TokenExpired.reason},
            ) from None
        except TokenNotYetValid:
            # Not "expired" (701 would send clients to refresh): a clock is off.
            raise ApiError(
                401,
                "invalid_token",
                "the token is not valid yet",
                extra={"reason": TokenNotYetValid.reason},
            ) from None
        except TokenInvalid as exc:
            raise ApiError(
                401, "invalid_token", "the token is not valid", extra={"reason": exc.reason}
            ) from None
        if revocation_key(token) in self.revoked:
            raise ApiError(
                401, "invalid_token", "the token was revoked", extra={"reason": "revoked"}
            )
        return info

    def revoke_asset_token(self, token: str, now: float) -> None:
        """Revoke a token this service signed, for every spelling the validator accepts.

        Raises:
            ApiError: 401 ``invalid_token`` when the token is not one of ours.
        """
        try:
            info = verify_access_token(token, self._key_set, now)
        except TokenExpired:
            return  # Signed by us but dead already: nothing left to revoke.
        except TokenNotYetValid:
            # Ours, and valid once its iat comes (another instance's clock ran
            # ahead): revoked it must stay then. The signature is checked still.
            info = verify_access_token(token, self._key_set, now, leeway=math.inf)
        except TokenInvalid as exc:
            raise ApiError(
                401, "invalid_token", "the token is not valid", extra={"reason": exc.reason}
            ) from None
        self.revoked.put(revocation_key(token), RevokedRecord(expires=info.expires_at))
