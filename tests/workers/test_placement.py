"""GPU placement: detection without torch, least-loaded choice, and the pinning a spawned worker sees."""

from __future__ import annotations

import asyncio
import os
import stat
import sys

import pytest

from comfystream.pipeline.backend import WorkerSpec
from workers.backend import ProcessPoolBackend
from workers.placement import GpuPlacer, detect_gpus, parse_gpus


def test_least_loaded_gpu_gets_the_next_worker():
    placer = GpuPlacer(["0", "1", "2"])
    assert [placer.acquire() for _ in range(4)] == ["0", "1", "2", "0"]
    placer.release("1")
    assert placer.acquire() == "1"
    placer.release("0")
    placer.release("0")
    assert placer.load() == {"0": 0, "1": 1, "2": 1}
    assert placer.acquire() == "0"


def test_no_gpu_means_cpu():
    placer = GpuPlacer([])
    assert placer.acquire() is None
    placer.release(None)
    assert placer.load() == {}


def test_gpus_setting_forms():
    assert parse_gpus("0,1") == ["0", "1"]
    assert parse_gpus([0, "3"]) == ["0", "3"]
    assert parse_gpus("none") == [] and parse_gpus("") == []
    assert parse_gpus(None) is None and parse_gpus("auto") is None
    with pytest.raises(ValueError):
        parse_gpus("0,0")


def test_detection_reads_nvidia_smi(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)"\n'
        'echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert detect_gpus() == ["0", "1"]
    assert GpuPlacer(None).gpus == ["0", "1"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert detect_gpus() == []


def test_detection_does_not_import_torch():
    code = (
        "import sys; from workers.placement import detect_gpus; detect_gpus(); print('torch' in sys.modules)"
    )
    out = os.popen(f'{sys.executable} -c "{code}"').read().strip()
    assert out == "False"


def _exec_environment(pid: int) -> list[str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read().decode(errors="replace").split("\0")


async def test_spawned_workers_see_their_cuda_visible_devices(no_leaks):
    parent_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    backend = ProcessPoolBackend(gpus=["1", "0"])
    try:
        first, second = await asyncio.gather(
            backend.spawn_process(WorkerSpec(), "gpu-a"), backend.spawn_process(WorkerSpec(), "gpu-b")
        )
        assert backend.gpu_load() == {"1": 1, "0": 1}, "each new worker goes to the least-loaded GPU"
        seen = sorted([first.ready.cuda_visible_devices, second.ready.cuda_visible_devices])
        assert seen == ["0", "1"]  # as the worker process itself reports os.environ
        for worker in (first, second):
            # ... and as it was exec'd, before any import (spawn re-imports the server's main module).
            assert f"CUDA_VISIBLE_DEVICES={worker.config.gpu}" in _exec_environment(worker.pid)
        assert os.environ.get("CUDA_VISIBLE_DEVICES") == parent_env, (
            "the server's own environment is untouched"
        )
        assert first.status()["gpu"] == first.ready.cuda_visible_devices
        # This machine has no CUDA: a pinned worker still runs, on the CPU, and says so.
        assert {first.ready.device, second.ready.device} == {"cpu"}
        await first.stop()
        assert backend.gpu_load()[first.config.gpu] == 0
        third = await backend.spawn_process(WorkerSpec(), "gpu-c")
        assert third.config.gpu == first.config.gpu, "the freed GPU is the least loaded again"
        await asyncio.gather(second.stop(), third.stop())
        assert backend.gpu_load() == {"1": 0, "0": 0}
    finally:
        await backend.shutdown()
    cpu_backend = ProcessPoolBackend(gpus="none")
    worker = await cpu_backend.spawn_process(WorkerSpec(), "cpu")
    try:
        assert worker.ready.cuda_visible_devices == "" and worker.ready.device == "cpu"
    finally:
        await worker.stop()
