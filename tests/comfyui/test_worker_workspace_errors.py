"""A worker told to run a missing or broken workspace fails to start with a clear error, and
leaves nothing behind (no ComfyUI needed: the failure comes before ComfyUI would run)."""

from __future__ import annotations

import pytest

from comfystream.pipeline.backend import WorkerSpec, WorkerStartError
from tests.comfyui.conftest import make_fake_workspace
from workers.backend import ProcessPoolBackend


async def start_worker(workspace: str) -> None:
    backend = ProcessPoolBackend(gpus=[], workspace=workspace, startup_timeout_s=60.0)
    try:
        proc = await backend.spawn_process(WorkerSpec(), "workspace-check")
        await proc.stop()
    finally:
        await backend.shutdown()


async def test_missing_workspace(tmp_path, no_leaks):
    with pytest.raises(WorkerStartError, match=f"ComfyUI workspace {tmp_path / 'nowhere'} does not exist"):
        await start_worker(str(tmp_path / "nowhere"))


async def test_broken_comfyui(tmp_path, no_leaks):
    ws = make_fake_workspace(tmp_path / "ws")
    (ws / "comfy" / "__init__.py").write_text("")
    (ws / "comfy" / "cli_args.py").write_text("raise RuntimeError('this ComfyUI is broken')\n")
    with pytest.raises(WorkerStartError) as err:
        await start_worker(str(ws))
    message = str(err.value)
    assert f"ComfyUI from {ws.resolve()} failed to import (comfy.cli_args)" in message
    assert "RuntimeError: this ComfyUI is broken" in message
