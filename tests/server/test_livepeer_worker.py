"""The server driven as go-livepeer's BYOC orchestrator and gateway drive a worker (byoc/
stream_orchestrator.go, stream_gateway.go, trickle.go at commit 176aa415), byte for byte where it
matters: Go's JSON (sorted keys, no spaces), `X-Stream-Id` naming one of two streams, the bearer
token the capability was registered with, the comfyui capability's `{"prompt": params}`
wrapping, a plain-text stop body, the params the gateway left in the control channel before the
start, and the events it reads back (ai-runner `status`, pytrickle `params_updated` and
heartbeat). Plus registration with a stand-in orchestrator that parses the request as
go-livepeer does."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from orchestrator_standin import OrchestratorStandIn
from stream_stack import PASSTHROUGH_PROMPT, Stack

from bench.trickle_client import create_channel
from comfystream.trickle import TricklePublisher, TrickleSubscriber
from server.app import create_app
from server.config import ServerConfig
from server.livepeer.registration import REGISTRAR_KEY, CapabilitySettings, Registrar
from server.livepeer.status import STATES
from tests.polling import wait_for

TOKEN = "capability-token-4f1d"
SECRET = "orch-secret-9a2c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def go_json(value: object) -> bytes:
    """What Go's json.Marshal makes of a map: keys sorted, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


async def post(stack: Stack, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    # Go sets no Content-Type unless the code does: aiohttp must not add its own either
    async with stack.http.post(
        f"{stack.base}{path}", data=body, headers=headers, skip_auto_headers=["Content-Type"]
    ) as resp:
        return resp.status, (
            await resp.json() if "json" in resp.content_type else {"text": await resp.text()}
        )


async def get(stack: Stack, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return await stack.call("GET", path, headers={**AUTH, **(headers or {})})


async def read_events(url: str) -> list[dict]:
    """Every event on the channel from its first segment until it is closed, as the gateway's
    events subscriber parses them."""
    events = []
    async with TrickleSubscriber(url, start_seq=0, connect_timeout=30) as sub:
        async for segment in sub:
            events.append(json.loads(await segment.read()))
    return events


def orchestrator_start_body(stack: Stack, name: str, params: object, video: bool = True) -> dict:
    """The body go-livepeer's orchestrator POSTs to {worker}/stream/start: the gateway's request
    (`{"params": ...}`) merged over the channel URLs it created for the stream."""
    body: dict = {
        "gateway_request_id": name,
        "control_url": f"{stack.relay}/{name}-control",
        "events_url": f"{stack.relay}/{name}-events",
        "params": params,
    }
    if video:
        body["subscribe_url"] = f"{stack.relay}/{name}"
        body["publish_url"] = f"{stack.relay}/{name}-out"
    return body


@pytest.mark.server_config(auth_token=TOKEN)
async def test_the_orchestrators_requests_byte_for_byte(stack: Stack) -> None:
    json_headers = {**AUTH, "Content-Type": "application/json"}

    # -- auth: a capability registered with a token answers 401 without it; /health stays open
    body_a = orchestrator_start_body(stack, "a", {"prompt": {"width": 128, "height": 128}})
    for headers in (
        {"Content-Type": "application/json"},
        {"Authorization": "Bearer nope"},
        {"Authorization": TOKEN},
    ):
        status, err = await post(stack, "/stream/start", go_json(body_a), {**headers, "X-Stream-Id": "a"})
        assert status == 401 and err["error"] == "Unauthorized", (headers, err)
    async with stack.http.get(f"{stack.base}/stream/status") as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    status, health = await stack.call("GET", "/health")
    assert status == 200 and health["status"] == "IDLE"
    assert (await stack.call("GET", "/version"))[1]["model_id"] == "comfystream"

    # -- the gateway left the stream's params in the control channel before the start
    for url in (body_a["subscribe_url"], body_a["control_url"]):
        await create_channel(url, "application/json" if url.endswith("control") else "video/mp2t")
    control = TricklePublisher(body_a["control_url"], "application/json")
    replay = {"params": {"prompt": PASSTHROUGH_PROMPT}}
    await control.write_segment(go_json(replay))
    events_a = asyncio.create_task(read_events(body_a["events_url"]))

    # -- stream a: the comfyui capability's wrapped params, X-Stream-Id and the bearer token
    status, started = await post(
        stack, "/stream/start", go_json(body_a), {**json_headers, "X-Stream-Id": "a"}
    )
    assert status == 200, started
    assert started["request_id"] == "a" and (started["config"]["width"], started["config"]["height"]) == (
        128,
        128,
    )

    async def replay_applied():
        info = (await get(stack, "/stream/a"))[1]
        return info if info["prompt_updates"] >= 1 else None

    info = await wait_for(replay_applied, what="the control message sent before the start")
    assert info["status"]["inference_status"]["last_params"] == {"prompt": PASSTHROUGH_PROMPT}

    # -- stream b: named by the header; `params: null` is no params (pytrickle answers 200)
    body_b = {**orchestrator_start_body(stack, "b", None), "gateway_request_id": "b"}
    del body_b["control_url"], body_b["events_url"]
    await create_channel(body_b["subscribe_url"])
    status, started = await post(
        stack, "/stream/start", go_json(body_b), {**json_headers, "X-Stream-Id": "b"}
    )
    assert status == 200 and started["request_id"] == "b" and started["config"]["prompts_set"] is False

    # -- two streams: X-Stream-Id says which one params, status and stop are for
    update = go_json({"prompt": json.dumps(PASSTHROUGH_PROMPT)})
    status, err = await post(stack, "/stream/params", update, json_headers)
    assert status == 404 and "several streams" in err["message"]  # no header: ambiguous
    status, up = await post(stack, "/stream/params", update, {**json_headers, "X-Stream-Id": "b"})
    assert status == 200 and up["request_id"] == "b", up
    assert (await get(stack, "/stream/b"))[1]["prompt_updates"] == 1
    assert (await get(stack, "/stream/a"))[1]["prompt_updates"] == 1  # only the control replay

    status, st = await get(stack, "/stream/status", {"X-Stream-Id": "a"})
    assert status == 200 and st["stream_count"] == 2 and st["current_stream"]["stream_id"] == "a"
    assert st["status"] == st["state"] == "OK" and st["pipeline_ready"] and st["client_active"]
    assert st["current_params"] == {
        "subscribe_url": body_a["subscribe_url"],
        "publish_url": body_a["publish_url"],
        "gateway_request_id": "a",
    }
    assert set(st["fps"]) == {
        "ingress_video_fps",
        "ingress_audio_fps",
        "egress_video_fps",
        "egress_audio_fps",
    }
    assert st["current_stream"]["status"]["state"] in STATES

    # -- the gateway stops a with a plain-text reason (no Content-Type); b goes on
    status, stopped = await post(
        stack, "/stream/stop", b"timeout waiting for events", {**AUTH, "X-Stream-Id": "a"}
    )
    assert status == 200 and stopped["request_id"] == "a", stopped
    info = (await get(stack, "/stream/a"))[1]
    assert (
        info["state"] == "stopped"
        and info["stop_reason"] == "stopped by the gateway: timeout waiting for events"
    )
    assert info["status"]["state"] == "OFFLINE"
    assert (await get(stack, "/stream/b"))[1]["state"] in ("starting", "running")

    # -- what the gateway read on a's events channel
    events = await asyncio.wait_for(events_a, 30)
    await control.close()
    assert all(set(e) == {"event", "queue_event_type"} for e in events)
    kinds = [e["event"]["type"] for e in events]
    assert "prompts_updated" not in kinds  # pytrickle's name instead:
    params_updated = [e["event"] for e in events if e["event"]["type"] == "params_updated"]
    assert params_updated and params_updated[0]["params"] == {"prompt": PASSTHROUGH_PROMPT}  # unwrapped
    status_events = [e["event"] for e in events if e["event"]["type"] == "status"]
    assert status_events, kinds
    assert {"pipeline", "start_time", "state", "input_status", "inference_status"} <= set(status_events[0])
    assert status_events[0]["pipeline"] == "comfystream" and status_events[0]["state"] in STATES
    heartbeat = next(e["event"] for e in events if e["queue_event_type"] == "stream_heartbeat")
    assert heartbeat["type"] == "heartbeat" and heartbeat["urls"]["control"] == body_a["control_url"]
    assert heartbeat["dimensions"] == {"width": 128, "height": 128}

    # -- the orchestrator's own stop (monitorOrchStream): no body at all
    status, stopped = await post(stack, "/stream/stop", b"", {**AUTH, "X-Stream-Id": "b"})
    assert status == 200 and stopped["request_id"] == "b"

    # -- a data-only stream (BYOC: no video ingress or egress) starts and stops
    body_d = orchestrator_start_body(stack, "d", {}, video=False)
    status, started = await post(
        stack, "/stream/start", go_json(body_d), {**json_headers, "X-Stream-Id": "d"}
    )
    assert status == 200 and started["config"]["subscribe_url"] is None, started

    async def running():
        return (await get(stack, "/stream/d"))[1]["state"] == "running"

    await wait_for(running, what="the data-only stream to run")
    status, stopped = await post(stack, "/stream/stop", b"stream ended", {**AUTH, "X-Stream-Id": "d"})
    assert status == 200 and (await get(stack, "/stream/d"))[1]["state"] == "stopped"


async def _serve_standin(standin: OrchestratorStandIn, port: int) -> web.AppRunner:
    runner = web.AppRunner(standin.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_registration_with_an_orchestrator(no_leaks, free_port: int, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    orch_url = f"http://127.0.0.1:{free_port}"
    settings = CapabilitySettings(
        orch_url=orch_url, orch_secret=SECRET, url="http://worker.example:8000", token=TOKEN
    )
    config = ServerConfig(max_streams=3, job_workers=0, auth_token=TOKEN, registration=settings)
    server = TestServer(create_app(config), host="127.0.0.1")
    standin = OrchestratorStandIn(SECRET)
    runner = None
    others: list[Registrar] = []
    try:
        # the orchestrator is down: the server starts all the same, and keeps trying
        await server.start_server()
        registrar = server.app[REGISTRAR_KEY]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.make_url('/health')}") as resp:
                assert resp.status == 200

        async def attempted():
            return registrar.state.attempts >= 1 and registrar.last_error

        await wait_for(attempted, what="a first attempt")
        assert not registrar.registered

        runner = await _serve_standin(standin, free_port)

        async def registered():
            return standin.capabilities.get("comfystream")

        cap = await wait_for(registered, what="the registration")
        request = next(r for r in standin.requests if r["method"] == "POST")
        assert request["headers"]["Authorization"] == SECRET  # the raw secret, as go-livepeer compares it
        assert request["headers"]["Content-Type"] == "application/json"
        assert cap == {
            "name": "comfystream",
            "description": settings.description,
            "url": "http://worker.example:8000",
            "capacity": 3,  # the streams this server runs, not 1
            "price_per_unit": 0,
            "price_scaling": 1,
            "currency": "",
            "token": TOKEN,
        }
        await wait_for(lambda: _true(registrar.registered), what="the registrar to see the 200")

        # the capacity changes: registered again
        capacity = [2]
        follower = Registrar(
            CapabilitySettings(orch_url=orch_url, orch_secret=SECRET, name="follow"),
            lambda: capacity[0],
            poll_s=0.05,
        )
        others.append(follower)
        follower.start()
        await wait_for(lambda: _true(standin.capabilities.get("follow", {}).get("capacity") == 2), what="2")
        capacity[0] = 0
        await wait_for(lambda: _true(standin.capabilities["follow"]["capacity"] == 0), what="0")

        # a wrong secret: refused (400), retried only after the longest delay
        wrong = Registrar(CapabilitySettings(orch_url=orch_url, orch_secret="wrong-secret-77"), lambda: 1)
        others.append(wrong)
        wrong.start()
        await wait_for(lambda: _true(wrong.state.failures >= 1), what="the refusal")
        assert "400" in wrong.last_error and "invalid authorization" in wrong.last_error
        assert wrong.state.next_at - time.monotonic() > wrong.state.max_delay_s - 5
    finally:
        for other in others:
            await other.close()
        await server.close()
        if runner is not None:
            await runner.cleanup()
    logged = caplog.text
    for secret in (SECRET, TOKEN, "wrong-secret-77"):
        assert secret not in logged


async def _true(value: object) -> bool:
    return bool(value)
