"""``python -m tokensdk demo``: the whole SDK at work against an embedded service.

The demo starts the reference service in-process on a free loopback port (its state
in a SQLite file next to the demo's state file, so a second run's service still
knows the token family), logs a :class:`~tokensdk.Session` in with short lifespans
-- or resumes it from the :class:`~tokensdk.FileStore` without a password --
obtains an asset token by proof of key and a named MAC token, and then shows every
token counting down to its expiry while refreshes and revalidations happen.

On a terminal the view is a live ``rich`` table; otherwise one plain line is printed
per event (``refreshed demo ...``) so scripts and tests can read it.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
import attrs
from anyio.abc import TaskStatus
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tokensdk._assets import Ed25519Signer
from tokensdk._errors import TokenInvalid, TokenSDKError
from tokensdk._models import EventType
from tokensdk._session import Session
from tokensdk._token_store import Authentication
from tokensdk.stores import FileStore

__all__ = ["DEMO_PASSWORD", "DEMO_USER", "DemoOptions", "run_demo"]

DEMO_USER = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105  (the embedded demo service's only user)
DEMO_CLIENT = "demo-app"
ASSET_ID = "sensor-1"
MAC_NAME = "demo"


@attrs.frozen
class DemoOptions:
    """What ``demo`` was asked to do.

    Attributes:
        duration: Seconds to run (None: until Ctrl-C).
        state: The session's state file; the service database and the asset key
            live next to it.
        access_ttl: The access token lifespan the embedded service grants, in seconds.
        refresh_ttl: The refresh token lifespan, in seconds.
        live: Show the live table (a terminal) instead of plain lines.
        revalidate_every: Seconds between two revalidations of the asset token.
        oauth: Speak OAuth 2.0 (``tokensdk.OAuth2``: discovery, password and
            refresh_token grants, RFC 7009 revocation) to the service's token
            endpoint instead of its native contract; asset and MAC tokens are
            features of the native contract and are left out.
    """

    duration: float | None = None
    state: Path = Path(".tokensdk-demo/state.json")
    access_ttl: int = 4
    refresh_ttl: int = 3600
    live: bool = False
    revalidate_every: float = 3.0
    oauth: bool = False


@attrs.define
class _View:
    """What the demo shows: the session, the MAC token, the event log."""

    session: Session
    url: str
    started: float
    out: IO[str]
    live: bool
    log: deque[str] = attrs.field(factory=lambda: deque(maxlen=12))
    refreshes: int = 0
    revalidations: int = 0
    _last: str = ""

    def note(self, text: str) -> None:
        """Record one event line (printed at once in plain mode)."""
        if text == self._last:
            return  # a resume is reported by the store load and by the service check
        self._last = text
        line = f"[{time.monotonic() - self.started:6.1f}s] {text}"
        self.log.append(line)
        if not self.live:
            print(line, file=self.out, flush=True)


def _load_signer(path: Path) -> Ed25519Signer:
    """The asset holder's key: reused across runs so the service still knows it."""
    try:
        seed = path.read_bytes()
        if len(seed) == 32:
            return Ed25519Signer.from_seed(seed)
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(seed)
    return Ed25519Signer(key)


def _left(deadline_wall: float | None) -> str:
    if deadline_wall is None:
        return "-"
    left = deadline_wall - time.time()
    return "expired" if left <= 0 else f"{left:7.1f}s"


def _describe(event: Any) -> str:
    detail = f" {event.detail}" if event.detail else ""
    return f"{event.type.value}{detail}"


async def _print_events(view: _View, stream: AsyncIterator[Any]) -> None:
    async for event in stream:
        if event.type is EventType.REFRESHED:
            view.refreshes += 1
            creds = view.session.credentials
            ttl = (
                ""
                if creds is None
                else f" (new access token, expires in {_left(creds.access_expires_at).strip()})"
            )
            view.note(f"refreshed {event.detail}{ttl}")
        elif event.type is EventType.RESUMED:
            view.note(f"resumed {event.detail} from the saved state, no password needed")
        else:
            view.note(_describe(event))


async def _revalidate(view: _View, every: float) -> None:
    """Validate the asset token (locally and with the service) and the MAC token."""
    session = view.session
    while True:
        await anyio.sleep(every)
        for item in list(session.access_tokens):
            try:
                await session.access_tokens.validate(item.token, remote=True)
            except TokenInvalid as exc:
                view.note(f"revalidated {item.asset_id}: invalid ({exc.reason})")
            except TokenSDKError as exc:
                view.note(f"revalidation of {item.asset_id} failed: {type(exc).__name__}")
            else:
                view.revalidations += 1
                view.note(f"revalidated {item.asset_id}: valid")
        if session.token_store.has_local_token(MAC_NAME):
            await _check_mac(view, MAC_NAME)


async def _check_mac(view: _View, name: str) -> None:
    """Present the MAC token to ``GET /v1/me/token`` (a header computed locally)."""
    # As an application would: through the session's middleware, which computes
    # the header locally (and syncs the clock once on a time error).
    middleware = view.session.middleware(mac_token=name)
    try:
        async with (
            aiohttp.ClientSession(middlewares=(middleware,)) as http,
            http.get(view.url + "/v1/me/token") as response,
        ):
            status = response.status
            body = await response.json(content_type=None) if status == 200 else None
    except (TokenSDKError, aiohttp.ClientError, ValueError) as exc:
        view.note(f"mac token {name}: refused ({type(exc).__name__})")
        return
    if status != 200 or not isinstance(body, dict):
        view.note(f"mac token {name}: refused ({status})")
    else:
        view.note(f"mac token {name}: header accepted for {body.get('username')}")


def _render(view: _View) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    session = view.session
    snapshot = session.snapshot
    table = Table(title=f"tokensdk demo - {snapshot.status.value}", expand=True)
    table.add_column("token")
    table.add_column("name")
    table.add_column("expires in", justify="right")
    table.add_column("notes")
    creds = snapshot.credentials
    if creds is not None:
        next_refresh = session.next_refresh
        due = (
            "-"
            if next_refresh is None
            else f"next refresh in {max(next_refresh - time.monotonic(), 0.0):.1f}s"
        )
        table.add_row(
            "access",
            creds.username,
            _left(creds.access_expires_at),
            f"{view.refreshes} refreshes, {due}",
        )
        table.add_row(
            "refresh", creds.username, _left(creds.refresh_expires_at), "single use, rotates"
        )
    for item in snapshot.access_tokens:
        table.add_row(
            "asset (PASETO)",
            item.asset_id,
            _left(item.expires_at),
            f"{view.revalidations} revalidations",
        )
    for mac in snapshot.mac_tokens.values():
        table.add_row(
            "MAC",
            mac.name,
            "with the session",
            f"id {mac.token_id[:8]}..., {'+'.join(mac.factors)}",
        )
    events = "\n".join(view.log) or "(no events yet)"
    return Group(table, Panel(events, title="events", subtitle="Ctrl-C to stop"))


async def _show_live(view: _View) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console(file=view.out)
    with Live(_render(view), console=console, refresh_per_second=8, transient=False) as live:
        while True:
            await anyio.sleep(0.125)
            live.update(_render(view))


async def _until_signal(
    cancel: Callable[[], None], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            cancel()
            return


async def run_demo(options: DemoOptions, out: IO[str] = sys.stdout) -> int:
    """Run the demo until ``options.duration`` elapses or Ctrl-C; return the exit status.

    Args:
        options: What to run.
        out: Where the view or the plain lines go.

    Returns:
        0 on a normal or interrupted end.
    """
    shown: list[_View] = []
    async with anyio.create_task_group() as tg:
        # Take the signals before anything else starts, so that a Ctrl-C while the
        # service starts or the demo logs in ends the demo like any later one: until
        # the receiver runs, Python's own handling applies, and that ignores SIGINT
        # in a script's background job (the demo would then run on until killed).
        await tg.start(_until_signal, tg.cancel_scope.cancel)
        await _demo(options, out, shown)
        tg.cancel_scope.cancel()
    if options.live and shown and shown[0].log:
        print(shown[0].log[-1], file=out)
    return 0


async def _demo(options: DemoOptions, out: IO[str], shown: list[_View]) -> None:
    """The demo itself; ``shown`` receives the view once there is one."""
    from tokensdk.server import ServiceConfig, running_service

    state = options.state.expanduser().absolute()
    state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    signer = _load_signer(state.parent / f"{ASSET_ID}.seed")
    # The client is public (no secret to keep): the demo's state is all on this machine.
    config = ServiceConfig(
        users={DEMO_USER: DEMO_PASSWORD},
        access_ttl=options.access_ttl,
        refresh_ttl=options.refresh_ttl,
        assets={ASSET_ID: signer.public_key_hex},
        db=str(state.parent / "service.sqlite3"),
        clients={DEMO_CLIENT: None},
    )
    if options.oauth:
        state = state.with_name(f"oauth-{state.name}")  # OAuth credentials apart
    async with running_service(config) as svc:
        backend: Any = svc.url
        if options.oauth:
            from tokensdk._oauth2 import OAuth2

            backend = OAuth2(svc.url, client_id=DEMO_CLIENT)
        session = Session(backend, store=FileStore(state))
        view = _View(
            session=session, url=svc.url, started=time.monotonic(), out=out, live=options.live
        )
        shown.append(view)
        speaks = "OAuth 2.0 at /oauth2/token" if options.oauth else "contract v1"
        view.note(
            f"service listening on {svc.url} (access tokens live {options.access_ttl}s;"
            f" the session speaks {speaks})"
        )
        stream = session.events()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_print_events, view, stream)
            async with session:
                await _sign_in(session, view, oauth=options.oauth)
                if not options.oauth:
                    if session.access_tokens.find(ASSET_ID) is None:
                        await session.access_tokens.request(ASSET_ID, signer, renew=True)
                    await session.token_store.request_access_token(
                        MAC_NAME, Authentication.possession()
                    )
                    await _check_mac(view, MAC_NAME)
                with anyio.move_on_after(
                    math.inf if options.duration is None else options.duration
                ):
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(anyio.sleep_forever)  # until the duration or Ctrl-C
                        if not options.oauth:
                            inner.start_soon(_revalidate, view, options.revalidate_every)
                        if options.live:
                            inner.start_soon(_show_live, view)
                await session.flush()
                view.note(
                    f"done: {view.refreshes} refreshes, {view.revalidations} revalidations;"
                    f" state saved to {state}"
                )
            await stream.aclose()
            tg.cancel_scope.cancel()


async def _sign_in(session: Session, view: _View, *, oauth: bool = False) -> None:
    from tokensdk._errors import NotLoggedIn, SessionLost
    from tokensdk._models import SessionStatus

    if session.status is SessionStatus.ACTIVE:
        try:
            if oauth:
                await session.token_refresh()  # OAuth 2.0 resumes with a refresh
            else:
                await session.login_with_token()
            return
        except (SessionLost, NotLoggedIn):
            view.note("the saved session is no longer valid; logging in with the password")
    await session.login(DEMO_USER, DEMO_PASSWORD)
