"""Frame-independent outputs carried across prompts by input signature (resident models), and
every execution under inference mode, as ComfyUI runs prompts."""

from __future__ import annotations

import torch

from comfystream.engine import ExecutionContext, compile_prompt
from comfystream.engine.output_cache import OutputCache
from comfystream.nodes import build_registry

CALLS: list[str] = []
CHANGE = {"value": "a"}


class FakeCheckpointLoader:
    """Stands for a weights loader (ComfyUI files them under `loaders`)."""

    RETURN_TYPES = ("WEIGHTS",)
    FUNCTION = "load"
    CATEGORY = "loaders"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"name": ("STRING", {"default": "a.safetensors"})}}

    def load(self, name):
        CALLS.append(f"load:{name}")
        # A parameter that would record autograd history outside inference mode.
        return (torch.nn.Parameter(torch.full((1,), float(len(name)))),)


class FakeTextEncode:
    RETURN_TYPES = ("COND",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"weights": ("WEIGHTS",), "text": ("STRING", {"default": ""})}}

    def encode(self, weights, text):
        CALLS.append(f"encode:{text}")
        return (weights * len(text),)


class WatchedLoader(FakeCheckpointLoader):
    @classmethod
    def IS_CHANGED(cls, name):  # noqa: N802
        return CHANGE["value"]


class Apply:
    """Frame-dependent: adds the conditioning to the frame (an op with out=, as samplers use)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "apply"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",), "cond": ("COND",), "denoise": ("FLOAT", {"default": 0.5})}}

    def apply(self, image, cond, denoise):
        CALLS.append("apply")
        out = torch.empty_like(image)
        torch.add(image, cond * denoise, out=out)  # fails on a tensor that requires grad
        return (out,)


def registry():
    reg = build_registry()
    for cls in (FakeCheckpointLoader, FakeTextEncode, WatchedLoader, Apply):
        reg.register(cls.__name__, cls, source="test")
    return reg


def img2img(
    text: str = "a cat",
    name: str = "a.safetensors",
    denoise: float = 0.5,
    loader: str = "FakeCheckpointLoader",
):
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": loader, "inputs": {"name": name}},
        "3": {"class_type": "FakeTextEncode", "inputs": {"weights": ["2", 0], "text": text}},
        "4": {"class_type": "Apply", "inputs": {"image": ["1", 0], "cond": ["3", 0], "denoise": denoise}},
        "5": {"class_type": "SaveTensor", "inputs": {"images": ["4", 0]}},
    }


def run(plan, value: float = 0.0):
    frame = torch.full((1, 2, 2, 3), value)
    return plan.execute_sync(ExecutionContext(prompt_id="p", frame=frame)).frames[0]


def test_a_prompt_runs_under_inference_mode():
    CALLS.clear()
    plan = compile_prompt(img2img(), registry())
    out = run(plan)  # would raise "functions with out=... don't support automatic differentiation"
    assert not out.requires_grad
    assert CALLS == ["load:a.safetensors", "encode:a cat", "apply"]


def test_a_text_or_denoise_update_reuses_the_loaded_weights():
    reg, cache = registry(), OutputCache()
    CALLS.clear()
    first = compile_prompt(img2img("a cat"), reg, cache=cache)
    run(first)
    assert cache.model_loads == 1
    CALLS.clear()
    second = compile_prompt(img2img("a dog", denoise=0.8), reg, cache=cache)
    out = run(second)
    assert CALLS == ["encode:a dog", "apply"]  # no load; the text is encoded again
    assert cache.model_loads == 1
    assert torch.allclose(out, torch.full((1, 2, 2, 3), 13.0 * 5 * 0.8))
    # The loader's very object is shared, not a copy.
    assert second._static_values[1] is first._static_values[1]


def test_another_checkpoint_loads_and_retain_frees_the_old_one():
    reg, cache = registry(), OutputCache()
    old = compile_prompt(img2img(name="a.safetensors"), reg, cache=cache)
    run(old)
    CALLS.clear()
    new = compile_prompt(img2img(name="bb.safetensors"), reg, cache=cache)
    run(new)
    assert CALLS[0] == "load:bb.safetensors"
    assert cache.model_loads == 2
    dropped = cache.retain(new.signatures)
    assert dropped == 2  # the old loader's and the old text encode's outputs
    assert all(sig in cache for sig in new.signatures)
    assert not any(sig in cache for sig in old.signatures if sig not in new.signatures)


def test_is_changed_decides_whether_a_cached_output_is_taken():
    reg, cache = registry(), OutputCache()
    CHANGE["value"] = "a"
    run(compile_prompt(img2img(loader="WatchedLoader"), reg, cache=cache))
    CALLS.clear()
    run(compile_prompt(img2img("x", loader="WatchedLoader"), reg, cache=cache))
    assert "load:a.safetensors" not in CALLS  # same IS_CHANGED: taken from the cache
    CHANGE["value"] = "b"  # e.g. the file changed on disk
    CALLS.clear()
    run(compile_prompt(img2img("x", loader="WatchedLoader"), reg, cache=cache))
    assert CALLS[:2] == ["load:a.safetensors", "encode:x"]


def test_frame_dependent_nodes_are_never_cached():
    reg, cache = registry(), OutputCache()
    plan = compile_prompt(img2img(), reg, cache=cache)
    a, b = run(plan, 0.0), run(plan, 1.0)
    assert not torch.equal(a, b)
    assert len(cache) == 2  # loader and text encode only
