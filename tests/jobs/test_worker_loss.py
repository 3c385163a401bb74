"""A job worker killed mid-job: that job ends as an error for its client, the worker comes back,
and the next job runs. Its own one-worker server (the shared one must keep its two workers)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from server.jobs import JOB_SETTINGS_KEY
from server.jobs.scheduler import JOB_SCHEDULER_KEY

from .conftest import NODE_PACKAGE, WAIT_S, JobsServer, gated_prompt

pytestmark = pytest.mark.asyncio(loop_scope="function")


@pytest_asyncio.fixture
async def one_worker_server(tmp_path, no_leaks) -> AsyncIterator[JobsServer]:
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    shutil.copy(NODE_PACKAGE, nodes / NODE_PACKAGE.name)
    (tmp_path / "gates").mkdir()
    config = ServerConfig(
        custom_nodes=[nodes], job_workers=1, input_dir=tmp_path / "input", output_dir=tmp_path / "output"
    )
    app = create_app(config)
    app[JOB_SETTINGS_KEY] = replace(app[JOB_SETTINGS_KEY], job_workers=1)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    await app[JOB_SCHEDULER_KEY].wait_ready(180)
    async with aiohttp.ClientSession() as http:
        jobs = JobsServer(
            app, str(server.make_url("")).rstrip("/"), http, tmp_path, config.input_dir, config.output_dir
        )
        yield jobs
    for gate in jobs.gates:
        gate.touch()
    await server.close()


async def test_killed_worker_fails_its_job_and_comes_back(one_worker_server: JobsServer):
    jobs = one_worker_server
    (worker,) = jobs.app[JOB_SCHEDULER_KEY].workers
    old_pid = worker.pid
    ws = await jobs.ws("client-loss")
    gate = jobs.gate()
    prompt_id = await jobs.queue_prompt(gated_prompt(gate, "loss"), "client-loss")
    await ws.wait_event("executing", prompt_id, node="2")
    os.kill(old_pid, signal.SIGKILL)

    error = await ws.wait_event("execution_error", prompt_id)
    assert "lost" in error["data"]["exception_message"]
    await ws.wait_done(prompt_id)
    entry = await jobs.history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_error"

    for _ in range(int(WAIT_S / 0.05)):
        if worker.state == "ready" and worker.pid not in (None, old_pid):
            break
        await asyncio.sleep(0.05)
    assert worker.state == "ready" and worker.pid != old_pid and worker.restarts == 1
    gate.touch()
    again = await jobs.queue_prompt(gated_prompt(gate, "after-loss"), "client-loss")
    await ws.wait_done(again)
    assert (await jobs.history(again))["status"]["status_str"] == "success"
    await ws.close()
