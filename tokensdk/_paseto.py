"""Asset access tokens: PASETO v4.public and PASERK k4 keys, pyseto behind a strict gate.

pyseto does the cryptography: it loads and serialises keys (PASERK ``k4.public``,
``k4.secret``, ``k4.pid``), signs tokens and verifies them (PAE and Ed25519). This
module puts two things around it that pyseto does not do:

- **A strict gate** in front of every parser, so that every token and key has exactly
  one accepted spelling (what makes a cache or a revocation list keyed by the token
  string sound). pyseto alone accepts padded and non-canonical base64url and a
  ``k4.secret`` whose public half belongs to another seed; the gate refuses those,
  tokens over a size limit, and every purpose and version but ``v4.public``. (A
  second spelling of the signature, ``S + L``, fails Ed25519 verification itself:
  pyseto verifies with OpenSSL, which requires a canonical ``S``.)
- **The contract's claims**, parsed and checked here with an injected ``now``:
  pyseto's own ``exp``/``nbf`` checks read the wall clock, so tokens are decoded
  without its deserializer and only the verified payload bytes are taken from it.

Claims of an asset access token (see the wire contract)::

    {"assetId": str, "iat": "2022-01-30T13:26:28.600Z", "exp": "...", "assetIds"?: [str]}

with footer ``{"kid": <PASERK k4.pid of the signing key>}``.

Nothing here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

import binascii
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from tokensdk._errors import (
    BadSignature,
    InvalidInput,
    TokenExpired,
    TokenMalformed,
    TokenNotYetValid,
    UnknownKey,
)

# pyseto is imported where it is used: with argon2, pycryptodomex and cffi it takes
# ~50 ms, and `import tokensdk` loads this module whether or not asset tokens are used.
if TYPE_CHECKING:
    from pyseto import KeyInterface

__all__ = [
    "DEFAULT_LIFETIME",
    "DEFAULT_MAX_SIZE",
    "AccessTokenInfo",
    "KeySet",
    "PublicKey",
    "SigningKey",
    "ValidationCache",
    "b64url_decode",
    "b64url_encode",
    "decode_v4_public",
    "encode_v4_public",
    "format_timestamp",
    "parse_timestamp",
    "pre_auth_encode",
    "read_footer",
    "sign_asset_token",
    "verify_access_token",
]

DEFAULT_LIFETIME = 900.0
"""Lifetime of an asset access token in seconds (the contract's 15 minutes)."""

DEFAULT_MAX_SIZE = 8192
"""Longest token (in characters) that is even looked at."""

_HEADER = "v4.public."
_HEADER_LEN = len(_HEADER)
_SIG_LEN = 64
_KEY_LEN = 32

_PASERK_PUBLIC = "k4.public."
_PASERK_SECRET = "k4.secret."  # noqa: S105 (a type prefix, not a secret)

_HEX64 = re.compile(r"[0-9a-fA-F]{64}\Z")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_STD_TO_URL = bytes.maketrans(b"+/", b"-_")
_a2b = binascii.a2b_base64
_b2a = binascii.b2a_base64
_json_loads = json.loads
_fromisoformat = datetime.fromisoformat


# -- base64url: the one accepted spelling ------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """Encode bytes as unpadded URL-safe Base64 (the PASETO/PASERK form).

    Args:
        data: The bytes to encode.

    Returns:
        The text, without ``=`` padding.
    """
    return _b2a(data, newline=False).translate(_STD_TO_URL).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    # None on anything but canonical unpadded URL-safe Base64; callers pick the error.
    # Canonical means the text is what encoding its bytes gives back: that one comparison
    # refuses padding, the standard alphabet's + and /, characters the lenient decoder
    # skips (spaces, newlines, ...), and non-zero trailing bits (a second spelling).
    # binascii and bytes.translate directly: this runs twice for every token verified.
    try:
        data = text.encode("ascii")
        raw = _a2b(data.translate(_URL_TO_STD) + b"=" * (-len(data) % 4))
    except ValueError:  # binascii.Error, and non-ASCII text
        return None
    return raw if _b2a(raw, newline=False).translate(_STD_TO_URL).rstrip(b"=") == data else None


def b64url_decode(text: str) -> bytes:
    """Decode canonical unpadded URL-safe Base64, strictly.

    Args:
        text: The encoded text.

    Returns:
        The decoded bytes.

    Raises:
        InvalidInput: Padding, characters outside ``A-Z a-z 0-9 - _``, an impossible
            length, or non-zero trailing bits (a second spelling of the same bytes).
    """
    if not isinstance(text, str):
        raise InvalidInput("expected base64url text")
    raw = _b64url_decode(text)
    if raw is None:
        raise InvalidInput("not canonical unpadded base64url")
    return raw


# -- keys: pyseto keys, loaded through the gate ------------------------------------------


def _check_raw_public(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != _KEY_LEN:
        raise InvalidInput(f"an Ed25519 public key is {_KEY_LEN} raw bytes")


@attrs.frozen
class PublicKey:
    """An Ed25519 public key that verifies v4.public tokens.

    Attributes:
        raw: The 32 raw key bytes.
    """

    raw: bytes = attrs.field(validator=_check_raw_public)

    @cached_property
    def _key(self) -> KeyInterface:
        from pyseto import Key

        # pyseto reads the key from its canonical PASERK: the one spelling the gate admits.
        return Key.from_paserk(_PASERK_PUBLIC + b64url_encode(self.raw))

    @cached_property
    def paserk(self) -> str:
        """The key as PASERK ``k4.public.<b64url>``."""
        return self._key.to_paserk()

    @cached_property
    def pid(self) -> str:
        """The key's PASERK ``k4.pid`` identifier (the ``kid`` in token footers)."""
        return self._key.to_paserk_id()

    @property
    def hex(self) -> str:
        """The raw key as lowercase hex (the wire contract's asset key form)."""
        return self.raw.hex()

    @classmethod
    def from_paserk(cls, paserk: str) -> PublicKey:
        """Load a key from its PASERK ``k4.public`` form, strictly.

        Args:
            paserk: ``k4.public.`` followed by 43 characters of canonical base64url.

        Returns:
            The key.

        Raises:
            InvalidInput: Another PASERK type or version, bad encoding, wrong length.
        """
        if not isinstance(paserk, str) or not paserk.startswith(_PASERK_PUBLIC):
            raise InvalidInput("not a k4.public PASERK")
        return cls(b64url_decode(paserk[len(_PASERK_PUBLIC) :]))

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Load a key from 64 hex characters.

        Args:
            text: The raw key as hex.

        Returns:
            The key.

        Raises:
            InvalidInput: Not exactly 64 hex digits, or not a valid key.
        """
        if not isinstance(text, str) or _HEX64.match(text) is None:
            raise InvalidInput("an Ed25519 public key is 64 hex digits")
        return cls(bytes.fromhex(text))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Check a plain Ed25519 signature (not a token) made by this key's private half.

        pyseto verifies only tokens, so this one uses ``cryptography`` directly.

        Args:
            signature: The 64-byte signature.
            data: The signed bytes.

        Returns:
            True if the signature is valid.
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def _v4_secret(key: KeyInterface | Ed25519PrivateKey) -> KeyInterface:
    # SigningKey's converter: a pyseto v4.public secret key, or a cryptography key.
    from pyseto import Key, KeyInterface

    if isinstance(key, Ed25519PrivateKey):
        return Key.from_asymmetric_key_params(4, d=key.private_bytes_raw())
    if not isinstance(key, KeyInterface) or key.header != b"v4.public." or not key.is_secret:
        raise InvalidInput("a SigningKey holds a v4.public secret key")
    return key


def _secret_bytes(key: KeyInterface) -> bytes:
    # seed || public, read back from pyseto's own k4.secret serialisation.
    return b64url_decode(key.to_paserk()[len(_PASERK_SECRET) :])


@attrs.frozen(eq=False, repr=False)
class SigningKey:
    """An Ed25519 private key that signs v4.public tokens; its repr shows only the kid.

    Args:
        private: A pyseto v4.public secret key, or a ``cryptography`` Ed25519 key.
    """

    _key: KeyInterface = attrs.field(alias="private", converter=_v4_secret)

    @cached_property
    def public_key(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(_secret_bytes(self._key)[32:])

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a fresh random key.

        Returns:
            The key.
        """
        from pyseto import Key

        # An Ed25519 private key is 32 random bytes (RFC 8032, 5.1.5).
        return cls(Key.from_asymmetric_key_params(4, d=secrets.token_bytes(32)))

    @classmethod
    def from_bytes(cls, secret: bytes) -> SigningKey:
        """Load a key from its 32-byte seed, or the 64-byte ``seed || public`` form.

        Args:
            secret: The seed, or the seed followed by the public key.

        Returns:
            The key.

        Raises:
            InvalidInput: Wrong length, or a 64-byte key whose public half does not
                belong to its seed.
        """
        if not isinstance(secret, bytes) or len(secret) not in (32, 64):
            raise InvalidInput("an Ed25519 secret key is a 32-byte seed or 64 bytes")
        if len(secret) == 64:
            return cls.from_paserk(_PASERK_SECRET + b64url_encode(secret))
        from pyseto import Key

        return cls(Key.from_asymmetric_key_params(4, d=secret))

    @classmethod
    def from_paserk(cls, paserk: str) -> SigningKey:
        """Load a key from its PASERK ``k4.secret`` form, strictly.

        Args:
            paserk: ``k4.secret.`` followed by base64url of ``seed || public`` (64 bytes).

        Returns:
            The key.

        Raises:
            InvalidInput: Another PASERK type or version, bad encoding, wrong length,
                or a public half that does not match the seed.
        """
        if not isinstance(paserk, str) or not paserk.startswith(_PASERK_SECRET):
            raise InvalidInput("not a k4.secret PASERK")
        if len(b64url_decode(paserk[len(_PASERK_SECRET) :])) != 64:
            raise InvalidInput("a k4.secret key is 64 bytes")
        from pyseto import Key

        key = cls(Key.from_paserk(paserk))
        # pyseto keeps the seed and drops the public half it was given; serialising the
        # key again shows whether that half was the seed's own.
        if key.paserk_secret != paserk:
            raise InvalidInput("the public half does not match the seed")
        return key

    @property
    def seed(self) -> bytes:
        """The 32-byte private seed (secret: never log it)."""
        return _secret_bytes(self._key)[:32]

    @property
    def paserk_secret(self) -> str:
        """The key as PASERK ``k4.secret`` (secret: never log it)."""
        return self._key.to_paserk()

    def sign(self, data: bytes) -> bytes:
        """Sign bytes with plain Ed25519 (not a token).

        pyseto signs only tokens, so this one uses ``cryptography`` directly.

        Args:
            data: The bytes to sign.

        Returns:
            The 64-byte signature.
        """
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.public_key.pid!r})"


# -- v4.public tokens: the gate, then pyseto ---------------------------------------------


def pre_auth_encode(*pieces: bytes) -> bytes:
    """Pre-authentication encoding (PAE) of the PASETO spec (pyseto's).

    Args:
        *pieces: The byte strings to bind together.

    Returns:
        ``le64(len(pieces))`` followed by ``le64(len(p)) || p`` for every piece.
    """
    from pyseto.utils import pae

    return pae(list(pieces))


def encode_v4_public(
    key: SigningKey, message: bytes, footer: bytes = b"", implicit: bytes = b""
) -> str:
    """Sign and encode a v4.public token (with pyseto).

    Args:
        key: The signing key.
        message: The payload bytes, not empty.
        footer: The footer bytes (omitted from the token when empty).
        implicit: The implicit assertion (bound by the signature, not sent).

    Returns:
        The token text.

    Raises:
        InvalidInput: An empty message (pyseto could not verify the token).
    """
    import pyseto

    if not message:
        raise InvalidInput("a v4.public token needs a message")
    token = pyseto.encode(key._key, message, footer, implicit_assertion=implicit)
    return token.decode("ascii")


def _split(token: object, max_size: int) -> tuple[str, bytes]:
    # The gate's cheap checks: (body base64 text, footer bytes) of a v4.public token.
    if type(token) is not str:
        raise TokenMalformed("token is not a string")
    if len(token) > max_size:
        raise TokenMalformed("token exceeds the size limit")
    if not token.startswith(_HEADER):
        if token.startswith("v4.local."):
            raise TokenMalformed("v4.local token: wrong purpose")
        raise TokenMalformed("not a v4.public token")
    parts = token[_HEADER_LEN:].split(".")
    if len(parts) == 1:
        return parts[0], b""
    if len(parts) != 2 or not parts[1]:
        raise TokenMalformed("wrong number of token segments")
    footer = _b64url_decode(parts[1])
    if footer is None:
        raise TokenMalformed("footer is not canonical base64url")
    return parts[0], footer


def _open(body_b64: str, footer: bytes, key: PublicKey, implicit: bytes) -> bytes:
    # The rest of the gate on the body, then pyseto verifies; returns the message bytes.
    body = _b64url_decode(body_b64)
    if body is None:
        raise TokenMalformed("body is not canonical base64url")
    if len(body) < _SIG_LEN:
        raise TokenMalformed("token too short for a signature")
    if len(body) == _SIG_LEN:
        raise TokenMalformed("token has a signature but no message")
    # The key's verify is pyseto.decode without its parsing (done by the gate already)
    # and without a deserializer (whose claim checks would read the wall clock).
    try:
        return key._key.verify(body, footer, implicit)
    except Exception as exc:
        # Imported on failure only: an import statement costs ~1 µs on the hot path.
        from pyseto import VerifyError

        if isinstance(exc, VerifyError):
            raise BadSignature() from None
        raise


def decode_v4_public(
    token: str, key: PublicKey, *, max_size: int = DEFAULT_MAX_SIZE, implicit: bytes = b""
) -> tuple[bytes, bytes]:
    """Verify a v4.public token with one key and return its message and footer.

    Args:
        token: The token text.
        key: The public key to verify with.
        max_size: Longest accepted token, in characters.
        implicit: The implicit assertion the token was signed with.

    Returns:
        ``(message, footer)`` as bytes (footer ``b""`` when absent).

    Raises:
        TokenMalformed: Not v4.public, oversize, non-canonical or malformed encoding,
            an empty message.
        BadSignature: The signature does not verify with ``key``.
    """
    body_b64, footer = _split(token, max_size)
    return _open(body_b64, footer, key, implicit), footer


def read_footer(token: str, *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Return a v4.public token's footer WITHOUT verifying anything (to pick a key).

    Args:
        token: The token text.
        max_size: Longest accepted token, in characters.

    Returns:
        The raw footer bytes, ``b""`` when the token has none.

    Raises:
        TokenMalformed: Not v4.public, oversize, or a malformed footer encoding.
    """
    return _split(token, max_size)[1]


# -- timestamps: the contract's UTC millisecond form -------------------------------------


def format_timestamp(seconds: float) -> str:
    """Format Unix seconds as the contract's UTC form ``2022-01-30T13:26:28.600Z``.

    Args:
        seconds: Unix time; rounded down to the millisecond (a timestamp never lies
            ahead of the time it stands for).

    Returns:
        The ISO-8601 text with milliseconds and ``Z``.

    Raises:
        InvalidInput: A time outside the years 1970..9999 or not a finite number.
    """
    return _format_ms(_to_ms(seconds, floor=True))


def _to_ms(seconds: float, *, floor: bool = False) -> int:
    try:
        ms = round(seconds * 1000)
        # Rounded down: compared as floats, like the value came, so that a time
        # meant as a whole millisecond (and stored a hair below) keeps it.
        if floor and ms / 1000 > seconds:
            ms -= 1
        return ms
    except (ValueError, OverflowError, TypeError):
        raise InvalidInput("timestamp out of range") from None


def _format_ms(ms: int) -> str:
    try:
        if ms < 0:
            raise ValueError
        whole = datetime.fromtimestamp(ms // 1000, UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidInput("timestamp out of range") from None
    return f"{whole:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def parse_timestamp(text: object) -> float:
    """Parse an ISO-8601 timestamp with an explicit offset into Unix seconds.

    Args:
        text: The claim value, e.g. ``2022-01-30T13:26:28.600Z``.

    Returns:
        Unix seconds.

    Raises:
        TokenMalformed: Not a string, not ISO-8601, or without a time zone.
    """
    if type(text) is not str:
        raise TokenMalformed("timestamp claim is not a string")
    try:
        when = _fromisoformat(text)
    except ValueError:
        raise TokenMalformed("timestamp claim is not ISO-8601") from None
    if when.tzinfo is None:
        raise TokenMalformed("timestamp claim has no time zone")
    return when.timestamp()


# -- asset access tokens: the contract's claims, checked with an injected clock ----------


def sign_asset_token(
    key: SigningKey,
    asset_id: str,
    issued_at: float,
    lifetime: float = DEFAULT_LIFETIME,
    *,
    extra_asset_ids: Sequence[str] = (),
) -> str:
    """Issue an asset access token (PASETO v4.public) as the contract describes it.

    Args:
        key: The service's signing key; its ``k4.pid`` goes into the footer as ``kid``.
        asset_id: The asset the token grants access to.
        issued_at: Unix seconds (the ``iat`` claim).
        lifetime: Seconds until ``exp``.
        extra_asset_ids: More asset ids, written as an ``assetIds`` claim if any.

    Returns:
        The token text.

    Raises:
        InvalidInput: An empty or non-string asset id, a non-positive lifetime, or an
            out-of-range time.
    """
    if not isinstance(asset_id, str) or not asset_id:
        raise InvalidInput("asset_id must be a non-empty string")
    if isinstance(extra_asset_ids, str) or not all(
        isinstance(a, str) and a for a in extra_asset_ids
    ):
        raise InvalidInput("extra_asset_ids must be non-empty strings")
    if not lifetime > 0:
        raise InvalidInput("lifetime must be positive")
    # Whole milliseconds first, so that exp - iat is exactly the lifetime on the wire;
    # iat rounded down, never into the future of the clock that issued it.
    iat_ms = _to_ms(issued_at, floor=True)
    claims: dict[str, Any] = {
        "assetId": asset_id,
        "iat": _format_ms(iat_ms),
        "exp": _format_ms(iat_ms + _to_ms(lifetime)),
    }
    if extra_asset_ids:
        claims["assetIds"] = list(extra_asset_ids)
    message = json.dumps(claims, separators=(",", ":")).encode()
    footer = json.dumps({"kid": key.public_key.pid}, separators=(",", ":")).encode()
    return encode_v4_public(key, message, footer)


def _kid_of(footer: bytes) -> str:
    if not footer:
        raise TokenMalformed("token has no footer with a kid")
    try:
        doc = _json_loads(footer.decode("utf-8"))
    except (ValueError, RecursionError):
        raise TokenMalformed("footer is not JSON") from None
    kid = doc.get("kid") if type(doc) is dict else None
    if type(kid) is not str:
        raise TokenMalformed("footer has no kid")
    return kid


@attrs.frozen
class AccessTokenInfo:
    """What a verified asset access token grants.

    Attributes:
        asset_ids: ``assetId`` followed by any ``assetIds``, deduplicated, in order.
        issued_at: ``iat`` in Unix seconds.
        expires_at: ``exp`` in Unix seconds.
        kid: The ``k4.pid`` of the key that signed the token.
    """

    asset_ids: tuple[str, ...]
    issued_at: float
    expires_at: float
    kid: str

    @property
    def asset_id(self) -> str:
        """The token's primary ``assetId``."""
        return self.asset_ids[0]

    def to_json(self) -> dict[str, list[str]]:
        """Return the contract's validation answer, ``{"assetIds": [...]}``."""
        return {"assetIds": list(self.asset_ids)}


def _claims(message: bytes, kid: str) -> AccessTokenInfo:
    try:
        claims = _json_loads(message.decode("utf-8"))
    except (ValueError, RecursionError):
        raise TokenMalformed("payload is not JSON") from None
    if type(claims) is not dict:
        raise TokenMalformed("payload is not a JSON object")
    asset_id = claims.get("assetId")
    if type(asset_id) is not str or not asset_id:
        raise TokenMalformed("missing or ill-typed assetId claim")
    issued_at = parse_timestamp(claims.get("iat"))
    expires_at = parse_timestamp(claims.get("exp"))
    extra = claims.get("assetIds")
    if extra is None:
        asset_ids: tuple[str, ...] = (asset_id,)
    else:
        if type(extra) is not list or not all(type(a) is str and a for a in extra):
            raise TokenMalformed("ill-typed assetIds claim")
        asset_ids = tuple(dict.fromkeys([asset_id, *extra]))
    return AccessTokenInfo(asset_ids, issued_at, expires_at, kid)


def _check_time(info: AccessTokenInfo, now: float, leeway: float) -> None:
    if info.expires_at <= now - leeway:
        raise TokenExpired("access token expired")
    if info.issued_at > now + leeway:
        raise TokenNotYetValid("access token issued in the future")


def verify_access_token(
    token: str,
    keys: KeySet,
    now: float,
    leeway: float = 0.0,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    cache: ValidationCache | None = None,
) -> AccessTokenInfo:
    """Validate an asset access token locally.

    The footer's ``kid`` picks the key; the signature is checked before any claim
    is read.

    Args:
        token: The token text.
        keys: The trusted public keys by ``kid``.
        now: The current time in Unix seconds.
        leeway: Seconds of clock skew tolerated on ``exp`` and ``iat``.
        max_size: Longest accepted token, in characters.
        cache: If given, a verified token is remembered there and a remembered one
            (whose key is still in ``keys``) skips the signature check.

    Returns:
        What the token grants.

    Raises:
        TokenMalformed: Not a well-formed canonical v4.public token with the
            contract's footer and claims (v4.local, other versions, oversize, ...).
        UnknownKey: The footer's ``kid`` is not in ``keys``.
        BadSignature: The signature does not verify.
        TokenExpired: ``exp <= now - leeway``.
        TokenNotYetValid: ``iat > now + leeway``.
    """
    if cache is not None:
        hit = cache.get(token, now, leeway)
        if hit is not None and hit.kid in keys:
            return hit
    body_b64, footer = _split(token, max_size)
    kid = _kid_of(footer)
    key = keys.get(kid)
    if key is None:
        raise UnknownKey("no key for the token's kid")
    info = _claims(_open(body_b64, footer, key, b""), kid)
    _check_time(info, now, leeway)
    if cache is not None:
        cache.put(token, info)
    return info


# -- key sets: the trusted keys by kid ---------------------------------------------------


class KeySet(Mapping[str, PublicKey]):
    """An immutable set of trusted public keys, by ``kid`` (their PASERK ``k4.pid``).

    Args:
        keys: The keys.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            if not isinstance(key, PublicKey):
                raise InvalidInput("a KeySet holds PublicKey values")
            self._keys[key.pid] = key

    @classmethod
    def of(cls, *keys: PublicKey) -> KeySet:
        """Build a key set from keys.

        Args:
            *keys: The keys.

        Returns:
            The key set.
        """
        return cls(keys)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | str | bytes) -> KeySet:
        """Read the ``GET /v1/keys`` body ``{"keys": [{"kid", "paserk"}, ...]}``.

        Args:
            doc: The parsed body, or its JSON text.

        Returns:
            The key set.

        Raises:
            InvalidInput: Not that shape, a bad PASERK, or a ``kid`` that is not the
                PASERK's ``k4.pid``.
        """
        if isinstance(doc, str | bytes):
            try:
                doc = json.loads(doc)
            except (ValueError, RecursionError):
                raise InvalidInput("key set is not JSON") from None
        entries = doc.get("keys") if isinstance(doc, Mapping) else None
        if not isinstance(entries, list):
            raise InvalidInput('key set must be {"keys": [...]}')
        keys = []
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
                raise InvalidInput('each key must be {"kid": str, "paserk": str}')
            key = PublicKey.from_paserk(entry.get("paserk"))  # type: ignore[arg-type]
            if key.pid != entry["kid"]:
                raise InvalidInput("a kid does not match its key")
            keys.append(key)
        return cls(keys)

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        """Return the ``GET /v1/keys`` body (a dict, ready for ``json.dumps``)."""
        return {"keys": [{"kid": kid, "paserk": key.paserk} for kid, key in self._keys.items()]}

    def __getitem__(self, kid: str) -> PublicKey:
        return self._keys[kid]

    def get(self, kid: str, default: Any = None) -> Any:
        """Return the key with this ``kid``, or ``default``."""
        return self._keys.get(kid, default)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeySet):
            return self._keys == other._keys
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._keys))

    def __repr__(self) -> str:
        return f"KeySet({list(self._keys)!r})"


# -- the cache of verified tokens --------------------------------------------------------


class ValidationCache:
    """A bounded LRU cache of verified tokens, keyed by the exact token string.

    Decoding is canonical (one accepted spelling per token), so a re-encoded token
    cannot hit an entry it does not own. An entry dies at its token's ``exp``
    (checked on every :meth:`get`); the least recently used entry is evicted when
    the cache is full.

    Args:
        maxsize: Most entries kept.
    """

    __slots__ = ("_entries", "maxsize")

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise InvalidInput("maxsize must be at least 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[str, AccessTokenInfo] = OrderedDict()

    def get(self, token: str, now: float, leeway: float = 0.0) -> AccessTokenInfo | None:
        """Return the cached result for a token that is still valid at ``now``.

        Args:
            token: The exact token text.
            now: The current time in Unix seconds.
            leeway: Seconds of clock skew tolerated, as in :func:`verify_access_token`.

        Returns:
            The cached info, or None (not cached, expired, or not yet valid).
        """
        info = self._entries.get(token)
        if info is None:
            return None
        if info.expires_at <= now - leeway:
            del self._entries[token]
            return None
        if info.issued_at > now + leeway:
            return None
        self._entries.move_to_end(token)
        return info

    def put(self, token: str, info: AccessTokenInfo) -> None:
        """Remember a verified token.

        Args:
            token: The exact token text that verified.
            info: What it granted.
        """
        entries = self._entries
        entries[token] = info
        entries.move_to_end(token)
        while len(entries) > self.maxsize:
            entries.popitem(last=False)

    def discard(self, token: str) -> None:
        """Forget a token (e.g. revoked); no error if it was not cached.

        Args:
            token: The exact token text.
        """
        self._entries.pop(token, None)

    def purge(self, now: float) -> int:
        """Drop every entry whose token expired at ``now``.

        Args:
            now: The current time in Unix seconds.

        Returns:
            How many entries were dropped.
        """
        dead = [t for t, info in self._entries.items() if info.expires_at <= now]
        for token in dead:
            del self._entries[token]
        return len(dead)

    def clear(self) -> None:
        """Forget everything (e.g. after a key was withdrawn)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, token: object) -> bool:
        return token in self._entries

    def __repr__(self) -> str:
        return f"ValidationCache(maxsize={self.maxsize}, entries={len(self._entries)})"
