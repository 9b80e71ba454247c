"""The application backend's side of one-time key login.

    python examples/one_time_key_backend.py

The client never holds the password: it asks the token service for a one-time key,
sends the key to the application's own backend, which knows the password (or, in
practice, a stored digest of it) and answers with
``tokensdk.one_time_key_answer(key, username, realm, password)``; the client
presents that answer to log in. Keys live 300 s and are single use.
"""

from __future__ import annotations

import argparse

import aiohttp
import anyio
from _embedded import USERS, token_service
from aiohttp import web

import tokensdk

PASSWORDS = web.AppKey("passwords", dict)
REALM = web.AppKey("realm", str)


async def answer_key(request: web.Request) -> web.Response:
    """``POST /one-time-key/answer`` ``{"username", "key"}`` -> ``{"hash"}``.

    A real backend authenticates its caller first (device attestation, a session
    cookie, ...); this example trusts it.
    """
    body = await request.json()
    username, key = body.get("username"), body.get("key")
    password = request.app[PASSWORDS].get(username)
    if not isinstance(key, str) or password is None:
        return web.json_response({"error": "unknown_user"}, status=404)
    digest = tokensdk.one_time_key_answer(key, username, request.app[REALM], password)
    return web.json_response({"hash": digest})


async def run(url: str | None) -> None:
    async with token_service(url) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/status") as response:
            realm = (await response.json())["realm"]
        app = web.Application()
        app[PASSWORDS], app[REALM] = dict(USERS), realm
        app.router.add_post("/one-time-key/answer", answer_key)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        backend = f"http://{host}:{port}/one-time-key/answer"
        print(f"app backend answering one-time keys at {backend}")
        try:

            async def ask_backend(key: str) -> str:
                print("client: got a one-time key, asking the app backend for the answer")
                payload = {"username": "alice", "key": key}
                async with http.post(backend, json=payload) as response:
                    response.raise_for_status()
                    return str((await response.json())["hash"])

            async with tokensdk.Session(base) as session:
                await session.login_with_one_time_key("alice", ask_backend)
                print(f"client: logged in as {session.username} without the password")

            async with tokensdk.Session(base) as session:
                try:
                    await session.login_with_one_time_key("alice", lambda key: "0" * 64)
                except tokensdk.InvalidCredentials:
                    print("client: a wrong answer is refused (invalid_credentials)")
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="token service (default: run one in-process)")
    args = parser.parse_args()
    anyio.run(run, args.url)


if __name__ == "__main__":
    main()
