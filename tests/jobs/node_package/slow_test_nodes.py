"""Custom nodes for the job tests (copied into a temp folder given as --custom-nodes).

`TestGate` takes as long as a test wants: before each of its `steps` it waits until the file
`gate` exists (checking the cancel token as a progress check would), and it reports progress,
a preview and progress text with comfystream's ProgressBar / report_progress_text."""

import os
import time

import torch
from PIL import Image

from comfystream.engine.context import current_context
from comfystream.engine.progress import ProgressBar, report_progress_text


class TestSolid:
    CATEGORY = "tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0}),
                "size": ("INT", {"default": 16, "min": 1, "max": 256}),
                "tag": ("STRING", {"default": ""}),  # makes otherwise equal prompts differ
            }
        }

    def make(self, value, size, tag=""):
        return (torch.full((1, size, size, 3), float(value)),)


class TestGate:
    CATEGORY = "tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "images": ("IMAGE",),
                "steps": ("INT", {"default": 3, "min": 1, "max": 1000}),
                "gate": ("STRING", {"default": ""}),
                "timeout_s": ("FLOAT", {"default": 60.0, "min": 0.1, "max": 600.0}),
            }
        }

    def run(self, images, steps, gate, timeout_s):
        ctx = current_context()
        bar = ProgressBar(steps)
        deadline = time.monotonic() + timeout_s
        for step in range(steps):
            while gate and not os.path.exists(gate):
                ctx.cancel.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gate {gate} stayed closed for {timeout_s} s")
                time.sleep(0.01)
            preview = None
            if step == 0:
                preview = ("JPEG", Image.new("RGB", (8, 8), (255, 0, 0)), None)
            bar.update_absolute(step + 1, steps, preview)
            report_progress_text(f"step {step + 1} of {steps}")
        return (images,)


class TestFail:
    CATEGORY = "tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"images": ("IMAGE",), "message": ("STRING", {"default": "boom"})}}

    def run(self, images, message):
        raise RuntimeError(message)


class TestStubborn:
    """Waits until `gate` exists and never checks its cancel token (as a node that makes one long
    library call would): only killing its worker ends it early."""

    CATEGORY = "tests"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"images": ("IMAGE",), "gate": ("STRING", {"default": ""})}}

    def run(self, images, gate):
        deadline = time.monotonic() + 600
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)
        return (images,)


NODE_CLASS_MAPPINGS = {
    "TestSolid": TestSolid,
    "TestGate": TestGate,
    "TestFail": TestFail,
    "TestStubborn": TestStubborn,
}
