"""A worker forks from the template (workers/launch.py) when its import-time environment is the
template's, and then has what a spawned worker would have had: the server's environment and its
stderr as they are at the start, not as they were when the template started; otherwise it is
spawned afresh. Either way its exit code and its stop are the same."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from comfystream.pipeline.backend import WorkerSpec
from tests.processes import is_template
from workers import launch
from workers.backend import ProcessPoolBackend

# Loaded by the worker after it took on its environment and stderr: says what it sees.
REPORTING_NODES = """
import os
import sys

print("worker sees mark=" + str(os.environ.get("COMFYSTREAM_LAUNCH_MARK")), file=sys.stderr, flush=True)
NODE_CLASS_MAPPINGS = {}
"""


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_the_key_is_the_import_time_environment() -> None:
    import torch  # the key reads whether this torch has CUDA

    environ = {
        "HOME": "/root",
        "PATH": "/usr/bin",
        "COMFYSTREAM_INPUT_DIR": "/in",
        "OMP_NUM_THREADS": "2",
        "LD_PRELOAD": "libjemalloc.so",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "1",  # read when CUDA initialises: a forked worker sets it itself
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "PYTORCH_CUDA_ALLOC_CONF": "backend:cudaMallocAsync",  # read when torch's CUDA library loads
    }
    key = launch.import_time(environ)
    assert {"OMP_NUM_THREADS", "LD_PRELOAD", "PYTHONHASHSEED"} <= key.keys()
    assert not {"HOME", "PATH", "COMFYSTREAM_INPUT_DIR", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"} & key.keys()
    cuda_build = torch.version.cuda is not None or torch.version.hip is not None
    assert ("PYTORCH_CUDA_ALLOC_CONF" in key) == cuda_build


def test_a_template_fits_the_environment_it_started_with_only() -> None:
    template = launch.Template()
    assert template.fits({"OMP_NUM_THREADS": "1", "HOME": "/a"})  # the first one fixes the key
    assert template.fits({"OMP_NUM_THREADS": "1", "HOME": "/b", "CUDA_VISIBLE_DEVICES": "3"})
    assert not template.fits({"OMP_NUM_THREADS": "4", "HOME": "/a"})
    assert not template.fits({"HOME": "/a"})


async def test_forked_workers_get_the_servers_environment_and_stderr_of_their_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], no_leaks
) -> None:
    nodes = tmp_path / "nodes"
    (nodes / "reporting_nodes").mkdir(parents=True)
    (nodes / "reporting_nodes" / "__init__.py").write_text(REPORTING_NODES)
    backend = ProcessPoolBackend(gpus=[], custom_node_dirs=[str(nodes)])
    procs = []
    try:
        first = await backend.spawn_process(WorkerSpec(), "first")  # starts the template if need be
        procs.append(first)
        assert first.pid is not None
        template = parent_of(first.pid)
        assert is_template(template) and parent_of(template) == os.getpid()

        # Set after the template started: a spawned worker would have it, so a forked one has it.
        mark = uuid.uuid4().hex
        monkeypatch.setenv("COMFYSTREAM_LAUNCH_MARK", mark)
        capfd.readouterr()
        second = await backend.spawn_process(WorkerSpec(), "second")
        procs.append(second)
        assert second.pid is not None and parent_of(second.pid) == template
        assert f"worker sees mark={mark}" in capfd.readouterr().err  # our stderr, as it is now

        # Another import-time environment: spawned afresh, with that environment from exec on.
        monkeypatch.setenv("OMP_NUM_THREADS", "3" if os.environ.get("OMP_NUM_THREADS") != "3" else "2")
        third = await backend.spawn_process(WorkerSpec(), "third")
        procs.append(third)
        assert third.pid is not None and parent_of(third.pid) == os.getpid()
        assert f"worker sees mark={mark}" in capfd.readouterr().err

        # Exit codes as before, whoever reaps the process: a forked worker killed by a signal
        # (the template reaps it) and a spawned one (its executor does).
        second.kill(signal.SIGKILL)
        third.kill(signal.SIGKILL)
        for proc in (second, third):
            await proc.stop(graceful_timeout=0.0)
            assert proc.state == "stopped" and proc.exitcode == -signal.SIGKILL, proc.status()
        await first.stop()
        assert first.exitcode == 0
    finally:
        for proc in procs:
            await proc.stop(graceful_timeout=0.0)
        await backend.shutdown()
