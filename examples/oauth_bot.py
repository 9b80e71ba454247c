"""A bot on an OAuth 2.0 provider: client credentials, renewed in the background.

    python examples/oauth_bot.py --duration 10        # runs tests/oidc's provider (Node)
    OAUTH_ISSUER=https://id.example.com/realms/main OAUTH_CLIENT_ID=billing-bot \\
    OAUTH_CLIENT_SECRET=... OAUTH_SCOPE=api:read OAUTH_RESOURCE=https://api.example.com/me \\
        python examples/oauth_bot.py

The backend discovers the provider's endpoints (``/.well-known/openid-configuration``),
logs in with the client credentials grant and runs it again before each token expires
(the grant has no refresh token); every API call goes through the session's aiohttp
middleware. The session lives in a FileStore, so a restarted bot reuses its token. The
client secret comes from the environment only, never from the command line.

With no issuer the bot starts the test provider from ``tests/oidc`` (needs Node.js and
``npm ci`` run there once) and calls its protected test resource.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio

import tokensdk

HARNESS = Path(__file__).resolve().parent.parent / "tests" / "oidc"


@contextlib.contextmanager
def test_provider() -> Iterator[str]:
    """Run tests/oidc/provider.mjs on a free loopback port; yield its issuer URL."""
    node = shutil.which("node")
    if node is None or not (HARNESS / "node_modules").is_dir():
        raise SystemExit(
            "no OAUTH_ISSUER given, and the test provider cannot start: it needs Node.js"
            f" and `npm ci` in {HARNESS}"
        )
    config = json.dumps({"clientCredentialsTTL": 4})  # short-lived: renewals show
    process = subprocess.Popen(
        [node, "provider.mjs", "--port", "0", "--watch-stdin", "--config", config],
        cwd=HARNESS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit("the test provider did not start")
        yield line.split()[1]
    finally:
        process.terminate()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


async def run(args: argparse.Namespace, issuer: str, secret: str, resource: str) -> None:
    args.state.parent.mkdir(parents=True, exist_ok=True)
    backend = tokensdk.OAuth2(
        issuer, client_id=args.client_id, client_secret=secret, scope=args.scope or None
    )
    async with tokensdk.Session(backend, store=tokensdk.FileStore(args.state)) as session:
        if session.status is tokensdk.SessionStatus.ACTIVE:
            print(f"resumed as {session.username}")
        else:
            await session.login_client_credentials()
            print(f"logged in as {session.username} with the client credentials grant")
        calls = 0
        async with (
            session.events() as events,
            aiohttp.ClientSession(middlewares=(session.middleware(),)) as http,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(report, events)
            with anyio.move_on_after(args.duration):
                while True:
                    async with http.get(resource) as response:
                        response.raise_for_status()
                        body = await response.json()
                    calls += 1
                    print(f"call {calls}: {response.status} client {body.get('client_id')}")
                    await anyio.sleep(args.interval)
            tg.cancel_scope.cancel()
        print(f"stopping after {calls} calls; state kept in {args.state}")


async def report(events: tokensdk.EventStream) -> None:
    """Print what the session does in the background."""
    async for event in events:
        if event.type in (
            tokensdk.EventType.REFRESHED,
            tokensdk.EventType.REFRESH_FAILED,
            tokensdk.EventType.SESSION_LOST,
        ):
            print(f"{event.type.value} {event.detail or ''}".rstrip())


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", default=env("OAUTH_ISSUER"), help="$OAUTH_ISSUER")
    parser.add_argument("--client-id", default=env("OAUTH_CLIENT_ID", "app"))
    parser.add_argument("--scope", default=env("OAUTH_SCOPE", "api:read"))
    parser.add_argument("--resource", default=env("OAUTH_RESOURCE"), help="an API URL to call")
    parser.add_argument("--state", type=Path, default=Path(".tokensdk-oauth-bot/state.json"))
    parser.add_argument("--duration", type=float, default=float("inf"), help="seconds to run")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between calls")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack, contextlib.suppress(KeyboardInterrupt):
        issuer = args.issuer or stack.enter_context(test_provider())
        secret = env("OAUTH_CLIENT_SECRET") or ("app-secret" if not args.issuer else "")
        if not secret:
            raise SystemExit("set OAUTH_CLIENT_SECRET")
        resource = args.resource or f"{issuer}/_harness/resource"
        anyio.run(run, args, issuer, secret, resource)


if __name__ == "__main__":
    main()
