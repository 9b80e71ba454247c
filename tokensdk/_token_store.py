"""The named MAC token store (placeholder, filled in by the MAC token issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokensdk._session import Session


class MacTokenStore:
    """Named MAC tokens of a session."""

    def __init__(self, session: Session) -> None:
        self._session = session
