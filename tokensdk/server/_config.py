"""The reference service's configuration value."""

from __future__ import annotations

import attrs

from tokensdk._clock import Clock, SystemClock

__all__ = ["ServiceConfig"]


@attrs.define
class ServiceConfig:
    """Everything the reference token service can be told at start.

    Attributes:
        realm: The realm named in ``/v1/status`` and mixed into one-time key answers.
        users: Username -> plaintext password; hashed at startup, never stored as is.
        frozen_users: Accounts frozen at start: their sessions are revoked, their
            logins and refreshes get 403 ``account_frozen``.
        access_ttl: Access token lifetime in seconds.
        refresh_ttl: Refresh token lifetime in seconds.
        one_time_key_ttl: One-time key lifetime in seconds.
        login_rate_limit: Login attempts allowed per (username, client IP) within the
            window, and one-time-key requests per username. An attempt counts
            from before the password check; a success clears the pair's count.
        login_rate_window: The rate-limit window in seconds.
        ip_rate_limit: Per client IP within the window: login attempts (a success
            gives its attempt back), and apart from them one-time-key requests
            and challenge requests (``None``: five times ``login_rate_limit``).
        user_rate_limit: Login attempts allowed per username from all clients
            together, and challenge requests per asset, within the window: a high
            ceiling, so that guessing from many addresses stays slow while one
            address cannot lock the owner out (``None``: ten times
            ``login_rate_limit``).
        hash_concurrency: Password checks (scrypt) run at once (``None``: the
            number of CPUs); each holds ``128 * 8 * scrypt_n`` bytes while it runs.
        hash_queue: Password checks allowed to wait for a free slot (``None``:
            four times ``hash_concurrency``); beyond that: 503 ``service_busy``.
        header_timeout: Seconds a connection may take to deliver a request head
            (request line and headers); slower connections are closed.
        max_body: The largest request body accepted, in bytes (larger: 413).
        mac_window_past: How old a MAC header timestamp may be, in seconds.
        mac_window_future: How far in the future a MAC header timestamp may be, in seconds.
        challenge_ttl: Asset challenge lifetime in seconds.
        asset_token_lifetime: Asset access token lifetime in seconds.
        assets: Asset id -> the holder's Ed25519 public key (lowercase hex).
        db: SQLite file path for persistent state; ``None`` keeps state in memory.
        key_file: The service key (32 raw bytes) that seals secrets in the database;
            ``None``: ``<db>.key``, created on first start (memory mode: a random
            key in memory).
        idempotency_window: How long a refresh may be retried with the same
            ``idempotencyKey`` after its first success, in seconds (at most 30, the
            default). 0 turns the extension off: keys are ignored and answers do
            not name a window, as from a service of contract v1 alone.
        clock: Where every time read in the service comes from.
        scrypt_n: The scrypt cost parameter for new password hashes (r=8, p=1);
            2**17 as OWASP recommends. Lower it for tests and benchmarks only.
        rotate_key: Generate a new signing key at start (old keys keep verifying).
        drop_keys: Key ids (``k4.pid...``) to remove from the key set at start.
        clients: OAuth 2.0 clients of ``/oauth2/token``: client id -> its secret, or
            ``None`` for a public client (no secret; no ``client_credentials``).
        redis_url: A Redis server (``redis://``, ``rediss://``, ``unix://``) that
            holds the MAC replay guard and the rate-limit counts, so that several
            service processes share them; ``None`` keeps them in this process.
            Nothing else is shared through it (see docs/PROTOCOL-EXTENSIONS.md).
    """

    realm: str = "tokensdk"
    users: dict[str, str] = attrs.field(factory=dict, repr=False)
    frozen_users: frozenset[str] = frozenset()
    access_ttl: int = 300
    refresh_ttl: int = 86400
    one_time_key_ttl: int = 300
    login_rate_limit: int = 10
    login_rate_window: float = 60.0
    ip_rate_limit: int | None = None
    user_rate_limit: int | None = None
    hash_concurrency: int | None = None
    hash_queue: int | None = None
    header_timeout: float = 5.0
    max_body: int = 64 * 1024
    mac_window_past: float = 600.0
    mac_window_future: float = 120.0
    challenge_ttl: int = 300
    asset_token_lifetime: int = 900
    assets: dict[str, str] = attrs.field(factory=dict)
    db: str | None = None
    key_file: str | None = None
    idempotency_window: float = 30.0
    clock: Clock = attrs.field(factory=SystemClock)
    scrypt_n: int = 2**17
    rotate_key: bool = False
    drop_keys: tuple[str, ...] = ()
    redis_url: str | None = attrs.field(default=None, repr=False)
    clients: dict[str, str | None] = attrs.field(factory=dict, repr=False)
