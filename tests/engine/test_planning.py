"""Planning and execution: what runs, in what order, what is reused, and the node protocol."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from comfystream.engine import (
    ExecutionContext,
    NodeRegistry,
    PromptValidationError,
    compile_prompt,
)
from comfystream.engine import executor as executor_module
from comfystream.nodes import build_registry
from comfystream.prompts import DEFAULT_PROMPT

CALLS: list[str] = []


class Counter:
    """An IMAGE source that records each call (frame-independent)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"value": ("FLOAT", {"default": 0.5})}}

    def run(self, value):
        CALLS.append(f"counter:{value}")
        return (torch.full((1, 2, 2, 3), value),)


CHANGE_TOKEN = {"value": "a"}


class Watched(Counter):
    @classmethod
    def IS_CHANGED(cls, value):  # noqa: N802
        return CHANGE_TOKEN["value"]

    def run(self, value):
        CALLS.append("watched")
        return (torch.full((1, 2, 2, 3), value),)


class Volatile(Counter):
    @classmethod
    def IS_CHANGED(cls, value):  # noqa: N802
        return float("nan")

    def run(self, value):
        CALLS.append("volatile")
        return (torch.full((1, 2, 2, 3), value),)


class Add:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"a": ("IMAGE",), "b": ("IMAGE",)}}

    def run(self, a, b):
        CALLS.append("add")
        return (a + b,)


class AsyncScale:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",), "factor": ("FLOAT", {"default": 2.0})}}

    async def run(self, image, factor):
        await asyncio.sleep(0)
        return (image * factor,)


class Splitter:
    """OUTPUT_IS_LIST: one batch in, a list of single images out."""

    RETURN_TYPES = ("IMAGE",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image):
        return ([image[i : i + 1] for i in range(image.shape[0])],)


class PerItem:
    """Called once per list item (no INPUT_IS_LIST); returns ui and result."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",)}, "hidden": {"uid": "UNIQUE_ID"}}

    def run(self, image, uid):
        CALLS.append(f"item:{uid}")
        return {"ui": {"means": [float(image.mean())]}, "result": (image * 10,)}


class Joiner:
    """INPUT_IS_LIST: gets the whole list at once."""

    RETURN_TYPES = ("IMAGE",)
    INPUT_IS_LIST = True
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"images": ("IMAGE",)}}

    def run(self, images):
        CALLS.append(f"join:{len(images)}")
        return (torch.cat(images, dim=0),)


@pytest.fixture
def reg() -> NodeRegistry:
    CALLS.clear()
    CHANGE_TOKEN["value"] = "a"
    r = build_registry()
    for cls in (Counter, Watched, Volatile, Add, AsyncScale, Splitter, PerItem, Joiner):
        r.register(cls.__name__, cls, source="test")
    return r


def frame(v=0.25):
    return torch.full((1, 2, 2, 3), v)


def test_only_outputs_and_their_ancestors_run_in_order(reg):
    prompt = {
        "10": {"class_type": "SaveTensor", "inputs": {"images": ["5", 0]}},
        "5": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["1", 0]}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "7": {"class_type": "Counter", "inputs": {"value": 1.0}},  # feeds nothing: never runs
    }
    plan = compile_prompt(prompt, reg)
    assert plan.node_ids == ["1", "3", "5", "10"]
    result = plan.execute_sync(ExecutionContext(frame=frame()))
    assert result.executed == ["1", "3", "5", "10"]
    assert CALLS == ["add"]
    assert torch.allclose(result.frames[0], torch.full((1, 2, 2, 3), 1.0))


def test_frame_independent_part_is_computed_once(reg):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "Counter", "inputs": {"value": 0.5}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["3", 0]}},
        "5": {"class_type": "SaveTensor", "inputs": {"images": ["4", 0]}},
    }
    plan = compile_prompt(prompt, reg)
    assert plan.static_nodes == ["2", "3"]
    outs = []
    for v in (0.1, 0.2, 0.3):
        result = plan.execute_sync(ExecutionContext(frame=frame(v)))
        outs.append(float(result.frames[0].mean()))
    assert CALLS == ["counter:0.5", "add", "add", "add"]
    assert outs == pytest.approx([0.6, 0.7, 0.8])
    assert result.executed == ["1", "4", "5"] and result.cached == ["2", "3"]
    plan.reset_cache()
    plan.execute_sync(ExecutionContext(frame=frame()))
    assert CALLS.count("counter:0.5") == 2


def test_is_changed_is_honoured(reg):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "Watched", "inputs": {"value": 0.5}},
        "3": {"class_type": "Volatile", "inputs": {"value": 0.5}},
        "4": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["3", 0]}},
        "5": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["4", 0]}},
        "6": {"class_type": "SaveTensor", "inputs": {"images": ["5", 0]}},
    }
    plan = compile_prompt(prompt, reg)
    for _ in range(2):
        result = plan.execute_sync(ExecutionContext(frame=frame()))
    assert result.executed == ["1", "3", "4", "5", "6"] and result.cached == ["2"]
    # Watched: same token, reused. Volatile (NaN): recomputed each time, and so is what it feeds.
    assert CALLS.count("watched") == 1
    assert CALLS.count("volatile") == 2
    CHANGE_TOKEN["value"] = "b"
    result = plan.execute_sync(ExecutionContext(frame=frame()))
    assert CALLS.count("watched") == 2
    assert result.executed == ["1", "2", "3", "4", "5", "6"] and result.cached == []


def test_async_nodes_run_in_both_drivers(reg):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "AsyncScale", "inputs": {"image": ["1", 0], "factor": 3.0}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    plan = compile_prompt(prompt, reg)
    assert plan.is_async
    result = asyncio.run(plan.execute(ExecutionContext(frame=frame(0.1))))
    assert torch.allclose(result.frames[0], frame(0.3))
    result = plan.execute_sync(ExecutionContext(frame=frame(0.2)))  # no loop running here: runs one
    assert torch.allclose(result.frames[0], frame(0.6))


async def test_execute_sync_refuses_inside_a_loop_for_async_prompts(reg):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "AsyncScale", "inputs": {"image": ["1", 0], "factor": 3.0}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(RuntimeError, match="await plan.execute"):
        compile_prompt(prompt, reg).execute_sync(ExecutionContext(frame=frame()))


def test_execute_sync_without_async_nodes_never_touches_asyncio(reg, monkeypatch):
    class NoAsyncio:
        def __getattr__(self, name):
            raise AssertionError(f"asyncio.{name} used on the sync path")

    plan = compile_prompt(DEFAULT_PROMPT, reg)
    monkeypatch.setattr(executor_module, "asyncio", NoAsyncio())
    result = plan.execute_sync(ExecutionContext(frame=frame()))
    assert torch.allclose(result.frames[0], frame(0.75))


def test_list_protocol_output_is_list_input_is_list_and_ui(reg):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "Splitter", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PerItem", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "Joiner", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "SaveTensor", "inputs": {"images": ["4", 0]}},
    }
    batch = torch.stack([torch.full((2, 2, 3), v) for v in (0.1, 0.2, 0.3)])
    result = compile_prompt(prompt, reg).execute_sync(ExecutionContext(frame=batch))
    assert CALLS == ["item:3", "item:3", "item:3", "join:3"]
    assert torch.allclose(result.frames[0], batch * 10)
    assert result.outputs["3"]["means"] == pytest.approx([0.1, 0.2, 0.3])


def test_two_executions_in_parallel_keep_their_own_frames(reg):
    plan = compile_prompt(DEFAULT_PROMPT, reg)
    errors = []

    def worker(v):
        for _ in range(200):
            result = plan.execute_sync(ExecutionContext(frame=frame(v)))
            if len(result.frames) != 1 or not torch.allclose(result.frames[0], frame(1 - v)):
                errors.append(v)

    threads = [threading.Thread(target=worker, args=(v,)) for v in (0.1, 0.2, 0.3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_cycle_through_undeclared_links_is_a_clear_error(reg):
    # `extra` is not a declared input, so validation does not walk it; planning catches the loop.
    prompt = {
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "Counter", "inputs": {"value": 0.5, "extra": ["1", 0]}},
    }
    with pytest.raises(PromptValidationError, match="Dependency cycle detected") as info:
        compile_prompt(prompt, reg)
    assert set(info.value.result.node_errors) == {"1", "3"}
    assert info.value.result.error["type"] == "prompt_outputs_failed_validation"


def test_compile_rejects_bad_prompt_with_comfy_result(reg):
    with pytest.raises(PromptValidationError) as info:
        compile_prompt({"1": {"class_type": "SaveTensor", "inputs": {}}}, reg)
    assert info.value.result.to_comfy()["node_errors"]["1"]["errors"][0]["type"] == "required_input_missing"


def test_compile_prompts_takes_every_accepted_form(reg):
    import json

    from comfystream.engine import compile_prompts

    one = json.loads(json.dumps(DEFAULT_PROMPT))
    assert len(compile_prompts(one, reg)) == 1
    assert len(compile_prompts(json.dumps([one, one]), reg)) == 2
    with pytest.raises(PromptValidationError) as info:
        compile_prompts("[not json", reg)
    assert info.value.result.error["type"] == "invalid_prompt"
