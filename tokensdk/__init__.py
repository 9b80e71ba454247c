"""tokensdk: keep an asyncio application authenticated for as long as it runs.

One ``async with Session(...)`` logs in, keeps a renewable token pair fresh in the
background, holds an observable array of per-asset PASETO access tokens, keeps a
named store of MAC tokens that sign requests locally, and persists its state.
"""

from __future__ import annotations

import typing

from tokensdk import _lazy
from tokensdk._assets import (
    AccessTokenInfo,
    AccessTokens,
    Ed25519Signer,
    Signer,
    TokenValidator,
    canonical_challenge,
    validate_access_token,
)
from tokensdk._backend import AuthBackend, NativeBackend, ResourceBackend
from tokensdk._clock import Clock, ManualClock, SystemClock
from tokensdk._coordinator import Coordinator, LocalCoordinator, StoreCoordinator
from tokensdk._errors import (
    AccountFrozen,
    BadSignature,
    Conflict,
    FactorMismatch,
    HeaderInvalid,
    InvalidClient,
    InvalidCredentials,
    InvalidInput,
    InvalidState,
    MacTokenError,
    NotFound,
    NotLoggedIn,
    ProtocolError,
    RateLimited,
    ServiceError,
    ServiceUnavailable,
    SessionClosed,
    SessionLost,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    TokenExpired,
    TokenInvalid,
    TokenMalformed,
    TokenNotYetValid,
    TokenRevoked,
    TokenSDKError,
    UnknownKey,
    UnknownMacToken,
)
from tokensdk._models import (
    AssetToken,
    Credentials,
    Event,
    EventType,
    MacToken,
    PendingRefresh,
    SessionSnapshot,
    SessionStatus,
)
from tokensdk._observable import EventStream
from tokensdk._policy import RefreshPolicy
from tokensdk._session import Session, one_time_key_answer
from tokensdk._token_store import Authentication
from tokensdk._transport import AttemptHook, RetryConfig
from tokensdk.stores import FileStore, MemoryStore, StateStore

# What a native session does not need (the OAuth 2.0 backend, introspection, the
# stores with an optional dependency) is imported when first named, so that
# `import tokensdk` stays cheap (benchmark row 10). Type checkers, IDEs and the API
# reference read these imports; at run time _lazy.attach resolves the names.
if typing.TYPE_CHECKING:
    from tokensdk._introspect import IntrospectionCache, TokenInfo, introspect
    from tokensdk._oauth2 import DeviceCode, OAuth2
    from tokensdk.stores import KeyringStore, RedisStore
else:
    __getattr__, __dir__ = _lazy.attach(
        __name__,
        {
            "DeviceCode": "tokensdk._oauth2",
            "IntrospectionCache": "tokensdk._introspect",
            "KeyringStore": "tokensdk.stores",
            "OAuth2": "tokensdk._oauth2",
            "RedisStore": "tokensdk.stores",
            "TokenInfo": "tokensdk._introspect",
            "introspect": "tokensdk._introspect",
        },
    )

__version__ = "0.1.0.dev0"

__all__ = [
    "AccessTokenInfo",
    "AccessTokens",
    "AccountFrozen",
    "AssetToken",
    "AttemptHook",
    "AuthBackend",
    "Authentication",
    "BadSignature",
    "Clock",
    "Conflict",
    "Coordinator",
    "Credentials",
    "DeviceCode",
    "Ed25519Signer",
    "Event",
    "EventStream",
    "EventType",
    "FactorMismatch",
    "FileStore",
    "HeaderInvalid",
    "IntrospectionCache",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidInput",
    "InvalidState",
    "KeyringStore",
    "LocalCoordinator",
    "MacToken",
    "MacTokenError",
    "ManualClock",
    "MemoryStore",
    "NativeBackend",
    "NotFound",
    "NotLoggedIn",
    "OAuth2",
    "PendingRefresh",
    "ProtocolError",
    "RateLimited",
    "RedisStore",
    "RefreshPolicy",
    "ResourceBackend",
    "RetryConfig",
    "ServiceError",
    "ServiceUnavailable",
    "Session",
    "SessionClosed",
    "SessionLost",
    "SessionSnapshot",
    "SessionStatus",
    "Signer",
    "StateStore",
    "StoreCoordinator",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "SystemClock",
    "TokenExpired",
    "TokenInfo",
    "TokenInvalid",
    "TokenMalformed",
    "TokenNotYetValid",
    "TokenRevoked",
    "TokenSDKError",
    "TokenValidator",
    "UnknownKey",
    "UnknownMacToken",
    "canonical_challenge",
    "introspect",
    "one_time_key_answer",
    "validate_access_token",
]
