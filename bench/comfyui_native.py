"""ComfyUI's own execution of a streaming prompt, in this process: the reference for real-model
pixels (tests/comfyui) and the baseline for per-frame time (bench/real_model.py).

ComfyUI has no frame input, so comfystream's `LoadTensor` / `SaveTensor` become two small nodes
registered into ComfyUI's own node table (the frame in, the image out); everything else of the
prompt runs through ComfyUI's `execution.PromptExecutor` with its own cache, exactly as its
server runs a queued prompt. ComfyUI is imported with comfystream's workspace loader (so paths
and settings are the same as in a worker); run this in a process of its own.
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any


def sd15_img2img(
    checkpoint: str, text: str = "a watercolor painting", denoise: float = 0.5
) -> dict[str, Any]:
    """What users stream: SD 1.5 img2img through ComfyUI's own nodes, one sampler step."""
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 1]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["2", 1]}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["2", 2]}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "positive": ["3", 0],
                "negative": ["4", 0],
                "latent_image": ["5", 0],
                "seed": 42,
                "steps": 1,
                "cfg": 1.0,
                "sampler_name": "euler_ancestral",
                "scheduler": "simple",
                "denoise": denoise,
            },
        },  # fmt: skip
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["2", 2]}},
        "8": {"class_type": "SaveTensor", "inputs": {"images": ["7", 0]}},
    }


class _FrameSource:
    """The frame fed to this execution; its `frame` input counts the frames, so that ComfyUI's
    cache (keyed by input signature) runs it, and what depends on it, for every frame."""

    current: Any = None
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    CATEGORY = "bench"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"frame": ("INT", {"default": 0, "min": 0, "max": 2**62})}}

    def load(self, frame):
        return (_FrameSource.current,)


class _FrameSink:
    last: Any = None
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "bench"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"images": ("IMAGE",)}}

    def save(self, images):
        _FrameSink.last = images
        return {}


class _Server:
    """What PromptExecutor needs of ComfyUI's PromptServer when nobody listens."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        pass


def load_comfyui(
    comfyui: str, extra_model_paths: list[str] | None = None, threads: int | None = None
) -> None:
    import torch

    from comfystream.comfyui import load_workspace
    from comfystream.comfyui.settings import WorkspaceSettings

    if threads:
        torch.set_num_threads(threads)
    settings = WorkspaceSettings(extra_model_paths=tuple(extra_model_paths or ()), load_custom_nodes=False)
    load_workspace(comfyui, settings)


class NativeRunner:
    """One streaming prompt (LoadTensor -> ... -> SaveTensor) run by ComfyUI's PromptExecutor."""

    def __init__(self, prompt: dict[str, Any]):
        import execution
        import nodes

        nodes.NODE_CLASS_MAPPINGS["ComfystreamBenchFrameSource"] = _FrameSource
        nodes.NODE_CLASS_MAPPINGS["ComfystreamBenchFrameSink"] = _FrameSink
        self.prompt = copy.deepcopy(prompt)
        self.outputs = []
        self.sources = []
        self.frames = 0
        for node_id, node in self.prompt.items():
            if node["class_type"] == "LoadTensor":
                node["class_type"], node["inputs"] = "ComfystreamBenchFrameSource", {"frame": 0}
                self.sources.append(node_id)
            elif node["class_type"] == "SaveTensor":
                node["class_type"] = "ComfystreamBenchFrameSink"
                self.outputs.append(node_id)
        self.executor = execution.PromptExecutor(_Server())

    def run(self, frame: Any) -> tuple[Any, float]:
        """The prompt's output image for `frame` (IMAGE [1,H,W,3]) and the seconds it took."""
        _FrameSource.current = frame
        _FrameSink.last = None
        self.frames += 1
        for node_id in self.sources:
            self.prompt[node_id]["inputs"]["frame"] = self.frames
        start = time.perf_counter()
        self.executor.execute(self.prompt, str(uuid.uuid4()), {}, self.outputs)
        elapsed = time.perf_counter() - start
        if not self.executor.success or _FrameSink.last is None:
            raise RuntimeError(f"ComfyUI's execution failed: {self.executor.status_messages[-3:]}")
        return _FrameSink.last, elapsed
