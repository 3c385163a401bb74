"""ComfyUI's API over parallel job workers: /prompt, /ws, /queue, /interrupt, /history, validation."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from server.jobs.binary import PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, TEXT

from .conftest import JobsServer, WsRecorder, gated_prompt

pytestmark = pytest.mark.asyncio(loop_scope="package")

# Events a prompt's client gets that belong to that prompt (all but status / feature_flags).
PROMPT_EVENTS = {
    "execution_start",
    "execution_cached",
    "executing",
    "progress",
    "progress_state",
    "executed",
    "execution_success",
    "execution_error",
    "execution_interrupted",
}


def _own_events(recorder: WsRecorder) -> list[dict]:
    return [m for m in recorder.json() if m["type"] in PROMPT_EVENTS]


def _check_comfy_sequence(recorder: WsRecorder, prompt_id: str) -> None:
    """ComfyUI's order for a successful prompt of TestSolid(1) -> TestGate(2) -> SaveImage(3)."""
    messages = recorder.json()
    assert messages[0]["type"] == "status" and "sid" in messages[0]["data"]
    kinds = [(m["type"], m["data"].get("node")) for m in messages if m["type"] != "progress_state"]
    own = [k for k in kinds if k[0] in PROMPT_EVENTS]
    assert own[0] == ("execution_start", None)
    assert own[1] == ("execution_cached", None)
    executing = [node for kind, node in own if kind == "executing"]
    assert executing == ["1", "2", "3", None]
    pos = {k: i for i, k in reversed(list(enumerate(own)))}  # first position of each (kind, node)
    progress = [i for i, k in enumerate(own) if k[0] == "progress"]
    assert progress and all(pos[("executing", "2")] < i < pos[("executing", "3")] for i in progress)
    assert pos[("executing", "3")] < pos[("executed", "3")] < pos[("execution_success", None)]
    assert own[-1] == ("executing", None)
    # ComfyUI: the job is in the history (a status broadcast) before the closing executing null.
    success, done = kinds.index(("execution_success", None)), kinds.index(("executing", None))
    assert any(k[0] == "status" for k in kinds[success:done])


async def test_two_prompts_run_at_once_each_client_sees_only_its_own(jobs_server: JobsServer, no_leaks):
    a, b = await jobs_server.ws("client-a"), await jobs_server.ws("client-b")
    gate_a, gate_b = jobs_server.gate(), jobs_server.gate()
    pid_a = await jobs_server.queue_prompt(gated_prompt(gate_a, "par-a"), "client-a")
    pid_b = await jobs_server.queue_prompt(gated_prompt(gate_b, "par-b", value=0.75), "client-b")

    # Both are inside their gate node at the same time: their execution windows overlap.
    await a.wait_event("executing", pid_a, node="2")
    await b.wait_event("executing", pid_b, node="2")
    running, pending = await jobs_server.queue()
    assert sorted(running) == sorted([pid_a, pid_b]) and pending == []
    assert not any(m["type"] == "execution_success" for m in a.json() + b.json())

    gate_a.touch()
    await a.wait_done(pid_a)
    running, _ = await jobs_server.queue()
    assert running == [pid_b]  # B is still inside its gate while A has finished
    gate_b.touch()
    await b.wait_done(pid_b)

    for recorder, mine, other in ((a, pid_a, pid_b), (b, pid_b, pid_a)):
        events = _own_events(recorder)
        assert events and all(m["data"]["prompt_id"] == mine for m in events)
        assert not any(other in str(m) for m in recorder.json())
        _check_comfy_sequence(recorder, mine)
        frames = recorder.frames()
        previews = [f for f in frames if f.type == PREVIEW_IMAGE_WITH_METADATA]
        texts = [f for f in frames if f.type == TEXT]
        assert previews and all(f.prompt_id == mine and f.node_id == "2" for f in previews)
        assert Image.open(io.BytesIO(previews[0].image)).size == (8, 8)
        assert [t.text for t in texts] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
        assert all(t.prompt_id == mine and t.node_id == "2" for t in texts)

    for prompt_id, value in ((pid_a, 0.25), (pid_b, 0.75)):
        entry = await jobs_server.history(prompt_id)
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert [m[0] for m in entry["status"]["messages"]] == [
            "execution_start",
            "execution_cached",
            "execution_success",
        ]
        assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["3"]
        (image,) = entry["outputs"]["3"]["images"]
        status, png = await jobs_server.call("GET", "/view", params=image)
        assert status == 200
        pixel = Image.open(io.BytesIO(png)).getpixel((4, 4))
        assert pixel == (int(value * 255),) * 3  # SaveImage truncates, as ComfyUI does
    await a.close()
    await b.close()


async def test_legacy_client_gets_type_1_previews_and_legacy_text(jobs_server: JobsServer, no_leaks):
    legacy = await jobs_server.ws("client-legacy", flags=None)
    gate = jobs_server.gate()
    gate.touch()
    prompt_id = await jobs_server.queue_prompt(gated_prompt(gate, "legacy", steps=1), "client-legacy")
    await legacy.wait_done(prompt_id)
    frames = legacy.frames()
    assert [f.type for f in frames] == [PREVIEW_IMAGE, TEXT]
    assert frames[0].image_type == "JPEG" and Image.open(io.BytesIO(frames[0].image)).size == (8, 8)
    assert (frames[1].node_id, frames[1].text, frames[1].prompt_id) == ("2", "step 1 of 1", None)
    # The legacy binary layout cannot hold the prompt_id: its JSON twin carries it.
    twins = [m["data"] for m in legacy.json() if m.get("type") == "progress_text"]
    assert twins == [{"node": "2", "text": "step 1 of 1", "prompt_id": prompt_id}]
    await legacy.close()


async def test_priority_front_number_and_delete_pending(jobs_server: JobsServer, no_leaks):
    ws = await jobs_server.ws("client-prio")
    gate_1, gate_2, gate_p = jobs_server.gate(), jobs_server.gate(), jobs_server.gate()
    blocker_1 = await jobs_server.queue_prompt(gated_prompt(gate_1, "blk-1"), "client-prio")
    blocker_2 = await jobs_server.queue_prompt(gated_prompt(gate_2, "blk-2"), "client-prio")
    await ws.wait_event("executing", blocker_1, node="2")
    await ws.wait_event("executing", blocker_2, node="2")

    normal = await jobs_server.queue_prompt(gated_prompt(gate_p, "p-normal"), "client-prio")
    front = await jobs_server.queue_prompt(gated_prompt(gate_p, "p-front"), "client-prio", front=True)
    numbered = await jobs_server.queue_prompt(gated_prompt(gate_p, "p-num"), "client-prio", number=-1000)
    doomed = await jobs_server.queue_prompt(gated_prompt(gate_p, "p-doomed"), "client-prio")
    _, pending = await jobs_server.queue()
    assert pending == [numbered, front, normal, doomed]

    status, _ = await jobs_server.call("POST", "/queue", json={"delete": [doomed]})
    assert status == 200
    _, pending = await jobs_server.queue()
    assert pending == [numbered, front, normal]

    gate_1.touch()  # one worker frees: it takes the first by priority
    await ws.wait_event("execution_start", numbered)
    _, pending = await jobs_server.queue()
    assert pending == [front, normal]
    gate_2.touch()
    await ws.wait_event("execution_start", front)
    running, pending = await jobs_server.queue()
    assert sorted(running) == sorted([numbered, front]) and pending == [normal]

    gate_p.touch()
    for prompt_id in (numbered, front, normal):
        await ws.wait_done(prompt_id)
    assert await jobs_server.history(doomed) == {}
    assert not any(m["data"].get("prompt_id") == doomed for m in ws.json() if m["type"] != "status")
    await ws.close()


async def test_interrupt_one_running_prompt_the_other_finishes(jobs_server: JobsServer, no_leaks):
    ws = await jobs_server.ws("client-int")
    gate_x, gate_y = jobs_server.gate(), jobs_server.gate()
    x = await jobs_server.queue_prompt(gated_prompt(gate_x, "int-x"), "client-int")
    y = await jobs_server.queue_prompt(gated_prompt(gate_y, "int-y"), "client-int")
    await ws.wait_event("executing", x, node="2")
    await ws.wait_event("executing", y, node="2")

    status, _ = await jobs_server.call("POST", "/interrupt", json={"prompt_id": x})
    assert status == 200
    interrupted = await ws.wait_event("execution_interrupted", x)
    assert interrupted["data"]["node_id"] == "2" and interrupted["data"]["node_type"] == "TestGate"
    await ws.wait_done(x)
    entry = await jobs_server.history(x)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]

    running, _ = await jobs_server.queue()
    assert running == [y]  # the other one runs on
    assert not any(m["type"] == "execution_interrupted" and m["data"]["prompt_id"] == y for m in ws.json())
    gate_y.touch()
    await ws.wait_done(y)
    assert (await jobs_server.history(y))["status"]["status_str"] == "success"
    await ws.close()


async def test_interrupt_without_prompt_id_stops_every_running_prompt(jobs_server: JobsServer, no_leaks):
    ws = await jobs_server.ws("client-int-all")
    gate = jobs_server.gate()
    ids = [await jobs_server.queue_prompt(gated_prompt(gate, f"all-{i}"), "client-int-all") for i in range(2)]
    for prompt_id in ids:
        await ws.wait_event("executing", prompt_id, node="2")
    status, _ = await jobs_server.call("POST", "/api/interrupt")
    assert status == 200
    for prompt_id in ids:
        await ws.wait_event("execution_interrupted", prompt_id)
        await ws.wait_done(prompt_id)
    await ws.close()


async def test_interrupt_of_a_prompt_that_is_not_running_changes_nothing(jobs_server: JobsServer, no_leaks):
    ws = await jobs_server.ws("client-int-none")
    gate = jobs_server.gate()
    prompt_id = await jobs_server.queue_prompt(gated_prompt(gate, "int-none"), "client-int-none")
    await ws.wait_event("executing", prompt_id, node="2")
    status, _ = await jobs_server.call("POST", "/interrupt", json={"prompt_id": "no-such-prompt"})
    assert status == 200
    gate.touch()
    await ws.wait_done(prompt_id)
    assert (await jobs_server.history(prompt_id))["status"]["status_str"] == "success"
    await ws.close()


async def test_invalid_prompts_get_comfyui_400(jobs_server: JobsServer, no_leaks):
    status, body = await jobs_server.call("POST", "/prompt", json={"client_id": "x"})
    assert status == 400
    assert body == {
        "error": {
            "type": "no_prompt",
            "message": "No prompt provided",
            "details": "No prompt provided",
            "extra_info": {},
        },
        "node_errors": {},
    }

    bad_input = gated_prompt("", "bad")
    bad_input["2"]["inputs"]["steps"] = 0  # below the minimum of 1
    del bad_input["1"]["inputs"]["size"]
    status, body = await jobs_server.call("POST", "/prompt", json={"prompt": bad_input})
    assert status == 400
    assert set(body) == {"error", "node_errors"}
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    errors = {e["type"] for node in body["node_errors"].values() for e in node["errors"]}
    assert {"value_smaller_than_min", "required_input_missing"} <= errors
    assert all(set(n) == {"errors", "dependent_outputs", "class_type"} for n in body["node_errors"].values())

    status, body = await jobs_server.call(
        "POST", "/api/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}
    )
    assert status == 400 and body["error"]["type"] == "missing_node_type" and body["node_errors"] == {}

    status, body = await jobs_server.call("POST", "/prompt", data=b"{not json")
    assert status == 400 and set(body) == {"error", "node_errors"}
    running, pending = await jobs_server.queue()
    assert pending == []


async def test_history_delete_and_clear(jobs_server: JobsServer, no_leaks):
    ws = await jobs_server.ws("client-hist")
    gate = jobs_server.gate()
    gate.touch()
    ids = [
        await jobs_server.queue_prompt(gated_prompt(gate, f"hist-{i}", steps=1), "client-hist")
        for i in range(2)
    ]
    for prompt_id in ids:
        await ws.wait_done(prompt_id)
    status, data = await jobs_server.call("GET", "/history", params={"max_items": "1"})
    assert status == 200 and len(data) == 1
    status, _ = await jobs_server.call("POST", "/history", json={"delete": [ids[0]]})
    assert status == 200
    assert await jobs_server.history(ids[0]) == {} and await jobs_server.history(ids[1]) != {}
    status, _ = await jobs_server.call("POST", "/history", json={"clear": True})
    status, data = await jobs_server.call("GET", "/api/history")
    assert status == 200 and data == {}
    await ws.close()


async def test_object_info_system_stats_queue_info(jobs_server: JobsServer, no_leaks):
    status, info = await jobs_server.call("GET", "/object_info")
    assert status == 200 and {"TestGate", "LoadImage", "SaveImage"} <= set(info)
    status, one = await jobs_server.call("GET", "/api/object_info/TestGate")
    assert status == 200 and list(one) == ["TestGate"]
    assert one["TestGate"]["input"]["required"]["steps"][0] == "INT"
    status, none = await jobs_server.call("GET", "/object_info/NoSuchNode")
    assert status == 200 and none == {}
    status, stats = await jobs_server.call("GET", "/system_stats")
    assert status == 200 and set(stats) == {"system", "devices"}
    assert stats["devices"] and stats["devices"][0]["type"] in ("cpu", "cuda")
    assert stats["system"]["pytorch_version"].startswith("2.")
    status, prompt_info = await jobs_server.call("GET", "/prompt")
    assert status == 200 and "queue_remaining" in prompt_info["exec_info"]


async def test_reconnecting_client_learns_the_running_node(jobs_server: JobsServer, no_leaks):
    first = await jobs_server.ws("client-re")
    gate = jobs_server.gate()
    prompt_id = await jobs_server.queue_prompt(gated_prompt(gate, "re"), "client-re")
    await first.wait_event("executing", prompt_id, node="2")
    await first.close()
    again = await jobs_server.ws("client-re")
    await again.wait_event("executing", prompt_id, node="2")
    gate.touch()
    await again.wait_done(prompt_id)
    await again.close()
    await asyncio.sleep(0)
