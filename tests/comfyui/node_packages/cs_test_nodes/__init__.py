"""A custom node package as ComfyUI users write them: V1 classes using ComfyUI's own modules."""

import time
import types

import comfy.latent_formats
import comfy.model_management
import comfy.utils
import latent_preview
import torch
from PIL import Image


class CSTestChannelSwap:
    """RGB -> BGR: a result no built-in node gives by accident."""

    CATEGORY = "comfystream-test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "swap"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",)}}

    def swap(self, image):
        return (image.flip(-1),)


class CSTestSlowProgress:
    """Loops with comfy.utils.ProgressBar, sending a preview on the first step as samplers do."""

    CATEGORY = "comfystream-test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 200, "min": 1, "max": 100000}),
                "step_seconds": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 1.0, "step": 0.001}),
            }
        }

    def run(self, image, steps, step_seconds):
        pbar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            time.sleep(step_seconds)
            preview = ("JPEG", Image.new("RGB", (64, 48), (200, 30, 30)), 32) if i == 0 else None
            pbar.update_absolute(i + 1, steps, preview)
        return (image,)


class CSTestPollInterrupt:
    """Polls ComfyUI's interrupt flag directly, as long model code does between blocks."""

    CATEGORY = "comfystream-test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",), "seconds": ("FLOAT", {"default": 10.0})}}

    def run(self, image, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            comfy.model_management.throw_exception_if_processing_interrupted()
            time.sleep(0.005)
        return (image,)


class CSTestSamplerPreview:
    """Drives ComfyUI's sampler progress callback (latent_preview.prepare_callback), as KSampler does."""

    CATEGORY = "comfystream-test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",), "steps": ("INT", {"default": 3, "min": 1})}}

    def run(self, image, steps):
        # What prepare_callback reads of a model: its device and its latent format.
        model = types.SimpleNamespace(
            load_device=torch.device("cpu"),
            model=types.SimpleNamespace(latent_format=comfy.latent_formats.SD15()),
        )
        callback = latent_preview.prepare_callback(model, steps)
        x0 = torch.linspace(-1.0, 1.0, 4 * 16 * 16).reshape(1, 4, 16, 16)
        for step in range(steps):
            callback(step, x0, x0, steps)
        return (image,)


NODE_CLASS_MAPPINGS = {
    "CSTestSamplerPreview": CSTestSamplerPreview,
    "CSTestChannelSwap": CSTestChannelSwap,
    "CSTestSlowProgress": CSTestSlowProgress,
    "CSTestPollInterrupt": CSTestPollInterrupt,
}
NODE_DISPLAY_NAME_MAPPINGS = {"CSTestChannelSwap": "Channel swap (test)"}
