"""An aiohttp.web backend that checks asset tokens locally and calls an upstream API.

    python examples/web_backend.py --duration 3

The backend (a) validates the asset access tokens its clients present, locally,
with one :class:`TokenValidator` for the process (the service's keys are fetched
once and cached; an unknown key id triggers one re-fetch; verified tokens are
cached), and (b) calls an upstream API -- here the token service's ``/v1/me`` --
with its own auto-refreshed session through the aiohttp middleware.

The script also plays a device: it obtains an asset token by proof of key and
calls the backend with it, and once with a forged token.
"""

from __future__ import annotations

import argparse
import contextlib

import aiohttp
import anyio
from _embedded import USERS, token_service
from aiohttp import web

import tokensdk
from tokensdk import Ed25519Signer, TokenValidator, validate_access_token

VALIDATOR = web.AppKey("validator", TokenValidator)
UPSTREAM = web.AppKey("upstream", aiohttp.ClientSession)
BASE = web.AppKey("base", str)


async def open_door(request: web.Request) -> web.Response:
    """``POST /doors/{id}/open``: allowed for a token that grants the door."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return web.json_response({"error": "token_required"}, status=401)
    try:
        info = await validate_access_token(token, request.app[VALIDATOR])
    except tokensdk.TokenInvalid as exc:
        return web.json_response({"error": "invalid_token", "reason": exc.reason}, status=401)
    door = request.match_info["door"]
    if door not in info.asset_ids:
        return web.json_response({"error": "forbidden"}, status=403)
    # The upstream call: the middleware adds the backend's own fresh bearer token.
    async with request.app[UPSTREAM].get(f"{request.app[BASE]}/v1/me") as upstream:
        upstream.raise_for_status()
        operator = (await upstream.json())["username"]
    return web.json_response({"door": door, "opened": True, "loggedBy": operator})


async def run(url: str | None, duration: float) -> None:
    device_key = Ed25519Signer.generate()
    async with (
        token_service(url, assets={"door-1": device_key.public_key_hex}) as base,
        tokensdk.Session(base) as backend_session,
        TokenValidator(base) as validator,
        aiohttp.ClientSession(middlewares=(backend_session.middleware(),)) as upstream,
    ):
        await backend_session.login("backend", USERS["backend"])
        app = web.Application()
        app[VALIDATOR], app[UPSTREAM], app[BASE] = validator, upstream, base
        app.router.add_post("/doors/{door}/open", open_door)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        backend_url = f"http://{host}:{port}"
        print(f"backend listening on {backend_url}")
        try:
            await play_device(base, backend_url, device_key, duration)
        finally:
            await runner.cleanup()
        print(f"key set fetched {validator.key_fetches} time(s) for all requests")


async def play_device(base: str, backend_url: str, key: Ed25519Signer, duration: float) -> None:
    """A device: get an asset token by proof of key, then use it at the backend."""
    async with tokensdk.Session(base) as device, aiohttp.ClientSession() as http:
        await device.login("alice", USERS["alice"])
        await device.access_tokens.request("door-1", key)
        door = f"{backend_url}/doors/door-1/open"
        with anyio.move_on_after(duration):
            count = 0
            while True:
                headers = device.access_tokens.headers_for("door-1")
                async with http.post(door, headers=headers) as response:
                    count += 1
                    print(f"request {count}: {response.status} {await response.json()}")
                await anyio.sleep(0.5)
        forged = {"Authorization": "Bearer v4.public.forged"}
        async with http.post(door, headers=forged) as response:
            print(f"forged token: {response.status} {await response.json()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="token service (default: run one in-process)")
    parser.add_argument("--duration", type=float, default=float("inf"), help="seconds to run")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(run, args.url, args.duration)


if __name__ == "__main__":
    main()
