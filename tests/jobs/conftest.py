"""One real server for the job tests (aiohttp on 127.0.0.1, two spawned job workers, a trickle relay),
shared by the whole folder: spawning workers is the slow part. The custom node package in
node_package/ is copied into a temp folder and given as --custom-nodes.

Jobs last as long as a test wants: `TestGate` waits at its gate file (`JobsServer.gate()`) until
the test opens it, so overlaps and interrupts are shown by events, never by timing."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from server.jobs import JOB_SETTINGS_KEY
from server.jobs.binary import DecodedFrame, decode
from server.jobs.scheduler import JOB_SCHEDULER_KEY
from tests.processes import alive

NODE_PACKAGE = Path(__file__).resolve().parent / "node_package" / "slow_test_nodes.py"
TASK_TTL_S = 4.0  # finished tasks are forgotten this fast here (the default is 5 minutes)
HEARTBEAT_S = 0.25  # and SSE heartbeats come this often (the default is 30 s)
WAIT_S = 60.0  # the longest any test waits for an event (a bound against hangs, not a timing)

PREVIEW_FLAGS = {"supports_preview_metadata": True, "supports_progress_text_metadata": True}


def gated_prompt(gate: Path | str, tag: str, steps: int = 3, value: float = 0.25, fail: bool = False) -> dict:
    """TestSolid -> TestGate (waits at `gate` before each step) -> [TestFail] -> SaveImage."""
    prompt: dict[str, Any] = {
        "1": {"class_type": "TestSolid", "inputs": {"value": value, "size": 8, "tag": tag}},
        "2": {
            "class_type": "TestGate",
            "inputs": {"images": ["1", 0], "steps": steps, "gate": str(gate), "timeout_s": WAIT_S},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"jobs_{tag}"}},
    }
    if fail:
        prompt["4"] = {"class_type": "TestFail", "inputs": {"images": ["2", 0], "message": f"boom {tag}"}}
        prompt["3"]["inputs"]["images"] = ["4", 0]
    return prompt


class WsRecorder:
    """A ComfyUI /ws client that records every message (JSON as dicts, binary frames decoded)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, text_has_prompt_id: bool):
        self.ws = ws
        self.text_has_prompt_id = text_has_prompt_id
        self.messages: list[dict[str, Any] | DecodedFrame] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                item: dict[str, Any] | DecodedFrame = json.loads(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                item = decode(msg.data, self.text_has_prompt_id)
            else:
                continue
            async with self._changed:
                self.messages.append(item)
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = WAIT_S) -> Any:
        """The first recorded message (from the start) that satisfies `predicate`."""

        async def find() -> Any:
            async with self._changed:
                while True:
                    for item in self.messages:
                        if predicate(item):
                            return item
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    async def wait_event(self, event: str, prompt_id: str, **data: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda m: (
                isinstance(m, dict)
                and m.get("type") == event
                and m["data"].get("prompt_id") == prompt_id
                and all(m["data"].get(k) == v for k, v in data.items())
            )
        )

    async def wait_done(self, prompt_id: str) -> dict[str, Any]:
        return await self.wait_event("executing", prompt_id, node=None)

    def json(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if isinstance(m, dict)]

    def frames(self) -> list[DecodedFrame]:
        return [m for m in self.messages if isinstance(m, DecodedFrame)]

    async def close(self) -> None:
        await self.ws.close()
        await self._task


@dataclass
class JobsServer:
    app: web.Application
    base: str
    http: aiohttp.ClientSession
    root: Path
    input_dir: Path
    output_dir: Path
    gates: list[Path] = field(default_factory=list)

    @property
    def relay(self) -> str:
        return f"{self.base}/trickle"

    def gate(self) -> Path:
        """A new, closed gate (open it with `.touch()`)."""
        gate = self.root / "gates" / uuid.uuid4().hex
        self.gates.append(gate)
        return gate

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base}{path}", **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.read()
            return resp.status, body

    async def queue_prompt(self, prompt: dict, client_id: str | None = None, **fields: Any) -> str:
        body = {"prompt": prompt, **fields}
        if client_id is not None:
            body["client_id"] = client_id
        status, data = await self.call("POST", "/prompt", json=body)
        assert status == 200, data
        return data["prompt_id"]

    async def ws(self, client_id: str, flags: dict[str, Any] | None = PREVIEW_FLAGS) -> WsRecorder:
        ws = await self.http.ws_connect(f"{self.base}/ws?clientId={client_id}")
        if flags is not None:
            await ws.send_json({"type": "feature_flags", "data": flags})
        recorder = WsRecorder(
            ws, text_has_prompt_id=bool(flags and flags.get("supports_progress_text_metadata"))
        )
        await recorder.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "status")
        if flags is not None:
            await recorder.wait_for(lambda m: isinstance(m, dict) and m.get("type") == "feature_flags")
        return recorder

    async def history(self, prompt_id: str) -> dict[str, Any]:
        status, data = await self.call("GET", f"/history/{prompt_id}")
        assert status == 200
        return data.get(prompt_id, {})

    async def queue(self) -> tuple[list[str], list[str]]:
        """(running prompt ids, pending prompt ids in order)."""
        status, data = await self.call("GET", "/queue")
        assert status == 200
        return [i[1] for i in data["queue_running"]], [i[1] for i in data["queue_pending"]]




@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JobsServer]:
    root = tmp_path_factory.mktemp("jobs")
    nodes = root / "nodes"
    nodes.mkdir()
    shutil.copy(NODE_PACKAGE, nodes / NODE_PACKAGE.name)
    (root / "gates").mkdir()
    config = ServerConfig(
        custom_nodes=[nodes],
        job_workers=2,
        input_dir=root / "input",
        output_dir=root / "output",
        relay=True,
        max_streams=2,
    )
    app = create_app(config)
    app[JOB_SETTINGS_KEY] = replace(app[JOB_SETTINGS_KEY], sse_heartbeat_s=HEARTBEAT_S, task_ttl_s=TASK_TTL_S)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    scheduler = app[JOB_SCHEDULER_KEY]
    await scheduler.wait_ready(180)
    assert [w.state for w in scheduler.workers] == ["ready", "ready"], scheduler.worker_status()
    pids = [w.pid for w in scheduler.workers]
    async with aiohttp.ClientSession() as http:
        jobs = JobsServer(
            app, str(server.make_url("")).rstrip("/"), http, root, config.input_dir, config.output_dir
        )
        yield jobs
    for gate in jobs.gates:  # a failed test may have left one closed: nothing waits out its timeout
        gate.touch()
    await server.close()
    for _ in range(200):
        if not any(alive(pid) for pid in pids if pid is not None):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(pid) for pid in pids if pid is not None), f"job workers {pids} outlived the server"
