"""Named MAC tokens: created by a bearer, verified in ``X-PowerAuth-Token`` headers."""

from __future__ import annotations

import base64
import secrets
import uuid

from tokensdk.server._api_errors import ApiError
from tokensdk.server._core import StateCore
from tokensdk.server._records import MacTokenRecord

__all__ = ["MacTokens"]


class MacTokens(StateCore):
    """MAC tokens, bound to a family (part of ``ServiceState``)."""

    def mac_token_key(self, token_id: str, now: float) -> bytes | None:
        """Return the raw secret of a live MAC token (family alive, user not frozen), or None.

        Args:
            token_id: The token id from the header.
            now: Wall time.
        """
        record = self.live_mac_token(token_id, now)
        if record is None:
            return None
        return base64.b64decode(self.vault.open("mac_tokens", token_id, record.secret))

    def create_mac_token(
        self, family: str, username: str, factors: tuple[str, ...]
    ) -> tuple[str, str]:
        """Create a named MAC token for a live family.

        Args:
            family: The family of the bearer that asked.
            username: Its user.
            factors: The factors that authenticated the request.

        Returns:
            ``(token_id, secret_base64)``.
        """
        token_id = str(uuid.uuid4())
        secret = base64.b64encode(secrets.token_bytes(16)).decode("ascii")
        self.mac_tokens.put(
            token_id,
            MacTokenRecord(
                secret=self.vault.seal("mac_tokens", token_id, secret),
                family=family,
                username=username,
                factors=factors,
            ),
        )
        return token_id, secret

    def remove_mac_token(self, username: str, token_id: str) -> None:
        """Remove one of ``username``'s MAC tokens.

        Raises:
            ApiError: 404 ``unknown_token`` (also for someone else's token).
        """
        record = self.mac_tokens.get(token_id)
        if record is None or record.username != username:
            raise ApiError(404, "unknown_token", "no such MAC token")
        self.mac_tokens.delete(token_id)

    def live_mac_token(self, token_id: str, now: float) -> MacTokenRecord | None:
        """Return a MAC token whose family is alive and whose user is not frozen, or None."""
        record = self.mac_tokens.get(token_id)
        if (
            record is None
            or not self.family_alive(record.family, now)
            or self.is_frozen(record.username)
        ):
            return None
        return record
