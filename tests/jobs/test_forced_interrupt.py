"""An interrupt works on any node: a job whose node never checks its cancel token is still running
`interrupt_grace_s` after POST /interrupt, so its worker is killed and replaced; for ComfyUI
clients the job ends exactly as a cooperative interrupt ends it, and the other job runs on."""

from __future__ import annotations

import asyncio

import pytest

from server.jobs.scheduler import JOB_SCHEDULER_KEY
from tests.processes import alive

from .conftest import WAIT_S, JobsServer, gated_prompt

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_a_node_that_ignores_the_interrupt_is_killed_and_the_other_job_runs_on(
    jobs_server: JobsServer,
):  # (not no_leaks: the replacement worker belongs to the shared server; the old one is checked)
    ws = await jobs_server.ws("client-stubborn")
    never, gate_y = jobs_server.gate(), jobs_server.gate()
    stubborn = {
        "1": {"class_type": "TestSolid", "inputs": {"value": 0.5, "size": 8, "tag": "stubborn"}},
        "2": {"class_type": "TestStubborn", "inputs": {"images": ["1", 0], "gate": str(never)}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "stubborn"}},
    }
    x = await jobs_server.queue_prompt(stubborn, "client-stubborn")
    y = await jobs_server.queue_prompt(gated_prompt(gate_y, "beside-stubborn"), "client-stubborn")
    await ws.wait_event("executing", x, node="2")
    await ws.wait_event("executing", y, node="2")
    workers = jobs_server.app[JOB_SCHEDULER_KEY].workers
    (stuck,) = [w for w in workers if w.current == x]
    old_pid = stuck.pid
    assert old_pid is not None

    status, _ = await jobs_server.call("POST", "/interrupt", json={"prompt_id": x})
    assert status == 200
    interrupted = await ws.wait_event("execution_interrupted", x)
    assert interrupted["data"]["node_id"] == "2" and interrupted["data"]["node_type"] == "TestStubborn"
    await ws.wait_done(x)
    entry = await jobs_server.history(x)
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"
    assert not any(m["type"] == "execution_error" and m["data"]["prompt_id"] == x for m in ws.json())

    for _ in range(int(WAIT_S / 0.05)):  # the stuck worker is gone, a new one takes its place
        if not alive(old_pid) and stuck.state == "ready":
            break
        await asyncio.sleep(0.05)
    assert not alive(old_pid) and stuck.state == "ready" and stuck.pid != old_pid, stuck.status()

    running, _ = await jobs_server.queue()
    assert running == [y]  # untouched
    gate_y.touch()
    await ws.wait_done(y)
    assert (await jobs_server.history(y))["status"]["status_str"] == "success"
    never.touch()
    await ws.close()
