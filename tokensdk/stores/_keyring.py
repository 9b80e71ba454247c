"""KeyringStore: the state document as one entry in the OS keychain (the ``keyring`` library).

``keyring`` is an optional extra (``pip install 'tokensdk[keyring]'``): this module
imports it only when a :class:`KeyringStore` is created.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread

from tokensdk._errors import InvalidInput, StoreCorrupt, StoreError
from tokensdk.stores._codec import CorruptState, NewerFormat, decode_state, encode_state

if TYPE_CHECKING:
    import keyring.backend

__all__ = ["KeyringStore"]

_T = TypeVar("_T")


class KeyringStore:
    """Keep the state document in the system keyring, as one entry.

    The entry's password is the same JSON envelope a :class:`FileStore` writes.
    Blocking keyring calls run in a worker thread; operations on one instance are
    serialised in call order.

    Args:
        name: The entry's user name (one entry per session).
        service: The entry's service name.
        backend: A keyring backend to use; None uses keyring's configured default.

    Raises:
        InvalidInput: ``name`` or ``service`` is empty.
        ImportError: The ``keyring`` package is not installed.
    """

    __slots__ = ("_backend", "_keyring", "_lock", "_name", "_service")

    def __init__(
        self,
        name: str,
        *,
        service: str = "tokensdk",
        backend: keyring.backend.KeyringBackend | None = None,
    ) -> None:
        if not name or not service:
            raise InvalidInput("a KeyringStore needs a non-empty name and service")
        try:
            import keyring  # optional dependency: imported only when used
        except ImportError as exc:
            raise ImportError(
                "KeyringStore needs the keyring package: pip install 'tokensdk[keyring]'"
            ) from exc
        self._keyring: Any = keyring
        self._name = name
        self._service = service
        self._backend = backend
        self._lock = anyio.Lock()

    @property
    def name(self) -> str:
        """The entry's user name."""
        return self._name

    @property
    def service(self) -> str:
        """The entry's service name."""
        return self._service

    def __repr__(self) -> str:
        return f"KeyringStore({self._name!r}, service={self._service!r})"

    async def load(self) -> dict[str, Any] | None:
        """Read the keyring entry.

        Returns:
            The stored document, or None when there is no entry.

        Raises:
            StoreCorrupt: The entry could not be decoded; it was deleted (``moved_to``
                is None).
            StoreError: The keyring failed, or the entry was written by a newer tokensdk.
        """
        async with self._lock:
            return await anyio.to_thread.run_sync(self._load_sync)

    async def save(self, document: Mapping[str, Any]) -> None:
        """Replace the keyring entry with ``document``.

        Args:
            document: A JSON-able mapping, encoded before this call first yields.

        Raises:
            InvalidInput: The document is not JSON-serialisable.
            StoreError: The keyring failed.
        """
        text = encode_state(document).decode("utf-8")
        async with self._lock:
            await anyio.to_thread.run_sync(self._save_sync, text)

    async def clear(self) -> None:
        """Delete the keyring entry (no entry is fine).

        Raises:
            StoreError: The keyring failed.
        """
        async with self._lock:
            await anyio.to_thread.run_sync(self._clear_sync)

    async def quarantine(self) -> str | None:
        """Delete the entry: its envelope was fine but its content is not.

        A keyring has no place to move an entry aside to; a corrupt entry is
        deleted, as :meth:`load` does with one it cannot decode.

        Returns:
            None (nothing was kept).

        Raises:
            StoreError: The keyring failed.
        """
        await self.clear()
        return None

    # -- blocking parts, run in a worker thread ------------------------------------

    def _where(self) -> str:
        return f"keyring entry {self._service}/{self._name}"

    def _call(self, what: str, operation: Callable[..., _T], *args: str) -> _T:
        try:
            return operation(*args)
        except Exception as exc:  # any backend failure: the backends raise many kinds
            # The type only: a backend's message could quote what it was given.
            raise StoreError(
                f"cannot {what} {self._where()}: the keyring failed ({type(exc).__name__})"
            ) from None

    def _get_backend(self) -> Any:
        if self._backend is not None:
            return self._backend
        return self._call("open", self._keyring.get_keyring)

    def _load_sync(self) -> dict[str, Any] | None:
        backend = self._get_backend()
        text = self._call("read", backend.get_password, self._service, self._name)
        if text is None:
            return None
        try:
            return decode_state(text if isinstance(text, str) else "")
        except NewerFormat as exc:
            raise StoreError(
                f"{self._where()} was written by a newer tokensdk (format version "
                f"{exc.version}); upgrade tokensdk to read it. The entry was left untouched"
            ) from None
        except CorruptState as exc:
            reason = exc.reason
        self._delete(backend)
        raise StoreCorrupt(f"{self._where()} is corrupt ({reason}); it was deleted")

    def _save_sync(self, text: str) -> None:
        backend = self._get_backend()
        self._call("write", backend.set_password, self._service, self._name, text)

    def _clear_sync(self) -> None:
        self._delete(self._get_backend())

    def _delete(self, backend: Any) -> None:
        try:
            backend.delete_password(self._service, self._name)
            return
        except Exception:  # noqa: S110
            # Backends raise PasswordDeleteError both for "no entry" and for real
            # failures: whether the entry is gone is checked right below.
            pass
        if self._call("delete", backend.get_password, self._service, self._name) is not None:
            raise StoreError(f"cannot delete {self._where()}: the keyring refused")
