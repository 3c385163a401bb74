"""Deeply nested JSON is a 400 on every route that parses a body, never a 500 (RecursionError in
the parser, or pydantic's serializer a few hundred levels down); the stream running beside it goes on."""

from __future__ import annotations

import json

import pytest

from bench.trickle_client import create_channel
from comfystream import json_limits
from comfystream.prompts import PromptFormatError, normalize_prompts

from .conftest import Server

ROUTES = [
    ("POST", "/stream/start"),
    ("POST", "/stream"),
    ("POST", "/stream/stop"),
    ("POST", "/stream/params"),
    ("POST", "/prompt"),
    ("POST", "/api/prompt"),
    ("POST", "/queue"),
    ("POST", "/history"),
    ("POST", "/interrupt"),
    ("POST", "/tasks"),
    ("POST", "/offer"),
    ("POST", "/api/jobs/cancel"),  # the ComfyUI editor's routes
    ("PATCH", "/internal/logs/subscribe"),
]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def start_body(name: str, relay: str, params: dict) -> dict:
    return {
        "subscribe_url": f"{relay}/{name}",
        "publish_url": f"{relay}/{name}-out",
        "gateway_request_id": name,
        "params": params,
    }


def test_loads_limits_depth_without_recursion() -> None:
    assert json_limits.loads(nested(json_limits.MAX_JSON_DEPTH)) is not None
    for depth in (json_limits.MAX_JSON_DEPTH + 1, 900, 50_000):
        with pytest.raises(json.JSONDecodeError, match="nested deeper"):
            json_limits.loads(nested(depth))
    # Brackets inside strings are not nesting.
    assert json_limits.loads(json.dumps({"a": "[" * 1000})) == {"a": "[" * 1000}
    # A prompt given as a JSON string is parsed with the same limit.
    with pytest.raises(PromptFormatError):
        normalize_prompts(json.dumps({"1": {"class_type": "X", "inputs": {"v": json.loads(nested(900))}}}))


@pytest.mark.parametrize("depth", [900, 5000])
async def test_deep_bodies_are_400_everywhere(server: Server, depth: int) -> None:
    for method, path in ROUTES:
        status, body = await server.call(
            method, path, data=nested(depth), headers={"Content-Type": "application/json"}
        )
        # A stop's body may be a plain-text reason (go-livepeer's); with no stream running it is a 404.
        assert status == (404 if path == "/stream/stop" else 400), (path, status, body)
    # Deep inside a valid-looking start body, and deep inside its prompt string (depth 900 reached
    # pydantic's serializer: a 500 before).
    deep = json.loads(nested(900))
    for params in (
        {"extra": deep},
        {"prompt": json.dumps({"1": {"class_type": "LoadTensor", "inputs": {"x": deep}}})},
    ):
        status, body = await server.call(
            "POST", "/stream/start", json=start_body("deep", server.relay, params)
        )
        assert status == 400, body
    status, body = await server.call(
        "POST", "/prompt", json={"prompt": {"1": {"class_type": "X", "inputs": {"v": deep}}}}
    )
    assert status == 400, body


async def test_deep_updates_leave_the_stream_running(server: Server) -> None:
    await create_channel(f"{server.relay}/live")
    status, body = await server.call("POST", "/stream/start", json=start_body("live", server.relay, {}))
    assert status == 200, body
    for path in ("/stream/live/update-prompts", "/stream/live/params", "/stream/params"):
        for payload in (nested(5000), json.dumps({"prompt": json.loads(nested(900))})):
            status, body = await server.call(
                "POST", path, data=payload, headers={"Content-Type": "application/json"}
            )
            assert status == 400, (path, status, body)
    status, info = await server.call("GET", "/stream/live")
    assert status == 200 and info["state"] not in ("error", "stopped"), info
    status, body = await server.call("DELETE", "/stream/live")
    assert status == 200, body
