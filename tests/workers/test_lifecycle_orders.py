"""A supervised worker leaves nothing behind in any order of events (stop during start, stop during
restart, restart during stop, crash during stop), and a restart or a crash takes a warm worker
from the pool. (The restart policy's own tests: test_state_machines.py.)"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import threading

import pytest

from comfystream.pipeline.backend import ChannelSpec, WorkerLost, WorkerSpec
from comfystream.prompts import DEFAULT_PROMPT
from tests.processes import alive
from tests.waiting import eventually
from workers import process as workers_process
from workers.backend import ProcessPoolBackend

# A start on a loaded machine may take a while.
_until = functools.partial(eventually, timeout=120.0, interval=0.02)

class Listener:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.lost: list[int] = []

    def on_result(self, *args: object) -> None:
        pass

    def on_lost(self, frame_ids: list[int], reason: str) -> None:
        self.lost += frame_ids

    def on_ready(self) -> None:
        pass

    def on_event(self, event_type: str, data: dict) -> None:
        self.events.append(event_type)


def _channel() -> ChannelSpec:
    return ChannelSpec("c", 64, 48, [DEFAULT_PROMPT], warmup_frames=0)




async def test_stops_in_every_order_leave_no_process(no_leaks, tmp_path):
    backend = ProcessPoolBackend(gpus=[], graceful_stop_s=1.0)

    # Custom nodes that load while `hold` exists: a stop comes while a process starts, however
    # fast a start is.
    hold = tmp_path / "hold"
    nodes = tmp_path / "nodes"
    (nodes / "held_nodes").mkdir(parents=True)
    (nodes / "held_nodes" / "__init__.py").write_text(
        f"import os, time\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.02)\nNODE_CLASS_MAPPINGS = {{}}\n"
    )
    held = WorkerSpec(custom_node_dirs=(str(nodes),))

    # Stop during start: the process being spawned is stopped with the worker.
    hold.touch()
    worker = backend.create_worker(held, "stop-during-start")
    starting = asyncio.create_task(worker.start())
    assert await _until(lambda: worker._task is not None)
    await asyncio.sleep(0.3)  # the spawn is under way
    await worker.stop()
    with pytest.raises(WorkerLost):
        await starting
    assert worker.state == "stopped" and worker.proc is None

    # Stop during restart (restart-worker, then DELETE a moment later).
    hold.unlink()
    worker = backend.create_worker(held, "stop-during-restart")
    await worker.start()
    await worker.open_channel(_channel(), Listener())
    first = worker.pid
    hold.touch()
    restarting = asyncio.create_task(worker.restart("requested"))
    await asyncio.sleep(0.3)
    await worker.stop()
    with pytest.raises(WorkerLost):
        await restarting
    assert first is not None and not alive(first)
    hold.unlink()

    # Restart during stop: refused, and the stop completes.
    worker = backend.create_worker(WorkerSpec(), "restart-during-stop")
    await worker.start()
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    with pytest.raises(WorkerLost):
        await worker.restart("requested")
    await stopping

    # Crash during stop: the stop still ends with the process reaped, and no restart follows.
    worker = backend.create_worker(WorkerSpec(), "crash-during-stop")
    listener = Listener()
    await worker.start()
    await worker.open_channel(_channel(), listener)
    pid = worker.pid
    assert pid is not None
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    os.kill(pid, signal.SIGKILL)
    await stopping
    assert worker.state == "stopped" and "worker_restarting" not in listener.events
    await backend.shutdown()
    # no_leaks: no process and no ring segment is left.


async def test_restart_and_crash_take_a_warm_worker(no_leaks):
    backend = ProcessPoolBackend(gpus=[], warm_workers=1)
    await backend.start()
    pool = backend.pool
    assert pool is not None
    worker = backend.create_worker(WorkerSpec(), "warm-restarts")
    try:
        await worker.start()
        await worker.open_channel(_channel(), Listener())
        for how in ("restart-worker", "SIGKILL"):
            await pool.wait_full(timeout=120)
            (warm,) = pool._idle
            old = worker.pid
            assert old is not None and old != warm.pid
            if how == "restart-worker":
                await worker.restart("requested")
            else:
                os.kill(old, signal.SIGKILL)
                assert await _until(lambda old=old: worker.state == "ready" and worker.pid != old), (
                    worker.status()
                )
            assert worker.pid == warm.pid, f"{how}: the warm worker takes over"
            assert worker.channels["c"].open
            assert await _until(lambda old=old: not alive(old)), f"{how}: the old worker is gone"
        assert worker.restarts == 2
    finally:
        await worker.stop()
        await backend.shutdown()


async def test_a_start_cancelled_while_its_process_spawns_still_stops_that_process(no_leaks):
    """Cancelled in its first moment (the spawn still running in its thread), a start stops the
    process it made: the pid that process says first is read, so the stop can signal it (the
    stream's DELETE right after its start once waited 15 s here, and could not signal it)."""
    backend = ProcessPoolBackend(gpus=[], graceful_stop_s=1.0)
    # The spawner thread is busy (another worker's spawn): this spawn waits its turn there.
    busy = threading.Event()
    workers_process._spawner.submit(busy.wait, 30)
    spawning = asyncio.create_task(backend.spawn_process(WorkerSpec(), "cancelled-spawn"))

    def registered() -> list:
        with workers_process._live_lock:
            return [p for p in workers_process._live if p.name.startswith("cancelled-spawn")]

    try:
        assert await _until(lambda: registered() != [])
        (proc,) = registered()
        spawning.cancel()
        await asyncio.sleep(0.1)  # the cancel reaches the start, still waiting for the spawner
    finally:
        busy.set()  # now the process is spawned, after its start was cancelled
    with pytest.raises(asyncio.CancelledError):
        await spawning
    # The stop signalled it (without its pid it could not, and waited for it to go by itself).
    assert proc.state == "stopped" and proc.exitcode == -signal.SIGTERM, proc.status()
    assert not alive(proc.pid)
    await backend.shutdown()


async def test_a_start_cancelled_twice_while_its_process_spawns_still_stops_and_reaps_it(
    no_leaks, monkeypatch
):
    """A second cancel while the start waits out its spawn (a stream's DELETE racing its
    restart-worker) neither abandons the process being spawned nor is swallowed: the process is
    stopped, and the fds its handle held (pipes, pidfd) are all closed again."""
    backend = ProcessPoolBackend(gpus=[], graceful_stop_s=1.0)
    in_spawn, release = threading.Event(), threading.Event()
    pinned = workers_process.pinned_environment

    def held(config):  # the spawner thread is inside this worker's spawn until released
        in_spawn.set()
        release.wait(30)
        return pinned(config)

    monkeypatch.setattr(workers_process, "pinned_environment", held)
    fds_before = len(os.listdir("/proc/self/fd"))
    spawning = asyncio.create_task(backend.spawn_process(WorkerSpec(), "twice-cancelled"))
    try:
        assert await _until(in_spawn.is_set)
        with workers_process._live_lock:
            (proc,) = [p for p in workers_process._live if p.name.startswith("twice-cancelled")]
        for _ in range(2):
            spawning.cancel()
            await asyncio.sleep(0.1)
        assert not spawning.done()  # it waits for the spawn it cannot call off
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await spawning
    assert proc.state == "stopped" and proc.pid is not None, proc.status()
    assert not alive(proc.pid)
    assert await _until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before), os.listdir("/proc/self/fd")
    await backend.shutdown()


async def test_a_backend_shut_down_while_a_warm_worker_preloads_stops_that_worker(no_leaks, tmp_path):
    """The warm pool's stop cancels a spawn task that is past the spawn, waiting for the worker to
    load and warm up the operator's prompt (--preload-prompt): that worker is stopped, not left
    running with nobody to take it (a stopped test server left its /dev/shm weights directory)."""
    hold = tmp_path / "hold"
    nodes = tmp_path / "nodes" / "held_preload"
    nodes.mkdir(parents=True)
    (nodes / "__init__.py").write_text(
        "import os, time\n"
        "class HoldWhileFile:\n"
        "    RETURN_TYPES = ('IMAGE',)\n"
        "    FUNCTION = 'run'\n"
        "    CATEGORY = 'tests'\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {'image': ('IMAGE',), 'path': ('STRING', {'default': ''})}}\n"
        "    def run(self, image, path):\n"
        "        open(path + '.entered', 'w').close()\n"
        "        while os.path.exists(path):\n"
        "            time.sleep(0.02)\n"
        "        return (image,)\n"
        "NODE_CLASS_MAPPINGS = {'HoldWhileFile': HoldWhileFile}\n"
    )
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "HoldWhileFile", "inputs": {"image": ["1", 0], "path": str(hold)}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    hold.touch()
    backend = ProcessPoolBackend(
        gpus=[],
        custom_node_dirs=[str(nodes.parent)],
        warm_workers=1,
        preload_prompts=(prompt,),
        preload_size=(32, 32),
        graceful_stop_s=1.0,
    )
    starting = asyncio.create_task(backend.start())  # returns once the pool is full, or stopped
    try:
        assert await _until(lambda: (tmp_path / "hold.entered").exists()), "the preload never ran"
        with workers_process._live_lock:
            (proc,) = [p for p in workers_process._live if p.name.startswith("warm")]
        await backend.shutdown()
        await starting
        assert proc.state == "stopped", proc.status()
        assert not alive(proc.pid)
    finally:
        hold.unlink(missing_ok=True)
