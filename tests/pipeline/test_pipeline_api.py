"""The pipeline's public surface without a worker: import paths, backend discovery, bad arguments."""

from __future__ import annotations

import importlib.metadata

import pytest

from comfystream.pipeline import (
    Pipeline,
    ProcessPoolPipeline,
    PromptWorkerPipeline,
    UpdateResult,
    get_backend,
)
from comfystream.pipeline.backend import ENTRY_POINT_GROUP, WorkerBackend


def test_module_and_package_import_paths_and_entry_point_backend():
    from comfystream.pipeline.processpool import ProcessPoolPipeline as Seeded

    assert Seeded is ProcessPoolPipeline
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert names.get("default") == "workers.backend:DEFAULT_BACKEND"
    backend = get_backend()
    from workers.backend import DEFAULT_BACKEND

    assert backend is DEFAULT_BACKEND and isinstance(backend, WorkerBackend)
    with pytest.raises(RuntimeError, match="no worker backend"):
        get_backend("no-such-backend")


def test_bad_arguments_are_refused_before_any_worker_starts():
    with pytest.raises(ValueError):
        ProcessPoolPipeline(width=0, height=512)
    with pytest.raises(ValueError):
        Pipeline(width=64, height=64, max_inflight=0)
    with pytest.raises(ValueError):
        PromptWorkerPipeline(width=64, height=64, max_queued=0)


async def test_seed_flags_are_accepted_and_results_serialise():
    pipeline = ProcessPoolPipeline(
        width=64, height=48, stream_id="s", dedicated_worker=True, use_prompt_worker=False
    )
    assert pipeline.stream_id == "s" and pipeline.worker_options == {}
    assert pipeline.stats()["received"] == 0 and pipeline.worker_status() == []
    with pytest.raises(RuntimeError):
        await pipeline.update_prompts({"1": {"class_type": "LoadTensor", "inputs": {}}})
    await pipeline.cleanup()  # never started: nothing to stop
    assert UpdateResult(2, True, False).to_dict() == {
        "prompts_count": 2,
        "parameters_updated": True,
        "warmup_performed": False,
        "restarted": False,
        "switched_only": False,
        "after_frame_id": None,
    }
