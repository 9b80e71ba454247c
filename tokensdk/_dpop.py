"""DPoP (RFC 9449): sender-constrained tokens, proved with the client's Ed25519 key.

Every token request and every resource request carries a fresh proof: a JWT with
``typ: dpop+jwt``, ``alg: EdDSA`` and the public key as an embedded JWK, whose claims
name the request (``htm``, ``htu``), a unique ``jti``, ``iat``, the server's last
``DPoP-Nonce`` if it gave one, and for resource requests the access token's hash
``ath``. Building the signing input is pure; signing goes through the same
:class:`~tokensdk.Signer` idea as asset tokens.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any, Protocol, runtime_checkable

from yarl import URL

from tokensdk._errors import InvalidInput

__all__ = ["DPoPSigner", "DPoPState", "jwk", "jwk_thumbprint", "signing_input"]


@runtime_checkable
class DPoPSigner(Protocol):
    """An Ed25519 key that signs DPoP proofs (:class:`~tokensdk.Ed25519Signer` is one)."""

    public_key_hex: str

    async def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``."""
        ...


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk(public_key_hex: str) -> dict[str, str]:
    """The public key as an OKP JWK (RFC 8037)."""
    try:
        raw = bytes.fromhex(public_key_hex)
    except ValueError:
        raise InvalidInput("the DPoP key's public_key_hex is not hex") from None
    if len(raw) != 32:
        raise InvalidInput("the DPoP key must be an Ed25519 key (32-byte public key)")
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(raw)}


def jwk_thumbprint(public_key_hex: str) -> str:
    """RFC 7638 thumbprint of the key: the ``jkt`` a bound token carries."""
    canonical = json.dumps(jwk(public_key_hex), separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def htu(url: str) -> str:
    """The ``htu`` claim: the request URL without query and fragment."""
    return str(URL(url).with_query(None).with_fragment(None))


def signing_input(
    public_key_hex: str,
    method: str,
    url: str,
    *,
    iat: int,
    jti: str,
    nonce: str | None = None,
    access_token: str | None = None,
) -> bytes:
    """The JWS signing input (``header.claims``) of a proof. Pure."""
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk(public_key_hex)}
    claims: dict[str, Any] = {"htm": method.upper(), "htu": htu(url), "iat": iat, "jti": jti}
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["ath"] = _b64(hashlib.sha256(access_token.encode()).digest())
    return (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    ).encode("ascii")


class DPoPState:
    """A session's DPoP key and the nonces servers handed out, by origin.

    Args:
        signer: The key.
        wall: Returns the wall time for ``iat`` (the session's clock).
    """

    __slots__ = ("_wall", "nonces", "signer")

    def __init__(self, signer: DPoPSigner, wall: Any) -> None:
        self.signer = signer
        self._wall = wall
        #: Origin (``scheme://host:port``) -> the last ``DPoP-Nonce`` it sent.
        self.nonces: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"DPoPState(jkt={jwk_thumbprint(self.signer.public_key_hex)!r})"

    def remember(self, url: str, nonce: str | None) -> bool:
        """Keep a ``DPoP-Nonce`` a server sent; True when it is new."""
        if not nonce or len(nonce) > 1024:
            return False
        origin = _origin(url)
        if self.nonces.get(origin) == nonce:
            return False
        self.nonces[origin] = nonce
        return True

    async def proof(self, method: str, url: str, *, access_token: str | None = None) -> str:
        """A fresh proof for one request (a new ``jti`` every time)."""
        message = signing_input(
            self.signer.public_key_hex,
            method,
            url,
            iat=int(self._wall()),
            jti=secrets.token_urlsafe(16),
            nonce=self.nonces.get(_origin(url)),
            access_token=access_token,
        )
        signature = await self.signer.sign(message)
        return message.decode("ascii") + "." + _b64(signature)


def _origin(url: str) -> str:
    parsed = URL(url)
    return f"{parsed.scheme}://{parsed.host}:{parsed.port}"
