"""A custom node package as ComfyUI users write them: V1 classes using ComfyUI's own modules."""

import time

import comfy.model_management
import comfy.utils
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


NODE_CLASS_MAPPINGS = {
    "CSTestChannelSwap": CSTestChannelSwap,
    "CSTestSlowProgress": CSTestSlowProgress,
    "CSTestPollInterrupt": CSTestPollInterrupt,
}
NODE_DISPLAY_NAME_MAPPINGS = {"CSTestChannelSwap": "Channel swap (test)"}
