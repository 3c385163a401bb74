"""`/hardware/info` and `/hardware/stats` (pytrickle's shapes), on this CPU machine ({}) and with
a stand-in `nvidia-smi` on PATH (no GPU here) that answers `-L` and `--query-gpu` as the real one
does for two H200s, and refuses a field it does not know."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from server.streams.pipelines import PIPELINE_RESOURCES_KEY

FAKE_NVIDIA_SMI = """#!{python}
import sys
GPUS = [
    {{"index": "0", "uuid": "GPU-0a1b", "name": "NVIDIA H200", "memory.total": "143771",
     "memory.free": "140000", "utilization.gpu": "37", "utilization.memory": "12", "compute_cap": "9.0"}},
    {{"index": "1", "uuid": "GPU-2c3d", "name": "NVIDIA H200", "memory.total": "143771",
     "memory.free": "[N/A]", "utilization.gpu": "0", "utilization.memory": "0", "compute_cap": "9.0"}},
]
args = sys.argv[1:]
if args == ["-L"]:
    for g in GPUS:
        print("GPU %s: %s (UUID: %s)" % (g["index"], g["name"], g["uuid"]))
    sys.exit(0)
if len(args) == 2 and args[0].startswith("--query-gpu=") and args[1] == "--format=csv,noheader,nounits":
    fields = args[0].split("=", 1)[1].split(",")
    for f in fields:
        if f not in GPUS[0]:
            print('Field "%s" is not a valid field to query.' % f)
            sys.exit(2)
    for g in GPUS:
        print(", ".join(g[f] for f in fields))
    sys.exit(0)
print("bad arguments", args)
sys.exit(2)
"""


async def _get(server: TestServer, path: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(str(server.make_url(path))) as resp:
        assert resp.status == 200
        return await resp.json()


async def _server(config: ServerConfig) -> TestServer:
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    return server


async def test_cpu_machine_has_no_gpus(no_leaks, monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi at all
    server = await _server(ServerConfig(job_workers=0, gpus=None))
    try:
        info = await _get(server, "/hardware/info")
        assert info == {"pipeline": "byoc", "model_id": "comfystream", "gpu_info": {}}
        assert (await _get(server, "/hardware/stats"))["gpu_stats"] == {}
    finally:
        await server.close()


@pytest.mark.parametrize("gpus", [None, ["1"]])
async def test_gpus_from_nvidia_smi_with_their_workers(no_leaks, monkeypatch, tmp_path: Path, gpus) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(FAKE_NVIDIA_SMI.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(tmp_path))
    server = await _server(ServerConfig(job_workers=0, gpus=gpus))
    try:
        placer = server.app[PIPELINE_RESOURCES_KEY].backend.placer
        placer.acquire()  # two workers placed, as streams would be (least-loaded first)
        placer.acquire()
        info = (await _get(server, "/hardware/info"))["gpu_info"]
        stats = (await _get(server, "/hardware/stats"))["gpu_stats"]
        expected = ["0", "1"] if gpus is None else ["1"]  # only the GPUs workers are placed on
        assert sorted(info) == sorted(stats) == expected
        last = info[expected[-1]]
        assert last == {
            "id": "GPU-2c3d",
            "name": "NVIDIA H200",
            "memory_total": 143771 * 1024 * 1024,
            "memory_free": 0,  # [N/A]
            "major": 9,
            "minor": 0,
            "workers": 1 if gpus is None else 2,
        }
        if gpus is None:
            assert stats["0"]["utilization_compute"] == 37 and stats["0"]["utilization_memory"] == 12
            assert stats["0"]["memory_free"] == 140000 * 1024 * 1024 and stats["0"]["workers"] == 1
        assert set(stats[expected[0]]) == {
            "id",
            "name",
            "memory_total",
            "memory_free",
            "utilization_compute",
            "utilization_memory",
            "workers",
        }
    finally:
        await server.close()
