"""Tasks with SSE progress (the seed's design), read with a real SSE client (sseclient-py over
urllib, in a thread) and, where the raw stream matters (heartbeats), with aiohttp."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import urllib.error
import urllib.request
import uuid
from datetime import datetime
from typing import Any

import aiohttp
import numpy as np
import pytest
import sseclient
from PIL import Image

from .conftest import TASK_TTL_S, WAIT_S, JobsServer, gated_prompt

pytestmark = pytest.mark.asyncio(loop_scope="package")


class SseReader:
    """GET `url` as an EventSource would; events go into an asyncio queue (None at the end)."""

    def __init__(self, url: str, last_event_id: str | None = None):
        self.url = url
        self.headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            self.headers["Last-Event-ID"] = last_event_id
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.status: int | None = None
        self.events: list[sseclient.Event] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            request = urllib.request.Request(self.url, headers=self.headers)
            with urllib.request.urlopen(request, timeout=WAIT_S) as response:
                self.status = response.status
                for event in sseclient.SSEClient(response).events():
                    self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except urllib.error.HTTPError as exc:
            self.status = exc.code
        finally:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    async def next(self) -> sseclient.Event | None:
        event = await asyncio.wait_for(self.queue.get(), WAIT_S)
        if event is not None:
            self.events.append(event)
        return event

    async def until(self, predicate) -> sseclient.Event:
        while True:
            event = await self.next()
            assert event is not None, f"the stream ended first: {[e.data for e in self.events]}"
            if predicate(json.loads(event.data)):
                return event

    async def rest(self) -> list[sseclient.Event]:
        while await self.next() is not None:
            pass
        await asyncio.to_thread(self._thread.join, WAIT_S)
        return self.events


def _data(event: sseclient.Event) -> dict[str, Any]:
    return json.loads(event.data)


async def _create(jobs: JobsServer, body: dict[str, Any]) -> str:
    status, data = await jobs.call("POST", "/tasks", json=body)
    assert status == 200, data
    return data["taskId"]


def _at_gate(data: dict[str, Any]) -> bool:
    return data["progress"]["currentStep"] == "Running TestGate..."


async def test_task_answers_at_once_then_progress_to_complete(jobs_server: JobsServer, no_leaks):
    gate = jobs_server.gate()
    task_id = await _create(jobs_server, {"prompt": gated_prompt(gate, "task-ok", steps=2, value=0.5)})
    # Last-Event-ID 0: every event from the first on (they are all kept), whenever this connects.
    reader = SseReader(f"{jobs_server.base}/progress/{task_id}", last_event_id="0")
    first = await reader.next()
    assert (first.id, first.event) == ("1", "progress")
    assert _data(first)["status"] == "in-progress" and _data(first)["progress"]["currentStep"] == "Queued..."
    await reader.until(_at_gate)  # the task is answered while its job waits at the gate
    gate.touch()
    events = await reader.rest()
    assert reader.status == 200
    assert [e.event for e in events[:-1]] == ["progress"] * (len(events) - 1) and events[
        -1
    ].event == "complete"
    ids = [int(e.id) for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    payloads = [_data(e) for e in events]
    for data in payloads:
        assert data["taskId"] == task_id
        assert set(data["progress"]) == {"percentage", "currentStep", "currentValue", "maxValue"}
        assert datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00")).tzinfo is not None
    steps = list(dict.fromkeys(d["progress"]["currentStep"] for d in payloads))
    assert steps == [
        "Queued...",
        "Starting...",
        "Running TestSolid...",
        "Running TestGate...",
        "Saving image...",
        "Complete",
    ]
    gate_progress = [
        d["progress"] for d in payloads if d["progress"]["maxValue"] == 2 and d["status"] == "in-progress"
    ]
    assert [(p["currentValue"], p["percentage"]) for p in gate_progress] == [(1, 50), (2, 100)]

    done = payloads[-1]
    assert done["status"] == "completed" and done["progress"]["percentage"] == 100
    result = done["result"]
    assert result["imageUrl"] == result["images"][0]["url"] and result["images"][0]["node"] == "3"
    assert list(result["outputs"]) == ["3"] and result["prompt_id"]
    status, png = await jobs_server.call("GET", result["imageUrl"])
    assert status == 200 and Image.open(io.BytesIO(png)).getpixel((1, 1)) == (127, 127, 127)
    assert (await jobs_server.history(result["prompt_id"]))["status"]["status_str"] == "success"


async def test_failing_node_ends_in_error_event(jobs_server: JobsServer, no_leaks):
    gate = jobs_server.gate()
    gate.touch()
    task_id = await _create(jobs_server, {"prompt": gated_prompt(gate, "task-fail", steps=1, fail=True)})
    events = await SseReader(f"{jobs_server.base}/progress/{task_id}").rest()
    last = events[-1]
    assert last.event == "error-event" and all(e.event == "progress" for e in events[:-1])
    data = _data(last)
    assert data["status"] == "error" and "result" not in data
    assert data["progress"] == {"percentage": 0, "currentStep": "Failed", "currentValue": 0, "maxValue": 0}
    assert data["error"]["message"] == "Generation failed"
    assert "boom task-fail" in data["error"]["details"] and "TestFail" in data["error"]["details"]


async def test_late_subscriber_gets_the_current_state_and_last_event_id_resumes(
    jobs_server: JobsServer, no_leaks
):
    gate = jobs_server.gate()
    task_id = await _create(jobs_server, {"prompt": gated_prompt(gate, "task-late", steps=2)})
    url = f"{jobs_server.base}/progress/{task_id}"
    early = SseReader(url)
    at_gate = await early.until(_at_gate)
    late = SseReader(url)
    current = await late.next()
    assert (current.id, current.event, current.data) == (at_gate.id, at_gate.event, at_gate.data)
    gate.touch()
    early_events, late_events = await early.rest(), await late.rest()
    after = [(e.id, e.data) for e in early_events if int(e.id) > int(at_gate.id)]
    assert [(e.id, e.data) for e in late_events[1:]] == after

    middle = early_events[len(early_events) // 2]
    resumed = await SseReader(url, last_event_id=middle.id).rest()
    assert [(e.id, e.data) for e in resumed] == [
        (e.id, e.data) for e in early_events if int(e.id) > int(middle.id)
    ]
    finished = SseReader(url, last_event_id=early_events[-1].id)
    assert await finished.rest() == [] and finished.status == 204  # 204 stops an EventSource
    garbled = await SseReader(url, last_event_id="not-a-number").rest()
    assert [(e.id, e.event) for e in garbled] == [(early_events[-1].id, "complete")]


async def test_finished_task_expires_to_404(jobs_server: JobsServer, no_leaks):
    gate = jobs_server.gate()
    gate.touch()
    task_id = await _create(jobs_server, {"prompt": gated_prompt(gate, "task-exp", steps=1)})
    events = await SseReader(f"{jobs_server.base}/progress/{task_id}").rest()
    assert events[-1].event == "complete"
    deadline = asyncio.get_running_loop().time() + TASK_TTL_S + WAIT_S
    while True:
        async with jobs_server.http.get(f"{jobs_server.base}/progress/{task_id}") as resp:
            if resp.status == 404:
                body = await resp.json()
                break
            assert resp.status == 200
        assert asyncio.get_running_loop().time() < deadline, "the task never expired"
        await asyncio.sleep(0.2)
    assert body["error"] == "Task not found"
    status, _ = await jobs_server.call("GET", "/progress/no-such-task")
    assert status == 404


async def test_heartbeat_comments_on_a_waiting_stream(jobs_server: JobsServer, no_leaks):
    gate = jobs_server.gate()
    task_id = await _create(jobs_server, {"prompt": gated_prompt(gate, "task-hb", steps=1)})
    raw = b""
    async with jobs_server.http.get(f"{jobs_server.base}/api/progress/{task_id}") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        while b": heartbeat\n\n" not in raw:
            raw += await asyncio.wait_for(resp.content.readany(), WAIT_S)
        gate.touch()
        raw += await asyncio.wait_for(resp.content.read(), WAIT_S)
    assert b"event: complete\n" in raw and raw.index(b": heartbeat") < raw.index(b"event: complete")


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), color).save(buf, format="PNG")
    return buf.getvalue()


LOAD_SAVE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "replaced-by-the-input-image.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "task_input"}},
}


async def _result_pixels(jobs: JobsServer, task_id: str) -> np.ndarray:
    events = await SseReader(f"{jobs.base}/progress/{task_id}").rest()
    assert events[-1].event == "complete", events[-1].data
    status, png = await jobs.call("GET", _data(events[-1])["result"]["imageUrl"])
    assert status == 200
    return np.array(Image.open(io.BytesIO(png)))


async def test_task_input_image_by_upload_or_reference(jobs_server: JobsServer, no_leaks):
    image = _png((10, 200, 30))
    name = f"task-{uuid.uuid4().hex[:8]}.png"
    form = aiohttp.FormData()
    form.add_field("prompt", json.dumps(LOAD_SAVE))
    form.add_field("client_id", "task-upload")
    form.add_field("image", image, filename=name, content_type="image/png")
    status, data = await jobs_server.call("POST", "/tasks", data=form)
    assert status == 200, data
    expected = np.array(Image.open(io.BytesIO(image)))
    assert np.array_equal(await _result_pixels(jobs_server, data["taskId"]), expected)
    assert (jobs_server.input_dir / name).read_bytes() == image

    task_id = await _create(jobs_server, {"prompt": LOAD_SAVE, "input_image": name})
    assert np.array_equal(await _result_pixels(jobs_server, task_id), expected)

    for body, kind in (
        ({"prompt": LOAD_SAVE, "input_image": "no-such-image.png"}, "invalid_input_image"),
        ({"prompt": LOAD_SAVE, "input_image": "../outside.png"}, "invalid_input_image"),
        ({"prompt": gated_prompt("", "no-input"), "input_image": name}, "invalid_input_node"),
        ({"client_id": "x"}, "no_prompt"),
    ):
        status, error = await jobs_server.call("POST", "/tasks", json=body)
        assert status == 400 and error["error"]["type"] == kind, error
    bad = dict(LOAD_SAVE, **{"1": {"class_type": "LoadImage", "inputs": {"image": 7}}})
    status, error = await jobs_server.call("POST", "/tasks", json={"prompt": bad})
    assert status == 400 and set(error) == {"error", "node_errors"} and "1" in error["node_errors"]


async def test_deleted_pending_task_ends_in_error_event(jobs_server: JobsServer, no_leaks):
    ws = await jobs_server.ws("client-task-del")
    gates = [jobs_server.gate(), jobs_server.gate()]
    blockers = [
        await jobs_server.queue_prompt(gated_prompt(g, f"tdel-{i}"), "client-task-del")
        for i, g in enumerate(gates)
    ]
    for prompt_id in blockers:
        await ws.wait_event("executing", prompt_id, node="2")
    status, data = await jobs_server.call("POST", "/tasks", json={"prompt": gated_prompt("", "tdel-task")})
    assert status == 200
    reader = SseReader(f"{jobs_server.base}/progress/{data['taskId']}")
    assert _data(await reader.next())["progress"]["currentStep"] == "Queued..."
    status, _ = await jobs_server.call("POST", "/queue", json={"delete": [data["prompt_id"]]})
    events = await reader.rest()
    assert (
        events[-1].event == "error-event" and _data(events[-1])["error"]["message"] == "Generation cancelled"
    )
    for gate in gates:
        gate.touch()
    for prompt_id in blockers:
        await ws.wait_done(prompt_id)
    await ws.close()
