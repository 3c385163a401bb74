"""The GPU design of shared weights (workers/shared_weights_cuda.py) up to the device boundary:
a real holder process and real worker processes, with `HostDevice` (shared host memory, written
through as GPU memory is) where a GPU would use `CudaIpcDevice`."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.polling import wait_for
from tests.workers.test_shared_weights import (  # noqa: F401 (fixtures)
    RUN_PREFIX,
    frames,
    make_backend,
    open_stream,
    prompt,
    roundtrip,
    shm_root,
    video_frame,
    weights_file,
)
from tests.workers.test_shared_weights import expected as expected_frame
from workers.launch import FORKSERVER
from workers.shared_weights_cuda import DeviceSharedWeights, Holder, HostDevice, serve_holder

pytestmark = pytest.mark.timeout(120)

# The holder and workers of the first tests are forked from the workers' template (torch already
# imported there: a spawned process would pay that import again, a second of CPU each); the
# backend's own holder, further down, is spawned as in production.
CHILDREN = FORKSERVER


def build(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.inference_mode():
        return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 8))


def _holder_main(address: str, directory: str, ready) -> None:
    serve_holder(address, HostDevice(torch, directory), ready)


def _worker_main(address: str, directory: str, seed: int, conn) -> None:
    """A worker: builds its model, shares it through the holder, answers `run` and `patch`."""
    model = build(seed)
    shared = DeviceSharedWeights(torch, address, HostDevice(torch, directory))
    result = shared.share_module(model, device_type="cpu")
    conn.send((os.getpid(), result.filled, result.tensors))
    x = torch.linspace(-1, 1, 256)
    while True:
        msg = conn.recv()
        if msg == "run":
            with torch.inference_mode():
                conn.send(model(x).tolist())
        elif msg == "release":
            shared.release(result.key)
            conn.send("ok")
        elif msg == "stop":
            shared.close()
            return


@pytest.fixture
def holder(tmp_path: Path):
    directory = tmp_path / "device"
    directory.mkdir()
    address = str(tmp_path / "holder.sock")
    ready = CHILDREN.Event()
    proc = CHILDREN.Process(target=_holder_main, args=(address, str(directory), ready), daemon=True)
    proc.start()
    try:
        assert ready.wait(60)
        yield address, directory
    finally:
        proc.kill()
        proc.join(10)


class Worker:
    def __init__(self, address: str, directory: Path, seed: int = 1):
        self.conn, child = CHILDREN.Pipe()
        self.proc = CHILDREN.Process(
            target=_worker_main, args=(address, str(directory), seed, child), daemon=True
        )
        self.proc.start()
        child.close()
        assert self.conn.poll(60)
        self.pid, self.filled, self.tensors = self.conn.recv()

    def run(self) -> list[float]:
        self.conn.send("run")
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.conn.send("stop")
        self.proc.join(10)
        self.conn.close()


def holder_status(address: str) -> dict:
    from multiprocessing.connection import Client

    with Client(address, family="AF_UNIX") as conn:
        conn.send(("status",))
        return conn.recv()[1]


def expected(seed: int) -> list[float]:
    with torch.inference_mode():
        return build(seed)(torch.linspace(-1, 1, 256)).tolist()


def test_workers_hold_one_allocation_and_a_killed_one_releases_its_hold(holder):
    address, directory = holder
    first = Worker(address, directory)
    second = Worker(address, directory)
    try:
        assert first.filled and not second.filled  # the first filled it, the second opened it
        assert first.tensors == second.tensors == 2  # the weights (the biases are under a page)
        (key,) = status = holder_status(address)
        assert status[key][1:] == (2, True)  # two holders, filled
        assert len(list(directory.iterdir())) == 1  # one allocation on the "device"
        assert first.run() == second.run() == expected(1)

        os.kill(first.pid, signal.SIGKILL)
        first.proc.join(10)
        # Its connection closed with it: the holder lets go of its hold, not of the allocation.
        wait_for_sync(lambda: holder_status(address)[key][1] == 1)
        assert second.run() == expected(1)
        third = Worker(address, directory)  # a restarted worker opens the same allocation
        assert not third.filled and third.run() == expected(1)
        third.stop()
    finally:
        first.stop()
        second.stop()
    # The last holder gone: the allocation is freed.
    wait_for_sync(lambda: holder_status(address) == {})
    assert list(directory.iterdir()) == []


def test_other_weights_get_their_own_allocation_and_release_frees_it(holder):
    address, directory = holder
    a, b = Worker(address, directory, seed=1), Worker(address, directory, seed=2)
    try:
        assert a.filled and b.filled
        assert len(holder_status(address)) == 2
        assert a.run() == expected(1) and b.run() == expected(2)
        b.conn.send("release")
        assert b.conn.recv() == "ok"
        assert len(holder_status(address)) == 1
        assert len(list(directory.iterdir())) == 1
    finally:
        a.stop()
        b.stop()


def test_a_worker_gone_while_filling_hands_the_fill_to_the_next(tmp_path):
    """The holder's state machine alone, with real pipes: a filler that disappears before
    `filled` leaves partial contents; the worker that was waiting fills it instead."""
    holder = Holder(HostDevice(torch, tmp_path))
    filler, filler_far = multiprocessing.Pipe()
    waiter, waiter_far = multiprocessing.Pipe()
    holder.handle(1, filler, ("get", "k", 4096))
    assert filler_far.recv()[0] == "fill"
    holder.handle(2, waiter, ("get", "k", 4096))
    assert not waiter_far.poll(0.1)  # waits for the fill
    holder.disconnected(1)
    kind, handle = waiter_far.recv()
    assert kind == "fill"
    holder.handle(2, waiter, ("filled", "k"))
    assert holder.allocations["k"].filled and holder.allocations["k"].holders == {2}
    holder.disconnected(2)
    assert holder.allocations == {} and list(tmp_path.iterdir()) == []


def wait_for_sync(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- through the server's backend: streams of real workers, the holder spawned by the backend --------


async def test_streams_share_through_their_gpus_holder(no_leaks, shm_root, weights_file):  # noqa: F811
    backend = make_backend(shm_root, shared_weights_holder="host")
    pipelines = []
    try:
        for name in ("a", "b"):
            pipelines.append(await open_stream(backend, name, prompt(weights_file)))
        a, b = pipelines
        (run,) = (p for p in shm_root.glob(f"{RUN_PREFIX}*") if p.is_dir())
        address = str(run / "holder-host.sock")
        (key,) = status = holder_status(address)
        assert status[key][1:] == (2, True)  # one allocation, both workers hold it
        assert list(run.glob("*.weights")) == []  # not the file mechanism: the holder's
        for i, rgb in enumerate(frames(2, seed=11)):
            for pipeline in pipelines:
                np.testing.assert_array_equal(
                    await roundtrip(pipeline, rgb, i), expected_frame(weights_file, rgb)
                )

        first_pid = a.worker_status()[0]["pid"]
        os.kill(first_pid, signal.SIGKILL)
        wait_for_sync(lambda: holder_status(address)[key][1] == 1)
        rgb = frames(1, seed=12)[0]
        want = expected_frame(weights_file, rgb)  # once: it loads the 128 MiB file
        np.testing.assert_array_equal(await roundtrip(b, rgb, 10), want)

        async def processed() -> bool:
            await a.put_video_frame(video_frame(rgb, 100))
            out = await asyncio.wait_for(a.get_processed_video_frame(), 60)
            return np.array_equal(out.to_ndarray(format="rgb24"), want)

        await wait_for(processed, timeout=120, what="a processed frame from the new worker")
        assert holder_status(address)[key][1] == 2  # the new worker opened the same allocation
    finally:
        for pipeline in pipelines:
            await pipeline.cleanup()
        await backend.shutdown()
    assert list(shm_root.iterdir()) == []  # the holder stopped with the directory, its memory with it
