"""GPU placement: nvidia-smi (a stand-in here) read without torch, choice by free memory, the
--streams-per-gpu limit, 503 with the reason, and the pinning a spawned worker sees."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from nvidia_smi_standin import install, write_state

from comfystream.pipeline.backend import NoGpuRoom, WorkerSpec
from workers.backend import ProcessPoolBackend
from workers.placement import (
    GpuInfo,
    GpuPlacer,
    GpuQueryError,
    detect_gpus,
    list_gpus,
    parse_gpus,
    query_gpus,
)


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


H200 = {"name": "NVIDIA H200", "memory.total": 143771, "memory.used": 0, "utilization.gpu": 0}


def _gpu(index: int, free: int | str, **extra) -> dict:
    used = 143771 - free if isinstance(free, int) else "[N/A]"
    return {
        **H200,
        "index": index,
        "uuid": f"GPU-{index:04d}",
        "memory.free": free,
        "memory.used": used,
        **extra,
    }


@pytest.fixture
def smi(tmp_path, monkeypatch):
    """A stand-in nvidia-smi first on PATH; returns a function that sets the GPUs it reports."""
    state = install(tmp_path / "bin", [])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return lambda gpus: write_state(state, gpus)


def test_query_reads_nvidia_smi_csv(smi):
    smi([_gpu(0, 1000), _gpu(1, "[N/A]", **{"utilization.gpu": "[Not Supported]"})])
    first, second = query_gpus()
    assert first == GpuInfo("0", "GPU-0000", "NVIDIA H200", 143771, 1000, 0)
    assert second.memory_free_mib is None and second.utilization_pct is None
    assert detect_gpus() == ["0", "1"] and GpuPlacer(None).gpus == ["0", "1"]
    assert [g.to_dict()["memory_total_mib"] for g in list_gpus()] == [143771, 143771]


def test_query_failures_are_errors_not_gpus(smi, tmp_path, monkeypatch):
    # The stand-in, like nvidia-smi, refuses a field it does not know: the parser must never see it.
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,bogus", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and out.stdout.startswith('Field "bogus" is not a valid field to query.')
    fake = tmp_path / "broken" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver.'\nexit 9\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(GpuQueryError, match="exited with 9: NVIDIA-SMI has failed"):
        query_gpus()
    assert list_gpus() == [] and detect_gpus() == []
    assert GpuPlacer(None).acquire() is None, "a broken nvidia-smi means CPU workers"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert query_gpus() == [] and detect_gpus() == []


class _Readings:
    """nvidia-smi's answers and a clock, for the placement state machine."""

    def __init__(self, free: dict[str, int | None]):
        self.free = free
        self.now = 0.0

    def query(self) -> list[GpuInfo]:
        return [GpuInfo(i, f"GPU-{i}", "H200", 143771, f, None) for i, f in self.free.items()]


def test_most_free_memory_wins_and_fresh_placements_count():
    r = _Readings({"0": 40_000, "1": 50_000, "2": 10_000})
    placer = GpuPlacer(["0", "1", "2"], min_free_mib=8_000, settle_s=30.0, query=r.query, clock=lambda: r.now)
    assert placer.acquire() == "1"
    # nvidia-smi does not show the new worker yet: GPU 1 counts as 42,000 free, GPU 0 as 40,000.
    assert placer.acquire() == "1"
    assert placer.acquire() == "0", "two placements on GPU 1 count as 16,000 MiB not yet visible"
    r.now = 31.0  # settled: from now on nvidia-smi's figures alone
    r.free = {"0": 20_000, "1": 25_000, "2": 10_000}
    assert placer.acquire() == "1"
    assert placer.load() == {"0": 1, "1": 3, "2": 0}


def test_no_room_is_refused_with_the_reason_for_each_gpu():
    r = _Readings({"0": 5_000, "1": 90_000})
    placer = GpuPlacer(["0", "1"], streams_per_gpu=2, min_free_mib=8_000, query=r.query, clock=lambda: r.now)
    assert [placer.acquire(), placer.acquire()] == ["1", "1"]
    with pytest.raises(NoGpuRoom) as refused:
        placer.check_room()
    text = str(refused.value)
    assert "GPU 1 runs 2 of 2 workers (--streams-per-gpu)" in text
    assert "GPU 0 has 5000 MiB free of 143771 MiB" in text and "needs 8000 MiB" in text
    with pytest.raises(NoGpuRoom):
        placer.acquire()
    assert placer.load() == {"0": 0, "1": 2}, "a refused placement holds nothing"
    placer.release("1")
    placer.check_room()
    assert placer.acquire() == "1"


def test_without_memory_figures_the_least_loaded_gpu_wins():
    r = _Readings({"0": None, "1": None})  # [N/A], as under MIG
    placer = GpuPlacer(["0", "1"], query=r.query)
    assert [placer.acquire() for _ in range(3)] == ["0", "1", "0"]
    # One GPU without a figure: memory cannot be compared, so worker counts decide.
    r = _Readings({"0": 100_000, "1": None})
    placer = GpuPlacer(["0", "1"], query=r.query)
    assert [placer.acquire() for _ in range(3)] == ["0", "1", "0"]


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


async def test_stream_start_gets_503_with_the_reason_when_no_gpu_has_room(smi, no_leaks):
    import aiohttp
    from aiohttp.test_utils import TestServer

    from server.app import create_app
    from server.config import ServerConfig

    smi([_gpu(0, 600), _gpu(1, 900)])  # both nearly full: under the 1024 MiB a worker needs
    server = TestServer(create_app(ServerConfig(job_workers=0, streams_per_gpu=4)), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"subscribe_url": "http://127.0.0.1:9/in", "publish_url": "http://127.0.0.1:9/out"}
            async with http.post(server.make_url("/stream/start"), json=body) as resp:
                assert resp.status == 503
                error = await resp.json()
            assert error["error"] == "No GPU has room"
            assert (
                "GPU 0 has 600 MiB free" in error["message"] and "GPU 1 has 900 MiB free" in error["message"]
            )
            # A WebRTC offer is refused the same way, before its SDP is even used.
            offer = {"offer": {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}}
            async with http.post(server.make_url("/offer"), json=offer) as resp:
                assert resp.status == 503 and (await resp.json())["error"] == "No GPU has room"
            async with http.get(server.make_url("/streams")) as resp:
                assert (await resp.json())["streams"] == [], "a refused start leaves nothing behind"
    finally:
        await server.close()


def test_serve_flags_reach_the_placer(smi):
    from server.cli import build_parser
    from server.commands import config_from_args
    from server.streams.pipelines import PipelineResources

    args = build_parser().parse_args(["serve", "--streams-per-gpu", "3", "--gpu-min-free-mib", "4096"])
    config = config_from_args(args)
    assert (config.streams_per_gpu, config.gpu_min_free_mib) == (3, 4096)
    smi([_gpu(0, 5000)])
    placer = PipelineResources(config).backend.placer
    assert (placer.gpus, placer.streams_per_gpu, placer.min_free_mib) == (["0"], 3, 4096)
    assert placer.acquire() == "0"
    with pytest.raises(NoGpuRoom, match="needs 4096 MiB"):
        placer.acquire()  # 5000 free, less the 4096 the first worker will take
    for bad in (["--streams-per-gpu", "0"], ["--gpu-min-free-mib", "-1"]):
        with pytest.raises(ValueError):
            config_from_args(build_parser().parse_args(["serve", *bad]))
