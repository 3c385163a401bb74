"""Events of a run (ComfyUI's names and payloads, prompt_id on each), errors, progress and interrupt."""

from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image

from comfystream.engine import (
    CancelToken,
    ExecutionContext,
    ExecutionError,
    InterruptProcessingException,
    ProgressBar,
    compile_prompt,
)
from comfystream.nodes import build_registry

STARTED = threading.Event()


class Steps:
    """Reports progress over `steps` steps, with a preview on the first; can wait to be cancelled."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 3}),
                "wait": ("BOOLEAN", {"default": False}),
            }
        }

    def run(self, image, steps, wait):
        bar = ProgressBar(steps)
        for i in range(steps):
            if wait:
                STARTED.set()
                threading.Event().wait(0.01)
            preview = ("JPEG", Image.new("RGB", (8, 8), "red"), 4) if i == 0 else None
            bar.update_absolute(i + 1, preview=preview)
        return (image,)


class Boom:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",), "note": ("STRING", {"default": "x"})}}

    def run(self, image, note):
        raise ValueError("kaboom")


@pytest.fixture(scope="module")
def reg():
    r = build_registry()
    r.register("Steps", Steps, source="test")
    r.register("Boom", Boom, source="test")
    return r


def prompt_with(class_type: str, **inputs):
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": class_type, "inputs": {"image": ["1", 0], **inputs}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


def test_event_sequence_of_a_run(reg, recorder):
    plan = compile_prompt(
        {
            "1": {"class_type": "LoadTensor", "inputs": {}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        },
        reg,
    )
    plan.execute_sync(ExecutionContext(prompt_id="p-1", frame=torch.rand(1, 4, 4, 3), on_event=recorder))
    assert all(data.get("prompt_id") == "p-1" for _, data in recorder.events)
    flow = [(t, d.get("node")) for t, d in recorder.events if t not in ("progress_state",)]
    assert flow == [
        ("execution_start", None),
        ("execution_cached", None),
        ("executing", "1"),
        ("executing", "2"),
        ("executing", "3"),
        ("executed", "3"),
        ("execution_success", None),
        ("executing", None),
    ]
    start, cached = recorder.events[0][1], recorder.events[1][1]
    assert set(start) == {"prompt_id", "timestamp"} and cached["nodes"] == []
    executed = recorder.of("executed")[0]
    assert executed["display_node"] == "3" and executed["output"]["images"][0]["type"] == "temp"
    last_state = recorder.of("progress_state")[-1]["nodes"]
    assert {n: s["state"] for n, s in last_state.items()} == {
        "1": "finished",
        "2": "finished",
        "3": "finished",
    }


def test_progress_bar_progress_and_preview(reg, recorder):
    plan = compile_prompt(prompt_with("Steps", steps=3, wait=False), reg)
    plan.execute_sync(ExecutionContext(prompt_id="p-2", frame=torch.rand(1, 2, 2, 3), on_event=recorder))
    progress = recorder.of("progress")
    assert progress == [{"value": v, "max": 3, "prompt_id": "p-2", "node": "2"} for v in (1, 2, 3)]
    (preview,) = recorder.of("preview")
    assert preview["node"] == "2" and preview["image_type"] == "JPEG" and preview["prompt_id"] == "p-2"
    assert preview["image"][:2] == b"\xff\xd8"  # a JPEG
    states = [s["nodes"]["2"]["value"] for s in recorder.of("progress_state") if "2" in s["nodes"]]
    assert states[:4] == [0.0, 1, 2, 3]


def test_execution_error_payload(reg, recorder):
    plan = compile_prompt(prompt_with("Boom", note="hello"), reg)
    with pytest.raises(ExecutionError) as info:
        plan.execute_sync(ExecutionContext(prompt_id="p-3", frame=torch.rand(1, 2, 2, 3), on_event=recorder))
    (payload,) = recorder.of("execution_error")
    assert payload is not None and info.value.payload["node_id"] == "2"
    assert payload["prompt_id"] == "p-3"
    assert payload["node_id"] == "2" and payload["node_type"] == "Boom"
    assert payload["executed"] == ["1"]
    assert payload["exception_type"] == "ValueError"
    assert payload["exception_message"].strip() == "kaboom"
    assert any("raise ValueError" in line for line in payload["traceback"])
    assert payload["current_inputs"]["note"] == ["hello"]
    assert payload["current_inputs"]["image"][0].startswith("tensor(")
    assert "timestamp" in payload
    assert recorder.types()[-2:] == ["execution_error", "executing"]
    assert recorder.events[-1][1]["node"] is None
    assert "execution_success" not in recorder.types()


def test_interrupt_from_another_thread(reg, recorder):
    STARTED.clear()
    cancel = CancelToken()
    plan = compile_prompt(prompt_with("Steps", steps=100000, wait=True), reg)
    outcome = {}

    def run():
        try:
            plan.execute_sync(
                ExecutionContext(
                    prompt_id="p-4", frame=torch.rand(1, 2, 2, 3), on_event=recorder, cancel=cancel
                )
            )
        except InterruptProcessingException as exc:
            outcome["interrupted"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert STARTED.wait(10)
    cancel.cancel("stop please")
    thread.join(10)
    assert not thread.is_alive()
    assert "interrupted" in outcome
    (payload,) = recorder.of("execution_interrupted")
    assert payload["prompt_id"] == "p-4" and payload["node_id"] == "2" and payload["node_type"] == "Steps"
    assert payload["executed"] == ["1"]
    assert "execution_success" not in recorder.types()


def test_cancel_before_start_stops_at_the_first_node(reg, recorder):
    cancel = CancelToken()
    cancel.cancel()
    plan = compile_prompt(prompt_with("ImageInvert"), reg)
    with pytest.raises(InterruptProcessingException):
        plan.execute_sync(ExecutionContext(frame=torch.rand(1, 2, 2, 3), on_event=recorder, cancel=cancel))
    assert recorder.of("execution_interrupted")[0]["node_id"] == "1"


def test_second_run_reports_cached_nodes(reg, recorder):
    plan = compile_prompt(
        {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 4, "height": 4, "batch_size": 1, "color": 255},
            },
            "2": {"class_type": "LoadTensor", "inputs": {}},
            "3": {
                "class_type": "ImageBlend",
                "inputs": {
                    "image1": ["2", 0],
                    "image2": ["1", 0],
                    "blend_factor": 0.5,
                    "blend_mode": "normal",
                },
            },
            "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
        },
        reg,
    )
    plan.execute_sync(ExecutionContext(frame=torch.zeros(1, 4, 4, 3)))
    plan.execute_sync(ExecutionContext(frame=torch.zeros(1, 4, 4, 3), on_event=recorder))
    assert recorder.of("execution_cached")[0]["nodes"] == ["1"]
    assert [d["node"] for d in recorder.of("executing")] == ["2", "3", "4", None]


def test_a_raising_event_callback_does_not_fail_the_run(reg, caplog):
    seen = []

    def on_event(event_type, data):
        seen.append(event_type)
        raise RuntimeError("callback broke")

    plan = compile_prompt(prompt_with("Steps", steps=2, wait=False), reg)
    result = plan.execute_sync(ExecutionContext(frame=torch.zeros(1, 2, 2, 3), on_event=on_event))
    assert torch.equal(result.frames[0], torch.zeros(1, 2, 2, 3))
    assert seen[0] == "execution_start" and "progress" in seen and seen[-1] == "executing"
    assert "event callback failed" in caplog.text
