"""schemathesis against /openapi.json of a real server with a live stream for `{id}`: no HTTP 500, no
status code or Allow header the document does not list, and the stream still runs. A short run (a
few examples per operation); `bench/chaos.py` runs the long one.

The run is a number of examples, not a time: schemathesis's --max-time repeats the fuzzing until the
time is spent, so the run lasted as long as its budget and reached as far as the machine's speed
let it. 20 examples per operation are about 1,000 requests, the same on any machine."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.trickle_client import create_channel

from .conftest import Server

pytestmark = pytest.mark.chaos

# They end or restart the live stream by design (not bad input).
EXCLUDED = {("delete", "/stream/{id}"), ("post", "/stream/stop"), ("post", "/stream/{id}/restart-worker"),
            ("post", "/stream/{id}/restart-workers")}  # fmt: skip
CHECKS = "not_a_server_error,status_code_conformance,unsupported_method,allow_header_conformance"


def _is_sse(operation: dict) -> bool:
    """An event stream never ends: the long run (bench/chaos.py) covers those."""
    return "text/event-stream" in operation["responses"].get("200", {}).get("content", {})


def _pinned(document: dict, live_id: str) -> dict:
    for ops in document["paths"].values():  # excluded operations stay documented (Allow headers)
        for op in ops.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] == "id":
                    param["schema"] = {"type": "string", "enum": [live_id]}
    for schema in document["components"]["schemas"].values():
        for name in ("width", "height"):  # a size change restarts the worker: a valid request, not bad input
            if name in schema.get("properties", {}):
                schema["properties"][name] = {"type": "integer", "enum": [64]}
    return document


@pytest.mark.skipif(shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None,
                    reason="schemathesis (the dev extra) is not installed")  # fmt: skip
@pytest.mark.timeout(300)
@pytest.mark.server_config(max_streams=8)  # a valid start from the fuzzer is no 503 at capacity
async def test_openapi_fuzz_with_a_live_stream(server: Server, tmp_path: Path) -> None:
    await create_channel(f"{server.relay}/live")
    body = {
        "subscribe_url": f"{server.relay}/live",
        "publish_url": f"{server.relay}/live-out",
        "gateway_request_id": "live",
        "params": {"width": 64, "height": 64},
    }
    status, answer = await server.call("POST", "/stream/start", json=body)
    assert status == 200, answer
    status, document = await server.call("GET", "/openapi.json")
    assert status == 200
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(_pinned(document, "live")))
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    untested = [f"{m.upper()} {p}" for m, p in EXCLUDED] + [
        f"{m.upper()} {p}" for p, ops in document["paths"].items() for m, op in ops.items() if _is_sse(op)
    ]
    proc = await asyncio.create_subprocess_exec(
        exe, "run", str(schema), "--url", server.base, "--checks", CHECKS, "--phases", "fuzzing",
        "--max-examples", "20", "--workers", "1", "--request-timeout", "20", "--no-color", "--seed", "1",
        "--suppress-health-check", "all", *[arg for name in untested for arg in ("--exclude-name", name)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    status, info = await server.call("GET", "/stream/live")
    assert status == 200 and info["state"] in ("starting", "running"), info
    status, _ = await server.call("DELETE", "/stream/live")
    assert status == 200
