"""ComfyUI's output caching, the jobs API and the empty prompt, on the shared real job workers: a
prompt queued again unchanged is answered from its first run's outputs (ComfyUI's events: every node
in execution_cached, the output node's cached ui in executed; no node runs, no file is written),
while a changed widget, a changed input file (LoadImage's IS_CHANGED) or a deleted output runs it
again; /api/jobs lists, filters and pages them as the editor's queue and assets panels read them."""

from __future__ import annotations

import uuid

import pytest
from PIL import Image

from .conftest import JobsServer

pytestmark = pytest.mark.asyncio(loop_scope="package")


def invert_prompt(color: int, prefix: str) -> dict:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def own(recorder, prompt_id: str) -> list[tuple[str, dict]]:
    return [(m["type"], m["data"]) for m in recorder.json() if m["data"].get("prompt_id") == prompt_id]


async def test_identical_prompt_reuses_outputs_and_changes_run_again(
    jobs_server: JobsServer, no_leaks
) -> None:
    client = f"cache-{uuid.uuid4().hex[:6]}"
    prefix = f"cache_{uuid.uuid4().hex[:6]}"
    ws = await jobs_server.ws(client)
    try:
        first = await jobs_server.queue_prompt(invert_prompt(0x102030, prefix), client)
        await ws.wait_done(first)
        outputs = (await jobs_server.history(first))["outputs"]
        files = sorted(p.name for p in jobs_server.output_dir.glob(f"{prefix}_*"))
        assert len(files) == 1

        again = await jobs_server.queue_prompt(invert_prompt(0x102030, prefix), client)
        await ws.wait_done(again)
        events = own(ws, again)
        kinds = [k for k, _ in events]
        assert kinds == [
            "execution_start",
            "execution_cached",
            "executed",
            "execution_success",
            "executing",
        ], kinds
        assert sorted(events[1][1]["nodes"]) == ["1", "2", "3"]
        assert events[2][1]["node"] == "3" and events[2][1]["output"] == outputs["3"]
        assert events[4][1]["node"] is None
        entry = await jobs_server.history(again)
        assert entry["outputs"] == outputs and entry["status"]["status_str"] == "success"
        assert sorted(p.name for p in jobs_server.output_dir.glob(f"{prefix}_*")) == files  # nothing written

        changed = await jobs_server.queue_prompt(invert_prompt(0x102031, prefix), client)
        await ws.wait_done(changed)
        assert ("executing", "3") in [(k, d.get("node")) for k, d in own(ws, changed)]
        assert len(list(jobs_server.output_dir.glob(f"{prefix}_*"))) == 2

        for f in jobs_server.output_dir.glob(f"{prefix}_*"):  # outputs gone: the cache cannot serve them
            f.unlink()
        rerun = await jobs_server.queue_prompt(invert_prompt(0x102030, prefix), client)
        await ws.wait_done(rerun)
        assert ("executing", "3") in [(k, d.get("node")) for k, d in own(ws, rerun)]
        assert len(list(jobs_server.output_dir.glob(f"{prefix}_*"))) == 1
    finally:
        await ws.close()


async def test_a_changed_input_file_runs_again(jobs_server: JobsServer, no_leaks) -> None:
    client = f"cache-{uuid.uuid4().hex[:6]}"
    name = f"cache_{uuid.uuid4().hex[:6]}.png"
    jobs_server.input_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 0, 0)).save(jobs_server.input_dir / name)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    ws = await jobs_server.ws(client)
    try:
        first = await jobs_server.queue_prompt(prompt, client)
        await ws.wait_done(first)
        same = await jobs_server.queue_prompt(prompt, client)
        await ws.wait_done(same)
        assert "executing" not in [k for k, d in own(ws, same) if d.get("node")]
        Image.new("RGB", (8, 8), (0, 0, 200)).save(jobs_server.input_dir / name)  # IS_CHANGED: a new hash
        changed = await jobs_server.queue_prompt(prompt, client)
        await ws.wait_done(changed)
        assert ("executing", "2") in [(k, d.get("node")) for k, d in own(ws, changed)]
    finally:
        await ws.close()


async def test_empty_prompt_has_no_outputs(jobs_server: JobsServer) -> None:
    status, body = await jobs_server.call("POST", "/prompt", json={"prompt": {}})
    assert status == 400
    assert body == {
        "error": {
            "type": "prompt_no_outputs",
            "message": "Prompt has no outputs",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {},
    }


async def test_jobs_api_lists_filters_and_pages(jobs_server: JobsServer, no_leaks) -> None:
    client = f"jobs-{uuid.uuid4().hex[:6]}"
    ws = await jobs_server.ws(client)
    ids = []
    try:
        for i in range(3):
            ids.append(
                await jobs_server.queue_prompt(invert_prompt(0x203040 + i, f"jobsapi_{client}"), client)
            )
            await ws.wait_done(ids[-1])
    finally:
        await ws.close()

    status, listing = await jobs_server.call("GET", "/api/jobs?status=completed,failed,cancelled")
    assert status == 200
    total = listing["pagination"]["total"]
    assert listing["pagination"] == {"offset": 0, "limit": None, "total": total, "has_more": False}
    times = [j["create_time"] for j in listing["jobs"]]
    assert times == sorted(times, reverse=True)  # newest first
    mine = [j for j in listing["jobs"] if j["id"] in ids]
    assert [j["id"] for j in mine] == ids[::-1]
    job = mine[0]
    assert (
        job["status"] == "completed" and job["outputs_count"] == 1 and job["previewable_outputs_count"] == 1
    )
    assert job["preview_output"]["nodeId"] == "3" and job["preview_output"]["mediaType"] == "images"
    assert job["execution_start_time"] <= job["execution_end_time"]

    pages, offset = [], 0
    while True:
        status, page = await jobs_server.call("GET", f"/api/jobs?status=completed&limit=2&offset={offset}")
        assert status == 200 and len(page["jobs"]) <= 2
        pages += page["jobs"]
        offset += 2
        if not page["pagination"]["has_more"]:
            break
    _, completed = await jobs_server.call("GET", "/api/jobs?status=completed")
    assert [j["id"] for j in pages] == [j["id"] for j in completed["jobs"]]

    status, detail = await jobs_server.call("GET", f"/api/jobs/{ids[0]}")
    assert status == 200 and detail["outputs"]["3"]["images"][0]["type"] == "output"
    assert detail["workflow"]["prompt"]["3"]["class_type"] == "SaveImage"
    assert (await jobs_server.call("GET", f"/api/jobs/{uuid.uuid4()}"))[0] == 404
    assert (await jobs_server.call("GET", "/api/jobs?status=bogus"))[0] == 400
    assert (await jobs_server.call("GET", "/api/jobs?limit=0"))[0] == 400
    status, body = await jobs_server.call("POST", f"/api/jobs/{ids[0]}/cancel")
    assert status == 200 and body == {"cancelled": False}  # finished: nothing to cancel
