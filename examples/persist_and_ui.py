"""Change callbacks that persist the token array and print a UI-style diff.

    python examples/persist_and_ui.py

An app that shows its asset access tokens in a UI registers one change callback:
it receives an immutable snapshot after every change, in order, never two at once,
so it can diff against the previous one, redraw only what changed, and save the
array (here to a JSON file). A later session is started with the saved array.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import anyio
from _embedded import USERS, token_service

import tokensdk


class TokenListUI:
    """Keeps the last snapshot's array; prints what changed and saves the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.shown: dict[str, tokensdk.AssetToken] = {}

    def __call__(self, snapshot: tokensdk.SessionSnapshot) -> None:
        """The change callback (sync; async ones work the same way)."""
        now = {item.asset_id: item for item in snapshot.access_tokens}
        for asset_id in sorted(now.keys() - self.shown.keys()):
            print(
                f"  + {asset_id:<8} expires in {(now[asset_id].expires_at or 0) - time.time():.0f}s"
            )
        for asset_id in sorted(self.shown.keys() - now.keys()):
            print(f"  - {asset_id}")
        for asset_id in sorted(now.keys() & self.shown.keys()):
            if now[asset_id] != self.shown[asset_id]:
                print(f"  ~ {asset_id:<8} renewed")
        if now != self.shown:
            self.save(snapshot.access_tokens)
        self.shown = now

    def save(self, tokens: tuple[tokensdk.AssetToken, ...]) -> None:
        """Write the array as JSON (tokens are bearer secrets: keep the file private)."""
        document: list[dict[str, Any]] = [
            {"assetId": t.asset_id, "token": t.token, "expiresAt": t.expires_at} for t in tokens
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document))
        temporary.chmod(0o600)
        temporary.replace(self.path)
        print(f"  (saved {len(tokens)} token(s) to {self.path.name})")


async def run(url: str | None, path: Path) -> None:
    signers = {name: tokensdk.Ed25519Signer.generate() for name in ("door-1", "door-2", "gate")}
    assets = {name: signer.public_key_hex for name, signer in signers.items()}
    async with token_service(url, assets=assets) as base:
        ui = TokenListUI(path)
        async with tokensdk.Session(base, on_change=ui) as session:
            await session.login("alice", USERS["alice"])
            print("requesting three tokens:")
            for name, signer in signers.items():
                await session.access_tokens.request(name, signer)
                await session.changes_delivered()
            print("renewing door-1:")
            await session.access_tokens.request("door-1", signers["door-1"])
            await session.changes_delivered()
            print("revoking gate:")
            await session.access_tokens.revoke("gate")
            await session.changes_delivered()

        saved = json.loads(await anyio.Path(path).read_text())
        print(f"a new session restores {len(saved)} saved token(s):")
        restored_ui = TokenListUI(path)
        async with tokensdk.Session(base, on_change=restored_ui, access_tokens=saved) as again:
            await again.changes_delivered()
            print(f"restored: {[t.asset_id for t in again.access_tokens]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="token service (default: run one in-process)")
    parser.add_argument("--file", type=Path, default=Path(".tokensdk-ui/access_tokens.json"))
    args = parser.parse_args()
    anyio.run(run, args.url, args.file)


if __name__ == "__main__":
    main()
