"""A stream start with a mistake in it gets a clear answer, against a real server, relay and worker:
an unknown or misspelled field is a 400 naming it and the accepted ones (the fields go-livepeer's
orchestrator and ai-runner's clients really send still pass); an input nobody listens on is a 400
before anything starts; an input channel the relay does not have ends the stream as an error with
the reason, in /stream/{id} and as an event, instead of a healthy-looking stream that vanishes."""

from __future__ import annotations

import asyncio
import socket

import pytest
from stream_stack import Stack

from bench.trickle_client import create_channel
from server.editor.live_workflows import BY_NAME, ui_workflow
from server.http.keys import EVENT_BUS_KEY
from tests.polling import wait_for

LIVE_BLUR_UI = ui_workflow(BY_NAME["comfystream_live_blur"].steps)


def _drain(queue) -> list:
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


async def test_unknown_fields_are_named_with_the_accepted_ones(stack: Stack) -> None:
    body = {"input_url": f"{stack.relay}/cam", "gateway_request_id": "x", "pubish_url": f"{stack.relay}/o"}
    status, err = await stack.call("POST", "/stream/start", json=body)
    assert status == 400, err
    assert err["error"] == "Invalid request"
    assert "unknown field 'input_url' (did you mean 'subscribe_url'?)" in err["message"]
    assert "unknown field 'pubish_url' (did you mean 'publish_url'?)" in err["message"]
    assert "Accepted fields: subscribe_url, publish_url, control_url" in err["message"]
    items = {i["input_name"]: i for i in err["validation_errors"]}
    assert set(items) == {"input_url", "pubish_url"}
    assert "subscribe_url" in items["input_url"]["valid_options"]
    # A JSON syntax error says where it is.
    status, err = await stack.call(
        "POST",
        "/stream/start",
        data=b'{"subscribe_url": "x",\n}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and err["error"] == "Invalid JSON", err
    assert "not valid JSON at line 2, column 1" in err["message"], err
    # The flat form (POST /stream) passes unknown params through, but not a misspelled URL or id.
    status, err = await stack.call("POST", "/stream", json={"subscribe_ulr": f"{stack.relay}/cam", "id": "y"})
    assert status == 400, err
    assert {i["input_name"] for i in err["validation_errors"]} == {"subscribe_ulr", "id"}
    assert "did you mean 'subscribe_url'" in err["message"] and "did you mean 'stream_id'" in err["message"]
    assert (await stack.call("GET", "/streams"))[1]["count"] == 0


async def test_the_gateways_own_fields_are_accepted(stack: Stack) -> None:
    """go-livepeer's BYOC orchestrator (byoc/stream_orchestrator.go) sends the channel URLs,
    `gateway_request_id` and the gateway's `{"params": ...}`; ai-runner's live-video-to-video body
    adds `model_id`, `manifest_id` and `stream_id`."""
    await create_channel(f"{stack.relay}/gw")
    body = {
        "gateway_request_id": "gw",
        "subscribe_url": f"{stack.relay}/gw",
        "publish_url": f"{stack.relay}/gw-out",
        "control_url": f"{stack.relay}/gw-control",
        "events_url": f"{stack.relay}/gw-events",
        "data_url": f"{stack.relay}/gw-data",
        "manifest_id": "comfyui",
        "model_id": "comfyui",
        "stream_id": "gw",
        "request_id": "gw",
        # A prompt saved from the editor (UI format) is converted as its Export (API) would be.
        "params": {"width": 64, "height": 64, "some_pipeline_param": 1, "prompts": [LIVE_BLUR_UI]},
    }
    status, data = await stack.call("POST", "/stream/start", json=body)
    assert status == 200, data
    assert (data["config"]["prompts_set"], data["config"]["prompt_count"]) == (True, 1)
    status, prompts = await stack.call("GET", "/stream/gw/prompts")
    assert prompts["prompts"] == [
        {
            "1": {"class_type": "LoadTensor", "inputs": {"timeout_seconds": 1.0}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 7, "sigma": 3.0}},
            "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
        }
    ], prompts
    await stack.call("DELETE", "/stream/gw")


async def test_an_input_nobody_listens_on_is_refused_before_anything_starts(stack: Stack) -> None:
    port = _closed_port()
    body = {"subscribe_url": f"http://127.0.0.1:{port}/cam", "gateway_request_id": "nobody"}
    with stack.app[EVENT_BUS_KEY].subscribe() as events:
        status, err = await stack.call("POST", "/stream/start", json=body)
        said = [(e.type, e.data.get("source")) for e in _drain(events) if e.data.get("stream_id") == "nobody"]
    assert ("error", "input") in said, said
    assert status == 400, err
    assert err["error"] == "Input not reachable"
    assert f"cannot connect to 127.0.0.1:{port}" in err["message"] and "refused" in err["message"].lower()
    assert [i["input_name"] for i in err["validation_errors"]] == ["subscribe_url"]
    listing = (await stack.call("GET", "/streams"))[1]
    assert listing["count"] == 0 and [s["stream_id"] for s in listing["ended"]] == ["nobody"]
    # The refusal is recorded where the stream's end would be: its state and reason, no worker.
    status, info = await stack.call("GET", "/stream/nobody")
    assert status == 200 and info["state"] == "error" and info["workers"] == [], info
    assert info["error"].startswith(f"input not reachable: http://127.0.0.1:{port}/cam: cannot connect")


@pytest.mark.server_config(input_wait_s=3.0)
async def test_a_missing_input_channel_ends_the_stream_as_an_error_with_its_reason(stack: Stack) -> None:
    url = f"{stack.relay}/trickel/cam"  # a typo: nothing publishes there, and the relay has no such channel
    with stack.app[EVENT_BUS_KEY].subscribe() as events:
        status, data = await stack.call(
            "POST", "/stream/start", json={"subscribe_url": url, "gateway_request_id": "typo"}
        )
        assert status == 200, data

        async def waiting() -> str | None:
            return (await stack.call("GET", "/stream/typo"))[1].get("notice")

        notice = await wait_for(waiting, what="the stream to say what it waits for")
        assert "does not exist on its relay yet (404)" in notice and url in notice
        info = await stack.wait_state("typo", {"error", "stopped"})
        assert info["state"] == "error", info
        assert info["error"].startswith("input channel not found:") and url in info["error"]
        assert "Check subscribe_url" in info["error"] and info["stop_reason"] == f"error: {info['error']}"
        assert info["notice"] is None

        seen = []
        while not events.empty():
            event = events.get_nowait()
            if event.data.get("stream_id") == "typo":
                seen.append((event.type, event.data))
    kinds = [kind for kind, _ in seen]
    assert "input_waiting" in kinds and "error" in kinds, kinds
    error = next(data for kind, data in seen if kind == "error")
    assert error["source"] == "input" and error["message"] == info["error"]
    # It is listed as ended, with its reason, not simply gone.
    listing = (await stack.call("GET", "/streams"))[1]
    assert listing["count"] == 0
    assert [(s["stream_id"], s["state"]) for s in listing["ended"]] == [("typo", "error")]


@pytest.mark.server_config(input_wait_s=30.0)
async def test_a_channel_that_appears_in_time_clears_the_notice(stack: Stack) -> None:
    url = f"{stack.relay}/late"
    status, data = await stack.call(
        "POST", "/stream/start", json={"subscribe_url": url, "gateway_request_id": "late"}
    )
    assert status == 200, data

    async def notice() -> str | None:
        return (await stack.call("GET", "/stream/late"))[1].get("notice")

    await wait_for(notice, what="the waiting notice")
    await create_channel(url)  # its publisher (or the orchestrator) creates it now

    async def cleared() -> bool:
        info = (await stack.call("GET", "/stream/late"))[1]
        return info["notice"] is None and info["state"] in ("starting", "running")

    await wait_for(cleared, what="the notice to clear")
    await asyncio.sleep(0)
    status, info = await stack.call("DELETE", "/stream/late")
    assert status == 200, info
