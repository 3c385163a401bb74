"""A token-protected server's pages: a person signs in once at /login with the token, and the
dashboard (its API calls and its WebSocket) then works on the session cookie, which is never the
token itself. Tools keep using `Authorization: Bearer`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from server.http.auth import SESSION_COOKIE
from tests.dashboard.conftest import VIEWPORT, PageLog, Server

TOKEN = "s3cret-token-for-the-pages"
pytestmark = pytest.mark.server_config(job_workers=0, auth_token=TOKEN)


async def _sign_in(server: Server, token: str, next_path: str, **headers: str) -> Any:
    return await server.http.post(
        f"{server.base}/login",
        data={"token": token, "next": next_path},
        headers=headers,
        allow_redirects=False,
    )


def _cookie(resp: Any) -> str | None:
    morsel = resp.cookies.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else None


async def test_sign_in_gives_a_session_cookie_that_opens_the_api(server: Server) -> None:
    async with server.http.get(f"{server.base}/", headers={"Accept": "text/html"}, allow_redirects=False) as resp:
        location = urlsplit(resp.headers["Location"])
        assert resp.status == 303 and location.path == "/login" and parse_qs(location.query) == {"next": ["/"]}
    async with server.http.get(f"{server.base}/login?next=/comfyui/") as resp:
        page = await resp.text()
        assert resp.status == 200 and 'name="token"' in page and 'value="/comfyui/"' in page
    status, _ = await server.call("GET", "/system_stats")
    assert status == 401  # an API call is answered, not redirected

    async with await _sign_in(server, "wrong", "/") as resp:
        assert resp.status == 401 and _cookie(resp) is None
        assert "not this server&#x27;s token" in await resp.text()
    async with await _sign_in(server, TOKEN, "//elsewhere.example/x") as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/"  # never off this server
    async with await _sign_in(server, TOKEN, "/comfyui/", Origin="https://elsewhere.example") as resp:
        assert resp.status == 403 and _cookie(resp) is None  # a cross-site form cannot sign in
    async with await _sign_in(server, TOKEN, "/comfyui/") as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/comfyui/"
        cookie = _cookie(resp)
        set_cookie = resp.headers["Set-Cookie"]
    assert cookie and TOKEN not in cookie
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie

    status, stats = await server.call("GET", "/system_stats", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
    assert status == 200 and "system" in stats
    status, _ = await server.call("GET", "/system_stats", headers={"Cookie": f"{SESSION_COOKIE}={cookie[:-1]}0"})
    assert status == 401
    status, _ = await server.call("GET", "/system_stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


@pytest.mark.browser
async def test_the_dashboard_works_after_signing_in(server: Server, browser: Any) -> None:
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    log = PageLog()
    log.attach(page)
    await page.goto(f"{server.base}/")
    assert "/login" in page.url
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("[data-testid=streams-panel]")
    # the live feed is the dashboard's WebSocket: it opened on the cookie alone
    await page.wait_for_function("() => window.__dashboard && window.__dashboard.feed.state === 'open'")
    assert page.url == f"{server.base}/"
    assert log.entries == []
    await context.close()
