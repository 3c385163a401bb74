"""Stopping a worker is deterministic: graceful when the worker can leave, SIGKILL when the stop is
cancelled half-way, and a worker that fails to start is reaped without a thread exception."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import threading
from pathlib import Path

import pytest

from comfystream.pipeline.backend import WorkerSpec, WorkerStartError
from comfystream.pipeline.jobs import RunJob
from tests.waiting import eventually
from workers import job_messages as jm
from workers.backend import ProcessPoolBackend

# A node that ignores its cancel token, run from a non-daemon thread that never ends (as a node
# library's own worker thread would be): an interpreter finalising normally waits for it for ever.
STUBBORN_NODES = textwrap.dedent(
    """
    import threading
    import time

    from comfystream.engine.context import current_context


    class StubbornNode:
        RETURN_TYPES = ()
        OUTPUT_NODE = True
        FUNCTION = "run"
        CATEGORY = "test"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def run(self):
            ctx = current_context()
            ctx.emit("progress_text", {"node": "1", "text": "stuck", "prompt_id": ctx.prompt_id})
            threading.Thread(target=time.sleep, args=(3600,), name="node-library-thread", daemon=False).start()
            while True:  # never checks ctx.cancel
                time.sleep(0.05)


    NODE_CLASS_MAPPINGS = {"StubbornNode": StubbornNode}
    """
)

STUBBORN_PROMPT = {"1": {"class_type": "StubbornNode", "inputs": {}}}


async def test_job_worker_stops_gracefully_while_a_node_ignores_its_cancel_token(tmp_path: Path, no_leaks):
    nodes = tmp_path / "stubborn_nodes"
    nodes.mkdir()
    (nodes / "__init__.py").write_text(STUBBORN_NODES)
    backend = ProcessPoolBackend(gpus=[], custom_node_dirs=[str(tmp_path)])
    proc = await backend.spawn_process(WorkerSpec(), "stubborn-job")
    started = asyncio.get_running_loop().create_future()
    proc.on_message = lambda msg: (
        isinstance(msg, jm.JobEvent)
        and msg.event == "progress_text"
        and not started.done()
        and started.set_result(msg)
    )
    try:
        proc.send(RunJob("p1", STUBBORN_PROMPT))
        event = await asyncio.wait_for(started, 60.0)
        assert (event.event, event.data["text"]) == ("progress_text", "stuck")
    finally:
        await proc.stop(graceful_timeout=30.0)
    # 0: it left by itself on the Stop message; a SIGTERM (-15) or SIGKILL (-9) would mean the
    # stop depended on the escalation.
    assert proc.exitcode == 0
    assert proc.state == "stopped"


async def test_a_cancelled_stop_still_takes_the_process_down(no_leaks):
    backend = ProcessPoolBackend(gpus=[])
    fds_before = len(os.listdir("/proc/self/fd"))
    proc = await backend.spawn_process(WorkerSpec(), "frozen")
    pid = proc.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # it cannot answer the Stop message
    stopping = asyncio.get_running_loop().create_task(proc.stop(graceful_timeout=600.0))
    for _ in range(100):  # until the Stop message is out and the graceful wait began
        await asyncio.sleep(0.01)
        if proc.state == "stopping":
            break
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert proc.state == "stopped"
    # no_leaks checks that the frozen process is gone (SIGKILL needs no cooperation).
    # Once it is, what the handle held is released, though nobody waits for it any more: the
    # executor's thread and pipes, the pidfd.
    assert await eventually(lambda: len(os.listdir("/proc/self/fd")) <= fds_before), os.listdir("/proc/self/fd")
    assert await eventually(lambda: not any(t.name.startswith(proc.name) for t in threading.enumerate()))


async def test_a_worker_that_fails_to_start_is_reaped_before_the_error_is_raised(tmp_path: Path, no_leaks):
    thread_errors: list[threading.ExceptHookArgs] = []
    previous = threading.excepthook
    threading.excepthook = thread_errors.append
    threads_before = set(threading.enumerate())
    try:
        backend = ProcessPoolBackend(gpus=[], workspace=str(tmp_path / "nowhere"), startup_timeout_s=60.0)
        with pytest.raises(WorkerStartError, match="does not exist"):
            await backend.spawn_process(WorkerSpec(), "no-workspace")
        # The executor's threads are joined (it joined the process) before the error is raised.
        # (The loop's default executor may have started a thread: placement runs on it.)
        left = {t for t in set(threading.enumerate()) - threads_before if not t.name.startswith("asyncio_")}
        assert left == set()
    finally:
        threading.excepthook = previous
    assert [f"{e.exc_type.__name__}: {e.exc_value}" for e in thread_errors] == []
