"""A real ComfyUI workspace in comfystream: its nodes on a stream, its custom nodes, interrupt, events.

Runs when COMFYUI_PATH points at a ComfyUI checkout (skipped otherwise). On a machine without
torchvision a stand-in is put on the path (see README, "Running a ComfyUI workspace").
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from comfystream.comfyui import comfyui_version
from tests.comfyui.conftest import worker_uint8

pytestmark = pytest.mark.comfyui

PROBE = Path(__file__).resolve().parent / "comfyui_probe.py"
WIDTH, HEIGHT, FRAMES = 64, 48, 4


def blur_sharpen_prompt() -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.5}},
        "3": {
            "class_type": "ImageSharpen",
            "inputs": {"image": ["2", 0], "sharpen_radius": 2, "sigma": 1.0, "alpha": 0.5},
        },
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }


@pytest.fixture(scope="module")
def stream_frames() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def probe(comfyui_path, comfyui_env, custom_nodes_dir, stream_frames, tmp_path_factory) -> dict[str, Any]:
    """The engine-level checks, run once in a child process that loads the workspace."""
    tmp = tmp_path_factory.mktemp("probe")
    frames, reference = tmp / "frames.npy", tmp / "reference.npy"
    np.save(frames, stream_frames)
    proc = subprocess.run(
        [sys.executable, str(PROBE), str(comfyui_path), str(custom_nodes_dir), str(frames), str(reference)],
        env=comfyui_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout)
    out["reference"] = np.load(reference)
    return out


def test_comfyui_nodes_give_comfyuis_pixels_in_the_engine(probe):
    assert probe["pixels_equal"] == [True] * FRAMES


def test_workspace_info_reports_nodes_sources_clashes_and_errors(probe, comfyui_path, custom_nodes_dir):
    info = probe["info"]
    assert info["comfyui_version"] == comfyui_version(comfyui_path) is not None
    assert info["sources"] == {
        "LoadTensor": "comfystream",
        "ImageBlur": "comfy_extras/nodes_post_processing.py",
        "CSTestChannelSwap": "custom_nodes/cs_test_nodes",
    }
    assert info["comfyui_nodes"] > 100 and info["nodes_loaded"] >= info["comfyui_nodes"]
    packages = info["custom_node_packages"]
    assert packages["cs_test_nodes"] == {
        "loaded": True,
        "nodes": ["CSTestSamplerPreview", "CSTestChannelSwap", "CSTestSlowProgress", "CSTestPollInterrupt"],
        "skipped": None,
    }
    assert packages["cs_v3_nodes"] == {"loaded": True, "nodes": ["CSTestV3Gain"], "skipped": None}
    assert packages["cs_broken_nodes"]["loaded"] is False
    # comfystream's own package (setup-workspace installs it for ComfyUI's UI) is not loaded again.
    assert packages["comfystream_nodes"]["loaded"] is False and packages["comfystream_nodes"]["skipped"]
    assert not any("comfystream_nodes" in path for path in info["load_errors"])
    broken = str(custom_nodes_dir / "cs_broken_nodes")
    assert "cs_broken_nodes needs a module this environment lacks" in info["load_errors"][broken]
    # The custom package's LoadTensor lost to ours, and the clash is reported.
    assert {
        "name": "LoadTensor",
        "kept": "comfystream",
        "rejected": "custom_nodes/cs_clashing_nodes",
    } in info["clashes"]


def test_custom_node_packages_from_the_workspace_run(probe):
    assert probe["channel_swap_equal"] is True
    v3 = probe["v3"]
    assert v3["equal"] is True
    assert v3["ui"] == {"node": ["2"]}  # the V3 node's hidden unique_id reached it
    errors = v3["validation"]["2"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed" and "gain must not be 0" in errors[0]["details"]


@pytest.mark.parametrize("run", ["interrupt_token", "interrupt_comfy"])
def test_interrupt_inside_a_comfyui_node_that_reports_progress(probe, run):
    result = probe[run]
    assert result["outcome"] == "interrupted"
    assert "execution_interrupted" in result["event_types"]
    # Cancelled at step 3 of 400: the node stopped at its next progress report.
    assert 3 <= result["last_progress"] < result["progress_max"] == 400
    assert result["event_prompt_ids"] == [result["prompt_id"]]


def test_comfyui_interrupt_flag_is_reset_for_the_next_execution(probe):
    result = probe["after_comfy_interrupt"]
    assert result["outcome"] == "completed" and result["last_progress"] == 5


def test_interrupt_reaches_a_node_polling_comfyuis_flag(probe):
    result = probe["interrupt_poll"]
    assert result["outcome"] == "interrupted"
    assert "execution_interrupted" in result["event_types"]


def test_progress_and_previews_carry_their_own_executions_prompt_id(probe):
    cancelled, other = probe["concurrent"]["cancelled"], probe["concurrent"]["other"]
    assert cancelled["outcome"] == "interrupted" and cancelled["last_progress"] < 60
    assert other["outcome"] == "completed" and other["last_progress"] == 60
    assert cancelled["event_prompt_ids"] == [cancelled["prompt_id"]]
    assert other["event_prompt_ids"] == [other["prompt_id"]]
    for result in (cancelled, other):
        (preview,) = result["previews"]
        # ComfyUI's sampler preview tuple ("JPEG", PIL image, max size) became our preview event.
        assert preview == {
            "prompt_id": result["prompt_id"],
            "node": "2",
            "image_type": "JPEG",
            "jpeg": True,
            "size": [32, 24],
        }


def test_sampler_previews_become_preview_events(probe):
    result = probe["sampler_preview"]
    assert result["outcome"] == "completed"
    assert result["last_progress"] == result["progress_max"] == 3
    # One Latent2RGB preview per step (preview_method=latent2rgb reached ComfyUI before import):
    # 16x16 latent -> a 16x16 JPEG.
    assert (
        result["previews"]
        == [
            {
                "prompt_id": result["prompt_id"],
                "node": "2",
                "image_type": "JPEG",
                "jpeg": True,
                "size": [16, 16],
            }
        ]
        * 3
    )


def test_promptserver_progress_text_becomes_our_event(probe):
    result = probe["image_size"]
    assert result["outcome"] == "completed"
    assert result["progress_text"] == [
        {
            "node": "2",
            "text": f"width: {WIDTH}, height: {HEIGHT}\n batch size: 1",
            "prompt_id": result["prompt_id"],
        }
    ]


def test_processes_spawned_after_loading_import_comfystreams_server(probe):
    # ComfyUI has a server.py too: its folder on the import path must not hide ours from children.
    repo = Path(__file__).resolve().parents[2]
    assert Path(probe["child_server_module"]) == repo / "server" / "__init__.py"


def test_node_package_works_in_comfyuis_own_ui(probe):
    ui = probe["ui_package"]
    assert ui["loaded"] is True
    assert ui["module"] == "comfystream.comfyui.ui_nodes"
    # Outside a stream LoadTensor gives a placeholder frame and SaveTensor shows a preview.
    assert ui["placeholder_shape"] == [1, 512, 512, 3]
    assert 0.0 <= ui["placeholder_range"][0] < ui["placeholder_range"][1] <= 1.0
    assert ui["preview_type"] == "temp" and ui["preview_file"] is True


async def test_stream_through_a_worker_gives_comfyuis_pixels(
    comfyui_path, custom_nodes_dir, probe, stream_frames, standin_on_path, no_leaks
):
    from comfystream.pipeline import ProcessPoolPipeline
    from workers.backend import ProcessPoolBackend

    backend = ProcessPoolBackend(
        gpus=[],
        workspace=str(comfyui_path),
        workspace_settings={"extra_custom_node_dirs": [str(custom_nodes_dir)]},
        startup_timeout_s=120.0,
        heartbeat_timeout_s=60.0,
    )
    pipeline = ProcessPoolPipeline(
        width=WIDTH, height=HEIGHT, stream_id="comfyui", backend=backend, warmup_frames=1
    )
    try:
        await pipeline.initialize([blur_sharpen_prompt()])
        (status,) = pipeline.worker_status()
        assert any("cs_broken_nodes" in path for path in status.get("load_errors", {}))
        for i, rgb in enumerate(stream_frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = 1000 + i, Fraction(1, 30)
            await pipeline.put_video_frame(frame)
            out = await asyncio.wait_for(pipeline.get_processed_video_frame(), 60)
            assert out.pts == 1000 + i
            np.testing.assert_array_equal(out.to_ndarray(format="rgb24"), worker_uint8(probe["reference"][i]))

        swap = {
            "1": {"class_type": "LoadTensor", "inputs": {}},
            "2": {"class_type": "CSTestChannelSwap", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
        }
        await pipeline.update_prompts([swap])
        frame = av.VideoFrame.from_ndarray(stream_frames[0], format="rgb24")
        frame.pts, frame.time_base = 5000, Fraction(1, 30)
        await pipeline.put_video_frame(frame)
        out = await asyncio.wait_for(pipeline.get_processed_video_frame(), 60)
        assert out.pts == 5000
        np.testing.assert_array_equal(out.to_ndarray(format="rgb24"), stream_frames[0][..., ::-1])
    finally:
        await pipeline.cleanup()
        await backend.shutdown()
