"""`comfystream serve` as a real process: its flags, and SIGTERM / SIGINT stopping every stream and
leaving no worker behind."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from serve_process import serve_process

from server.cli import build_parser
from server.commands import config_from_args
from server.trickle_client import create_channel
from tests.processes import alive


def test_serve_flags() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "9001",
            "--custom-nodes",
            "/a",
            "--custom-nodes",
            "/b",
            "--max-streams",
            "3",
            "--warm-workers",
            "1",
            "--gpus",
            "0,1",
            "--relay",
            "--log-level",
            "DEBUG",
        ]
    )
    config = config_from_args(args)
    assert (config.host, config.port, config.max_streams, config.warm_workers) == ("127.0.0.1", 9001, 3, 1)
    assert [str(p) for p in config.custom_nodes] == ["/a", "/b"]
    assert config.gpus == [0, 1] and config.relay is True and config.log_level == "DEBUG"
    defaults = config_from_args(build_parser().parse_args(["serve"]))
    assert (defaults.host, defaults.port, defaults.relay, defaults.workspace) == (
        "127.0.0.1",
        8000,
        False,
        None,
    )
    for bad in (["--max-streams", "0"], ["--gpus", "x"], ["--warm-workers", "-1"], ["--frame-timeout-s", "0"]):
        with pytest.raises(ValueError):
            config_from_args(build_parser().parse_args(["serve", *bad]))


def test_worker_deadlines_reach_the_workers_backend() -> None:
    """The interrupt grace and the frame timeout are the operator's: flags, down to the backend
    whose supervisors enforce them (streams' and jobs' workers alike)."""
    from server.pipelines import PipelineResources

    args = ["serve", "--interrupt-grace-s", "5", "--frame-timeout-s", "30"]
    settings = PipelineResources(config_from_args(build_parser().parse_args(args))).backend.settings
    assert (settings.interrupt_grace_s, settings.frame_timeout_s) == (5.0, 30.0)
    defaults = PipelineResources(config_from_args(build_parser().parse_args(["serve"]))).backend.settings
    assert (defaults.interrupt_grace_s, defaults.frame_timeout_s) == (2.0, 10.0)


def test_shared_weights_are_on_unless_turned_off() -> None:
    from server.pipelines import PipelineResources

    def backend_settings(*flags: str):
        return PipelineResources(config_from_args(build_parser().parse_args(["serve", *flags]))).backend.settings

    assert (backend_settings().shared_weights, backend_settings().shared_weights_holder) == (True, "off")
    assert backend_settings("--no-shared-weights").shared_weights is False
    assert backend_settings("--shared-weights-gpu").shared_weights_holder == "cuda"




@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_streams_and_workers(no_leaks, free_port: int, sig: signal.Signals) -> None:
    base = f"http://127.0.0.1:{free_port}"
    # The default warm worker: the stream takes it, so its refill is a spawn likely in flight at
    # the signal, which shutdown cancels (the half-started process stopped, nothing left).
    args = ("--relay",)
    async with serve_process(free_port, *args) as (proc, _), aiohttp.ClientSession() as http:
        await create_channel(f"{base}/trickle/sig-in")
        body = {
            "subscribe_url": f"{base}/trickle/sig-in",
            "publish_url": f"{base}/trickle/sig-out",
            "gateway_request_id": "sig",
            "params": {"width": 64, "height": 64},
        }
        async with http.post(f"{base}/stream/start", json=body) as resp:
            assert resp.status == 200, await resp.text()
        deadline = time.monotonic() + 60
        while True:
            async with http.get(f"{base}/stream/sig/worker") as resp:
                worker = (await resp.json())["worker"]
            if worker and worker.get("pid") and worker.get("state") not in (None, "starting"):
                break
            assert time.monotonic() < deadline, f"worker not up: {worker}"
            await asyncio.sleep(0.1)
        worker_pid = worker["pid"]
        assert alive(worker_pid)
        proc.send_signal(sig)
        assert await asyncio.to_thread(proc.wait, 30) == 0
        assert not alive(worker_pid)


def test_bad_workspace_fails_at_start(tmp_path: Path, capsys) -> None:
    from server.cli import main

    assert main(["serve", "--workspace", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().out
    assert main(["serve", "--workspace", str(tmp_path)]) == 2
    assert "is not a ComfyUI workspace" in capsys.readouterr().out
