"""`GET /stream/{id}/workspace-info` with a ComfyUI workspace (`--workspace`): what was loaded, and
each custom node package imported once per process.

The body's shape is checked against a workspace's load report built here; the real workspace runs
when COMFYUI_PATH points at a ComfyUI checkout (skipped otherwise), in a `comfystream serve`
process of its own, as ComfyUI's modules are process-global. Without a workspace:
test_stream_api.py::test_running_stream_endpoints."""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from serve_process import serve_process

from bench.trickle_client import create_channel
from comfystream.comfyui import NodePackageInfo, WorkspaceInfo, comfyui_version
from comfystream.nodes import build_registry
from server.config import ServerConfig
from server.nodes.workspace import describe

NODES = Path(__file__).resolve().parent / "nodes"


def test_describe_a_loaded_workspace(tmp_path: Path) -> None:
    registry = build_registry()
    loaded = WorkspaceInfo(
        workspace_path=str(tmp_path),
        comfyui_version="0.3.64",
        nodes_loaded=len(registry) + 2,
        comfyui_nodes=2,
        packages=[
            NodePackageInfo(
                "nodes_mask", f"{tmp_path}/comfy_extras/nodes_mask.py", "comfy_extras", True, ["A"]
            ),
            NodePackageInfo("good", f"{tmp_path}/custom_nodes/good", "custom_nodes", True, ["B"]),
            NodePackageInfo("bad", f"{tmp_path}/custom_nodes/bad", "custom_nodes", False, error="Boom"),
        ],
        settings={"gpu_only": False, "cpu": True},
    )
    config = ServerConfig(workspace=tmp_path, custom_nodes=[tmp_path / "more"])
    pipeline = {"workspace_path": "/elsewhere", "config_keys": ["cwd", "vram_mode"], "total_workers": 3}
    info = describe(registry, loaded, config, pipeline, worker_count=1)
    assert (info.engine, info.workspace_path, info.comfyui_version) == ("comfyui", str(tmp_path), "0.3.64")
    assert "ComfyUI 0.3.64" in info.message and str(tmp_path) in info.message
    assert (info.nodes_loaded, info.comfyui_nodes) == (len(registry), 2)  # what this registry holds
    assert [(p.name, p.loaded, p.nodes, p.error) for p in info.custom_node_packages] == [
        ("good", True, ["B"], None),
        ("bad", False, [], "Boom"),
    ]
    assert info.load_errors == {f"{tmp_path}/custom_nodes/bad": "Boom"}
    assert info.config_keys == ["cwd", "disable_cuda_malloc", "gpu_only", "preview_method", "vram_mode"]
    assert (info.total_workers, info.active_prompt_id) == (3, None)
    assert info.custom_node_dirs == [str(tmp_path / "more")]  # no custom_nodes/ folder in it


@pytest.fixture(scope="module")
def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        pytest.skip("COMFYUI_PATH is not set (point it at a ComfyUI checkout to run this test)")
    return Path(value).resolve()


def _server_env(tmp_path: Path, import_log: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMFYSTREAM_TEST_IMPORT_LOG": str(import_log)}
    if importlib.util.find_spec("torchvision") is None:  # ComfyUI imports it; a stand-in will do
        from tests.comfyui.torchvision_standin import write_standin

        (tmp_path / "standin").mkdir()
        standin = write_standin(tmp_path / "standin")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(standin), env.get("PYTHONPATH", "")) if p)
    return env


async def test_real_workspace_info_and_custom_nodes_loaded_once(
    no_leaks, comfyui_path: Path, free_port: int, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{free_port}"
    import_log = tmp_path / "imports.log"
    args = ["--workspace", str(comfyui_path), "--custom-nodes", str(NODES), "--relay", "--job-workers", "0"]
    env = _server_env(tmp_path, import_log)
    async with (
        serve_process(free_port, *args, env=env, timeout=180) as (proc, health),
        aiohttp.ClientSession() as http,
    ):
        # One custom node package failed: the server says so.
        assert health["degraded"] is True and health["status"] in ("LOADING", "IDLE")
        assert any(k.endswith("ws_broken_nodes") for k in health["node_load_errors"])

        await create_channel(f"{base}/trickle/ws-in")
        body = {
            "subscribe_url": f"{base}/trickle/ws-in",
            "publish_url": f"{base}/trickle/ws-out",
            "gateway_request_id": "ws",
            "params": {"width": 64, "height": 64},
        }
        async with http.post(f"{base}/stream/start", json=body) as resp:
            assert resp.status == 200, await resp.text()
        deadline = time.monotonic() + 180
        while True:  # the worker loads the workspace too
            async with http.get(f"{base}/stream/ws") as resp:
                stream = await resp.json()
            if stream["state"] == "running":
                break
            assert stream["state"] == "starting" and time.monotonic() < deadline, stream
            await asyncio.sleep(0.2)
        worker_pid = stream["workers"][0]["pid"]
        async with http.get(f"{base}/stream/ws/workspace-info") as resp:
            assert resp.status == 200
            info = (await resp.json())["workspace_info"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0

    assert info["engine"] == "comfyui" and info["workspace_path"] == str(comfyui_path)
    assert info["comfyui_version"] == comfyui_version(comfyui_path)
    assert 0 < info["comfyui_nodes"] < info["nodes_loaded"]
    packages = {p["name"]: p for p in info["custom_node_packages"]}
    assert packages["ws_good_nodes"]["loaded"] and packages["ws_good_nodes"]["nodes"] == ["WsScale"]
    assert not packages["ws_broken_nodes"]["loaded"] and "lacks" in packages["ws_broken_nodes"]["error"]
    assert packages["ws_broken_nodes"]["path"] in info["load_errors"]
    assert info["total_workers"] == 1 and {"cwd", "gpu_only"} <= set(info["config_keys"])
    # --custom-nodes: imported once by the server (ComfyUI's loader only) and once by the worker.
    imports = collections.Counter(import_log.read_text().split())
    assert imports[str(proc.pid)] == 1 and imports[str(worker_pid)] == 1, imports
