"""`comfystream serve` as a real process: its flags, and SIGTERM / SIGINT stopping every stream and
leaving no worker behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from serve_process import serve_process

from bench.trickle_client import create_channel
from server.cli import build_parser
from server.commands import config_from_args
from tests.polling import wait_for
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
    from server.http.listen import MAX_DEFAULT_JOB_WORKERS, default_job_workers

    # One job worker per usable core (so a second job need not queue), a few at most.
    assert (
        defaults.job_workers
        == default_job_workers()
        == min(MAX_DEFAULT_JOB_WORKERS, len(os.sched_getaffinity(0)))
    )
    assert (defaults.host, defaults.port, defaults.relay, defaults.workspace) == (
        "127.0.0.1",
        8000,
        False,
        None,
    )
    for bad in (
        ["--max-streams", "0"],
        ["--gpus", "x"],
        ["--warm-workers", "-1"],
        ["--frame-timeout-s", "0"],
    ):
        with pytest.raises(ValueError):
            config_from_args(build_parser().parse_args(["serve", *bad]))


def test_worker_deadlines_reach_the_workers_backend() -> None:
    """The interrupt grace and the frame timeout are the operator's: flags, down to the backend
    whose supervisors enforce them (streams' and jobs' workers alike)."""
    from server.streams.pipelines import PipelineResources

    args = ["serve", "--interrupt-grace-s", "5", "--frame-timeout-s", "30"]
    settings = PipelineResources(config_from_args(build_parser().parse_args(args))).backend.settings
    assert (settings.interrupt_grace_s, settings.frame_timeout_s) == (5.0, 30.0)
    defaults = PipelineResources(config_from_args(build_parser().parse_args(["serve"]))).backend.settings
    assert (defaults.interrupt_grace_s, defaults.frame_timeout_s) == (2.0, 10.0)


def test_real_model_flags_reach_the_workers_backend(tmp_path: Path) -> None:
    """--preload-prompt (a file of one prompt or a list), --preload-size, --torch-threads,
    --worker-max-rss-mb, --extra-model-paths; a bad one is a usage error (exit 2), not a crash."""
    import json

    from server.config import default_torch_threads
    from server.streams.pipelines import PipelineResources

    one = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
    }
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps([one, one]))
    args = [
        "serve", "--preload-prompt", str(tmp_path / "one.json"), "--preload-prompt", str(tmp_path / "two.json"),
        "--preload-size", "320x240", "--torch-threads", "3", "--worker-max-rss-mb", "6000",
        "--extra-model-paths", "/models.yaml",
    ]  # fmt: skip
    config = config_from_args(build_parser().parse_args(args))
    assert config.preload_prompts == [one, one, one] and config.preload_size == (320, 240)
    assert [str(p) for p in config.extra_model_paths] == ["/models.yaml"]
    settings = PipelineResources(config).backend.settings
    assert settings.preload_prompts == (one, one, one) and settings.preload_size == (320, 240)
    assert (settings.torch_threads, settings.worker_max_rss_mb) == (3, 6000.0)
    defaults = PipelineResources(config_from_args(build_parser().parse_args(["serve"]))).backend.settings
    assert defaults.preload_prompts == () and defaults.worker_max_rss_mb is None
    assert defaults.torch_threads == default_torch_threads(8) >= 1
    assert default_torch_threads(8, cores=2) == 1 and default_torch_threads(1, cores=16) == 16
    assert default_torch_threads(4, cores=16) == 4
    (tmp_path / "bad.json").write_text("{not json")
    for bad in (
        ["--preload-prompt", str(tmp_path / "missing.json")],
        ["--preload-prompt", str(tmp_path / "bad.json")],
        ["--preload-size", "512"],
        ["--preload-size", "0x10"],
        ["--torch-threads", "0"],
        ["--worker-max-rss-mb", "0"],
    ):
        with pytest.raises(ValueError):
            config_from_args(build_parser().parse_args(["serve", *bad]))


def test_shared_weights_are_on_unless_turned_off() -> None:
    from server.streams.pipelines import PipelineResources

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


def test_port_in_use_is_one_line_and_exit_2(free_port: int, tmp_path: Path) -> None:
    """Another server holds the port: one line, status 2, and nothing was started (no worker, no
    'serving on', no traceback)."""
    import socket
    import subprocess
    import sys

    holder = socket.socket()
    holder.bind(("127.0.0.1", free_port))
    holder.listen(1)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port), "--job-workers", "2"],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.close()
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        f"comfystream serve: port {free_port} on 127.0.0.1 is already in use (another server?); "
        "choose another with --port"
    ]
    assert "Traceback" not in done.stderr and "serving on" not in done.stderr
    assert "worker" not in done.stderr.lower()


async def test_access_log_is_quiet_for_reads(free_port: int, tmp_path: Path) -> None:
    """At INFO the pages' polling (GETs that succeed) leaves no access line; a request that
    changes state or fails still does. At DEBUG the reads are there too."""
    import os
    import subprocess
    import sys

    base = f"http://127.0.0.1:{free_port}"
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(free_port),
                "--job-workers",
                "0",
                "--warm-workers",
                "0",
                "--relay",
                "--log-level",
                "INFO",
            ],
            cwd=Path(__file__).resolve().parents[2],
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def up() -> bool:
                try:
                    async with http.get(f"{base}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(up, what="the server")
            for _ in range(3):
                async with http.get(f"{base}/streams") as resp:
                    assert resp.status == 200
            async with http.post(f"{base}/stream/start", json={"subscribe_url": "nope"}) as resp:
                assert resp.status == 400
            async with http.get(f"{base}/stream/missing") as resp:
                assert resp.status == 404
            async with http.post(f"{base}/trickle/chan") as resp:  # the relay's own traffic
                assert resp.status == 200
            async with http.get(f"{base}/trickle/nochan/0") as resp:
                assert resp.status == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    text = log.read_text()
    assert "serving on" in text
    assert '"POST /stream/start HTTP/1.1" 400' in text
    assert '"GET /stream/missing HTTP/1.1" 404' in text
    assert "GET /streams" not in text and "GET /health" not in text
    assert '"POST /trickle/' not in text and '"GET /trickle/' not in text


def test_a_host_that_does_not_resolve_is_one_line(capsys) -> None:
    from server.cli import main

    assert main(["serve", "--host", "nosuchhost.invalid", "--no-auth", "--job-workers", "0"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(
        "comfystream serve: cannot listen on nosuchhost.invalid: the name does not resolve"
    )
