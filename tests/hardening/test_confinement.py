"""Over HTTP a prompt names files inside the input, output and temp folders only, and the answer for
a name outside is the same whether that file exists or not; a request cannot set where a worker
runs; stream URLs may be limited to listed hosts; /system_stats shows no command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from bench.trickle_client import create_channel
from comfystream.prompts import DEFAULT_PROMPT

from .conftest import Server


def load_image_prompt(name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def _shape(body: dict) -> list:
    """The answer without the name it quotes."""
    return [
        (node, e["type"], e["message"])
        for node, entry in sorted(body["node_errors"].items())
        for e in entry["errors"]
    ]


async def test_prompt_files_outside_the_folders_get_one_answer(server: Server, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(outside / "secret.png")
    server.input_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(server.input_dir / "ok.png")
    existing = [str(outside / "secret.png"), "../elsewhere/secret.png", "ok.png/../../elsewhere/secret.png"]
    missing = [str(outside / "nothing.png"), "../elsewhere/nothing.png", "/etc/nothing [input]"]
    answers = []
    for name in existing + missing:
        status, body = await server.call("POST", "/prompt", json={"prompt": load_image_prompt(name)})
        assert status == 400, (name, status, body)
        answers.append(_shape(body))
    assert all(a == answers[0] for a in answers), answers
    # The same over /tasks (its input_image goes into the LoadImage) and for a stream's prompt.
    status, body = await server.call(
        "POST",
        "/tasks",
        json={"prompt": load_image_prompt("ok.png"), "input_image": "../elsewhere/secret.png"},
    )
    assert status in (400, 403, 404), body
    await create_channel(f"{server.relay}/s1")
    stream_prompt = {**DEFAULT_PROMPT, "9": load_image_prompt(str(outside / "secret.png"))["1"]}
    status, body = await server.call(
        "POST",
        "/stream/start",
        json={
            "subscribe_url": f"{server.relay}/s1",
            "publish_url": f"{server.relay}/s1-out",
            "params": {"prompt": json.dumps(stream_prompt)},
        },
    )
    assert status == 400, body


async def test_a_request_cannot_set_the_worker_directory(server: Server) -> None:
    await create_channel(f"{server.relay}/s2")
    body = {
        "subscribe_url": f"{server.relay}/s2",
        "publish_url": f"{server.relay}/s2-out",
        "gateway_request_id": "s2",
        "params": {"cwd": "/etc"},
    }
    status, answer = await server.call("POST", "/stream/start", json=body)
    assert status == 400 and "cwd" in json.dumps(answer), answer
    flat = {k: v for k, v in body.items() if k != "params"}  # POST /stream's flat form
    status, answer = await server.call("POST", "/stream", json={**flat, "cwd": "/etc"})
    assert status == 400, answer
    assert "s2" not in [s["stream_id"] for s in (await server.call("GET", "/streams"))[1]["streams"]]


@pytest.mark.server_config(allowed_stream_hosts=["gateway.example:8935"])
async def test_stream_urls_limited_to_allowed_hosts(server: Server) -> None:
    status, answer = await server.call(
        "POST",
        "/stream/start",
        json={
            "subscribe_url": "http://10.0.0.1:22/in",
            "publish_url": f"{server.relay}/s3-out",
            "gateway_request_id": "s3",
        },
    )
    assert status == 400 and answer["error"] == "Stream URL not allowed", answer
    assert [i["input_name"] for i in answer["validation_errors"]] == ["subscribe_url"]
    # The server's own relay (--relay) is allowed.
    await create_channel(f"{server.relay}/s3")
    status, answer = await server.call(
        "POST",
        "/stream/start",
        json={
            "subscribe_url": f"{server.relay}/s3",
            "publish_url": f"{server.relay}/s3-out",
            "gateway_request_id": "s3",
        },
    )
    assert status == 200, answer
    status, _ = await server.call("DELETE", "/stream/s3")
    assert status == 200


async def test_system_stats_shows_no_command_line(server: Server) -> None:
    status, stats = await server.call("GET", "/system_stats")
    assert status == 200 and stats["system"]["argv"] == []
