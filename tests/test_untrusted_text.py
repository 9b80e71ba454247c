"""Text a service sends never reaches a log line or an exception message as it is.

A tiny aiohttp.web server on loopback (not the reference service) plays a hostile
token service: its error answers carry newlines, ANSI escapes, bidi overrides and
100 KB messages. The real SDK calls talk to it over real HTTP; every log record and
every exception message must come out as one printable, capped line, with the
error name still usable (a snake_case name, or empty).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tokensdk import (
    EventType,
    InvalidCredentials,
    ManualClock,
    RetryConfig,
    ServiceError,
    Session,
    SessionLost,
    TokenSDKError,
)
from tokensdk._errors import printable

NO_RETRY = RetryConfig(max_attempts=1)
ANSI = "\n\x1b[31mFAKE LOG LINE\r\n"
HOSTILE = {
    "ansi": ANSI,
    "huge": "A" * 100_000 + ANSI,
    "bidi": "\u202eevil\u202c \u2066x\u2069 \u2028\u2029 \x85\x9b31m \x7f\x00 \ud800",
}
# The longest exception message: "POST /login: 401 some_name: " and a 200-char message.
MESSAGE_LIMIT = 300
RECORD_LIMIT = 1100
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def assert_one_clean_line(text: str, limit: int) -> None:
    # isprintable() is False for every C0/C1 control, DEL, U+2028/2029 and bidi control.
    assert text.isprintable(), repr(text[:300])
    assert len(text) <= limit, len(text)


class HostileService:
    """Answers every request with ``answers[path]`` (default: 404 with hostile text)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.answers: dict[str, tuple[int, Any]] = {}

    def error(self, status: int, name: str | None = None) -> tuple[int, Any]:
        return status, {"error": self.text if name is None else name, "code": status,
                        "message": self.text, "reason": self.text}  # fmt: skip

    async def handle(self, request: web.Request) -> web.Response:
        status, body = self.answers.get(request.path) or self.error(404)
        # json.dumps escapes every non-ASCII character: the SDK decodes them back.
        return web.json_response(body, status=status)


@asynccontextmanager
async def serving(hostile: HostileService) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hostile.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def login_answer(username: str) -> tuple[int, Mapping[str, Any]]:
    return 200, {
        "username": username,
        "accessToken": "access",
        "refreshToken": "refresh",
        "accessExpire": 60,
        "refreshExpire": 3600,
    }


def check_records(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records
    for record in caplog.records:
        assert_one_clean_line(record.getMessage(), RECORD_LIMIT)


def check_error(exc: TokenSDKError, text: str) -> None:
    assert_one_clean_line(str(exc), MESSAGE_LIMIT)
    if isinstance(exc, ServiceError):
        assert exc.error == "" or _NAME.fullmatch(exc.error)
        assert exc.reason == ""  # the hostile reason is no name
    if text.startswith(ANSI):
        assert "\\x0a\\x1b[31mFAKE LOG LINE\\x0d\\x0a" in str(exc)  # kept, escaped


@pytest.fixture(params=sorted(HOSTILE))
def hostile(request: pytest.FixtureRequest) -> HostileService:
    return HostileService(HOSTILE[request.param])


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="tokensdk")
    return caplog


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 429, 491, 503])
@pytest.mark.parametrize("name", [None, "invalid_credentials"], ids=["hostile-name", "good-name"])
async def test_refused_login_gives_one_clean_line(
    clock: ManualClock,
    hostile: HostileService,
    logs: pytest.LogCaptureFixture,
    status: int,
    name: str | None,
) -> None:
    hostile.answers["/v1/login"] = hostile.error(status, name)
    async with serving(hostile) as url, Session(url, clock=clock, retry=NO_RETRY) as session:
        with pytest.raises(ServiceError) as caught:
            await session.login("alice", "wonderland")
    check_error(caught.value, hostile.text)
    # The name stays usable for classification; a hostile one counts as no name.
    assert caught.value.error == (name or {429: "rate_limited", 503: "internal"}.get(status, ""))
    if status == 401:
        assert isinstance(caught.value, InvalidCredentials)


@pytest.mark.anyio
async def test_lost_session_logs_one_clean_line(
    clock: ManualClock, hostile: HostileService, logs: pytest.LogCaptureFixture
) -> None:
    hostile.answers["/v1/login"] = login_answer(hostile.text)  # a hostile username too
    hostile.answers["/v1/refresh"] = hostile.error(401)
    async with serving(hostile) as url, Session(url, clock=clock, retry=NO_RETRY) as session:
        await session.login("alice", "wonderland")
        with pytest.raises(SessionLost) as caught:
            await session.token_refresh()
    assert caught.value.reason == "invalid_token"  # the hostile name is no name
    check_error(caught.value, "")
    assert "tokensdk: session lost (invalid_token)" in logs.messages
    check_records(logs)


@pytest.mark.anyio
async def test_failed_background_refresh_logs_one_clean_line(
    clock: ManualClock, hostile: HostileService, logs: pytest.LogCaptureFixture
) -> None:
    hostile.answers["/v1/login"] = login_answer("alice")
    hostile.answers["/v1/refresh"] = hostile.error(503)
    async with serving(hostile) as url, Session(url, clock=clock, retry=NO_RETRY) as session:
        events = session.events()
        await session.login("alice", "wonderland")
        clock.advance(50)  # past every background refresh time (40-77.5 % of 60 s)
        with anyio.fail_after(10):
            async for event in events:
                if event.type is EventType.REFRESH_FAILED:
                    break
    assert isinstance(event.error, TokenSDKError)
    check_error(event.error, hostile.text)
    # The event's error went to the debug log: escaped there as well.
    assert any("refresh_failed" in message for message in logs.messages)
    check_records(logs)


# -- the helper itself ------------------------------------------------------------------


def test_printable_escapes_and_caps() -> None:
    assert printable("invalid password") == "invalid password"
    assert printable(ANSI) == "\\x0a\\x1b[31mFAKE LOG LINE\\x0d\\x0a"
    assert printable("\u202eabc\u2028") == "\\u202eabc\\u2028"
    assert printable("\x85\x9b\x7f") == "\\x85\\x9b\\x7f"
    assert printable("\U000e0001") == "\\U000e0001"  # a tag character (format)
    assert printable("x" * 201) == "x" * 199 + "\u2026"
    assert printable("x" * 200) == "x" * 200
    # An escape is never cut in half.
    assert printable("x" * 197 + "\x1b") == "x" * 197 + "\u2026"


@given(st.text(), st.integers(1, 300))
def test_printable_is_one_capped_line(text: str, limit: int) -> None:
    out = printable(text, limit)
    assert out.isprintable()
    assert len(out) <= limit
    if len(text) <= limit and text.isprintable():
        assert out == text


# -- the command line -------------------------------------------------------------------


@pytest.mark.anyio
async def test_cli_shows_a_hostile_username_as_one_clean_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tokensdk.cli import main

    hostile = HostileService(ANSI)
    hostile.answers["/v1/login"] = login_answer("alice" + ANSI)
    hostile.answers["/v1/status"] = 200, {"serverTime": 1_700_000_000_000, "realm": "x"}
    hostile.answers["/v1/logout"] = hostile.error(503)
    state = str(tmp_path / "s.json")
    monkeypatch.setattr("sys.stdin", io.StringIO("wonderland\n"))
    async with serving(hostile) as url:
        # main() runs its own event loop: in a worker thread, beside the server's.
        for argv in (
            ["login", "--url", url, "--user", "alice", "--password-stdin", "--state", state],
            ["tokens", "--state", state],
            ["logout", "--url", url, "--state", state],
        ):
            status = await anyio.to_thread.run_sync(main, argv)
            out, err = capsys.readouterr()
            assert "alice\\x0a\\x1b[31mFAKE LOG LINE" in out + err, argv
            for line in (out + err).splitlines():
                assert_one_clean_line(line, 1000)
            assert status == (1 if argv[0] == "logout" else 0), err
