"""One-time keys: a single-use key per user, answered with ``sha256hex(key | ha1)``."""

from __future__ import annotations

import hmac
import secrets

from tokensdk.server._core import StateCore
from tokensdk.server._passwords import one_time_key_answer, otk_answer_digest
from tokensdk.server._records import OneTimeKeyRecord

__all__ = ["OneTimeKeys"]


class OneTimeKeys(StateCore):
    """Pending one-time keys (part of ``ServiceState``)."""

    def new_one_time_key(self, username: str, now: float) -> str:
        """Issue a one-time key for ``username``, replacing any pending one.

        An unknown username gets a key too, drawn the same way, so the answer
        does not reveal which usernames exist; nothing is stored for it (made-up
        names cannot fill the database), so nobody can answer it.

        Args:
            username: The account name.
            now: Wall time.

        Returns:
            The key.
        """
        key = secrets.token_urlsafe(24)
        user = self.users.get(username)
        if user is None:
            return key  # looks like a real key, answerable by nobody; nothing stored
        ha1 = self._user_ha1(username, user)
        self.one_time_keys.put(
            username,
            OneTimeKeyRecord(
                answer=otk_answer_digest(one_time_key_answer(key, ha1)),
                expires=now + self.one_time_key_ttl,
            ),
        )
        return key

    def use_one_time_key(self, username: str, answer: str, now: float) -> bool:
        """Consume the pending key of ``username``; return whether ``answer`` matched.

        Any attempt consumes the key, right or wrong, so a key cannot be guessed at.

        Args:
            username: The account name.
            answer: The hash the client computed.
            now: Wall time.

        Returns:
            True when a live key existed and the answer matched.
        """
        record = self.one_time_keys.get(username)
        if record is None:
            return False
        self.one_time_keys.delete(username)
        if now >= record.expires or username not in self.users:
            return False
        return hmac.compare_digest(record.answer, otk_answer_digest(answer.lower()))
