"""RedisStore: one credential's state in Redis, shared by every process of a fleet.

Keys of one store (``name``), all hash-tagged so a Redis Cluster keeps them in one slot:

- ``<prefix>{<name>}:state``: a hash with ``doc`` (the encoded state envelope, as a
  :class:`FileStore` would write it) and ``version`` (an integer that grows by one
  with every write, never reused while the key lives);
- ``<prefix>{<name>}:lock``: the refresh lease (redis-py's :class:`~redis.asyncio.lock.Lock`:
  ``SET NX PX`` with a random token, released by a compare-and-delete script);
- ``<prefix>{<name>}:changes``: the pub/sub channel every write publishes its
  version on, so members learn a new state without polling.

Every write is one Lua script: compare the version, write, publish, atomically.
Versions are the fence: a member whose lease ran out while it was refreshing can
no longer overwrite what the next holder saved, because the version moved.

This module does the Redis I/O only; what the versions and the lease mean for a
session is the coordinator's business.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import attrs

from tokensdk._errors import InvalidInput, StoreCorrupt, StoreUnavailable
from tokensdk.stores._codec import CorruptState, NewerFormat, decode_state, encode_state

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisLease", "RedisStore", "StoreUnavailable"]


# KEYS: state, channel. ARGV: expected version ("" = only if absent), doc.
# Returns the new version, or -(current version) - 1 on a conflict.
_SAVE_IF = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local expected = ARGV[1]
if expected == '' then
  if current ~= -1 then return -current - 1 end
elseif current ~= tonumber(expected) then
  return -math.max(current, 0) - 1
end
local version = math.max(current, 0) + 1
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', version)
redis.call('PUBLISH', KEYS[2], version)
return version
"""

# A member writes back what it holds when Redis lost it (flushed, restarted) or
# holds something older: the highest version wins, a newer one is never replaced.
_RESTORE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[1])
if current >= version then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', version)
redis.call('PUBLISH', KEYS[2], version)
return 1
"""

# Unconditional write (the plain StateStore.save of a single member).
_SAVE = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0') + 1
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'version', version)
redis.call('PUBLISH', KEYS[2], version)
return version
"""


def _connection_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError)


def client_from_url(url: str) -> Any:
    """Build a redis-py asyncio client from a URL.

    - ``redis://``, ``rediss://`` (TLS), ``unix://``: a standalone server;
    - ``redis+sentinel://host:port[,host:port...]/<service>[/<db>]``: the master
      of ``service`` as Sentinel reports it (failover followed by redis-py);
    - ``redis+cluster://host:port[,host:port...]``: a Redis Cluster.

    Args:
        url: The URL (credentials in it are never logged or shown in a repr).

    Raises:
        InvalidInput: An unknown scheme or a malformed Sentinel URL.
    """
    try:
        import redis.asyncio as aioredis
    except ImportError:  # the extra is missing
        raise InvalidInput(
            "RedisStore needs the redis extra: pip install 'tokensdk[redis]'"
        ) from None
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss", "unix"):
        return aioredis.Redis.from_url(url)
    hosts = [
        (host, int(port or 26379))
        for host, _, port in (h.rpartition("@")[2].partition(":") for h in parts.netloc.split(","))
        if host
    ]
    if parts.scheme == "redis+cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        if not hosts:
            raise InvalidInput("a redis+cluster URL needs at least one host:port")
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in hosts],
            password=parts.password,
            username=parts.username,
        )
    if parts.scheme == "redis+sentinel":
        from redis.asyncio.sentinel import Sentinel

        path = [p for p in parts.path.split("/") if p]
        if not hosts or not path:
            raise InvalidInput("a redis+sentinel URL is redis+sentinel://host:port/<service>[/db]")
        db = int(path[1]) if len(path) > 1 and path[1].isdigit() else 0
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, password=parts.password, username=parts.username, db=db, **options
        )
        return sentinel.master_for(path[0])
    raise InvalidInput(
        "a Redis URL starts with redis://, rediss://, unix://, redis+sentinel://"
        " or redis+cluster://"
    )


@attrs.define
class RedisLease:
    """The refresh lease, held by this member until released or expired.

    Attributes:
        lease: Seconds the lease lasts from its acquisition (Redis forgets it then).
    """

    lease: float
    _lock: Any = attrs.field(repr=False)

    async def release(self) -> None:
        """Give the lease back (a no-op once it expired or was taken over)."""
        from redis.exceptions import LockError

        try:
            await self._lock.release()
        except LockError:
            pass  # expired, maybe re-acquired by another member: not ours to delete
        except _connection_errors():
            pass  # Redis is gone: the lease expires by itself

    async def still_held(self) -> bool:
        """Whether Redis still holds this member's token for the lease."""
        try:
            return bool(await self._lock.owned())
        except _connection_errors():
            return False


class RedisStore:
    """The state of one credential in Redis, shared by every process that names it.

    A plain :class:`StateStore` (``load``/``save``/``clear``) for one process, plus
    the primitives a fleet coordinates through: versioned loads, compare-and-set
    saves, a refresh lease and change notifications.

    Args:
        url: A Redis URL (see :func:`client_from_url`); or pass ``client``.
        name: The credential's name: every member sharing a credential uses the
            same name (e.g. ``"billing-bot"``).
        client: A ready redis-py asyncio client instead of ``url``.
        prefix: Key prefix (one namespace per application).

    Raises:
        InvalidInput: Neither or both of ``url`` and ``client``, or an empty name.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str,
        client: aioredis.Redis | None = None,
        prefix: str = "tokensdk:",
    ) -> None:
        if (url is None) == (client is None):
            raise InvalidInput("give RedisStore a url or a client")
        if not isinstance(name, str) or not name or len(name) > 200:
            raise InvalidInput("RedisStore needs a name of 1..200 characters")
        if "{" in name or "}" in name:
            raise InvalidInput("a RedisStore name cannot contain braces (they are hash tags)")
        self._client = client if client is not None else client_from_url(url or "")
        self._owns_client = client is None
        self.name = name
        base = f"{prefix}{{{name}}}"
        self._state_key = f"{base}:state"
        self._lock_key = f"{base}:lock"
        self.channel = f"{base}:changes"
        self._save_if = self._client.register_script(_SAVE_IF)
        self._restore = self._client.register_script(_RESTORE)
        self._save = self._client.register_script(_SAVE)

    def __repr__(self) -> str:
        # The URL may hold a password: the name says which store this is.
        return f"RedisStore(name={self.name!r})"

    async def aclose(self) -> None:
        """Close the client this store created (not one it was given)."""
        if self._owns_client:
            await self._client.aclose()

    # -- StateStore ------------------------------------------------------------------

    async def load(self) -> dict[str, Any] | None:
        """Read the stored document (None when nothing is stored)."""
        document, _ = await self.load_versioned()
        return document

    async def save(self, document: Mapping[str, Any]) -> None:
        """Replace the stored document unconditionally (one member's plain save)."""
        data = encode_state(document)
        await self._call(self._save(keys=[self._state_key, self.channel], args=[data]))

    async def clear(self) -> None:
        """Remove the stored document."""
        await self._call(self._client.delete(self._state_key))

    # -- coordination primitives -----------------------------------------------------

    async def load_versioned(self) -> tuple[dict[str, Any] | None, int]:
        """Read the document and its version (``(None, 0)`` when nothing is stored).

        Raises:
            StoreUnavailable: Redis cannot be reached.
            StoreCorrupt: The stored bytes are not a state envelope.
        """
        raw, version = await self._call(self._client.hmget(self._state_key, ["doc", "version"]))
        if raw is None:
            return None, 0
        try:
            return decode_state(raw), int(version or 0)
        except (CorruptState, NewerFormat, ValueError) as exc:
            raise StoreCorrupt(f"the state in Redis ({self.name}) is unreadable: {exc}") from None

    async def save_if(self, document: Mapping[str, Any], version: int | None) -> int | None:
        """Write ``document`` only if the stored version is still ``version``.

        Args:
            document: The new state.
            version: The version it was derived from; None: only if nothing is stored.

        Returns:
            The new version, or None when somebody else wrote first (reload and retry).

        Raises:
            StoreUnavailable: Redis cannot be reached (nothing was written).
        """
        data = encode_state(document)
        expected = "" if version is None else str(version)
        result = int(
            await self._call(
                self._save_if(keys=[self._state_key, self.channel], args=[expected, data])
            )
        )
        return result if result > 0 else None

    async def restore(self, document: Mapping[str, Any], version: int) -> bool:
        """Write back a state this member holds, if Redis has none or an older one.

        Returns:
            True when it was written.
        """
        data = encode_state(document)
        result = await self._call(
            self._restore(keys=[self._state_key, self.channel], args=[version, data])
        )
        return bool(int(result))

    async def try_lock(self, lease: float) -> RedisLease | None:
        """Take the refresh lease if nobody holds it; never waits.

        Args:
            lease: Seconds after which Redis frees the lease by itself (a member
                killed while holding it blocks the fleet no longer than this).

        Returns:
            The lease, or None when another member holds it.
        """
        from redis.asyncio.lock import Lock

        lock = Lock(self._client, self._lock_key, timeout=lease, blocking=False)
        token = secrets.token_hex(16).encode()
        acquired = await self._call(lock.acquire(token=token))
        return RedisLease(lease, lock) if acquired else None

    async def lock_remaining(self) -> float | None:
        """Seconds until the current lease expires, or None when nobody holds it."""
        ms = int(await self._call(self._client.pttl(self._lock_key)))
        return None if ms < 0 else ms / 1000

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[int]]:
        """Subscribe to the versions other members write (``async with``, then iterate).

        The iterator yields each published version; it raises
        :class:`StoreUnavailable` when the connection drops (messages may have been
        missed: reload before trusting anything).
        """
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await self._call(pubsub.subscribe(self.channel))

            async def versions() -> AsyncIterator[int]:
                while True:
                    message = await self._call(
                        pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                    )
                    if message is not None and message.get("type") == "message":
                        yield int(message["data"])

            yield versions()
        finally:
            try:
                await pubsub.aclose()
            except _connection_errors():
                pass

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except _connection_errors() as exc:
            # The exception text names host and port at most; never the password.
            raise StoreUnavailable(
                f"Redis ({self.name}) cannot be reached: {type(exc).__name__}"
            ) from None
