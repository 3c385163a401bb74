"""Cross-site requests: a page on another origin cannot change state (start streams, queue prompts)
or open /ws; the same origin, clients that send no Origin, and origins allowed with --allow-origin
can. Reading stays open (the browser itself keeps a foreign page from reading the answer)."""

from __future__ import annotations

import json

import aiohttp
import pytest

from comfystream.prompts import DEFAULT_PROMPT
from server.http.origin_check import OriginPolicy, normalize_origin

from .conftest import Server

EVIL = "http://evil.example"
TEXT = {"Content-Type": "text/plain"}  # a "simple" request: a browser sends it with no preflight


async def _ws_status(server: Server, headers: dict[str, str]) -> int:
    try:
        async with server.http.ws_connect(f"{server.base}/ws?clientId=c1", headers=headers) as ws:
            await ws.close()
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def test_foreign_origin_cannot_change_state_or_open_ws(server: Server) -> None:
    prompt = json.dumps({"prompt": DEFAULT_PROMPT})
    for path in ("/prompt", "/api/prompt", "/stream/start", "/tasks", "/interrupt", "/trickle/x/0"):
        for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            status, body = await server.call("POST", path, data=prompt, headers={**TEXT, **headers})
            assert status == 403, (path, headers, status, body)
    status, body = await server.call("DELETE", "/stream/x", headers={"Origin": EVIL})
    assert status == 403 and body["error"] == "Forbidden origin", body
    assert await _ws_status(server, {"Origin": EVIL}) == 403
    # A different port on the same host is another origin.
    other_port = server.base.rsplit(":", 1)[0] + ":1"
    assert await _ws_status(server, {"Origin": other_port}) == 403
    # Reading is not refused.
    status, _ = await server.call("GET", "/streams", headers={"Origin": EVIL})
    assert status == 200


async def test_same_origin_and_tools_pass(server: Server) -> None:
    for headers in ({"Origin": server.base}, {}, {"Origin": server.base, "Sec-Fetch-Site": "same-origin"}):
        # An empty /queue POST changes nothing and answers 200 when allowed.
        status, body = await server.call("POST", "/queue", data="{}", headers={**TEXT, **headers})
        assert status == 200, (headers, status, body)
        assert await _ws_status(server, headers) == 101


@pytest.mark.server_config(allowed_origins=["https://ui.example:8443"])
async def test_allowed_origin_passes(server: Server) -> None:
    status, _ = await server.call("POST", "/queue", data="{}", headers={"Origin": "https://UI.example:8443"})
    assert status == 200
    assert await _ws_status(server, {"Origin": "https://ui.example:8443"}) == 101
    status, _ = await server.call("POST", "/queue", data="{}", headers={"Origin": "https://ui.example"})
    assert status == 403


def test_origin_normalization_and_bad_flags() -> None:
    assert normalize_origin("HTTP://Example.com:80") == "http://example.com"
    assert normalize_origin("https://example.com:8443/") == "https://example.com:8443"
    assert normalize_origin("null") is None and normalize_origin("file://") is None
    with pytest.raises(ValueError):
        OriginPolicy(["example.com"])
    assert OriginPolicy(["*"]).any
