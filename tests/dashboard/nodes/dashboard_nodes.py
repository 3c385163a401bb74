"""A custom node for the dashboard tests: a job that takes a while and says how far it is, as a
sampler does (ComfyUI's ProgressBar, one update per step, each a point where an interrupt lands)."""

from __future__ import annotations

import time

from comfystream.engine.progress import ProgressBar


class StepSleep:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
                "step_ms": ("INT", {"default": 100, "min": 0, "max": 10000}),
            }
        }

    def run(self, image, steps: int, step_ms: int):
        bar = ProgressBar(steps)
        for _ in range(steps):
            time.sleep(step_ms / 1000)
            bar.update(1)  # reports progress, and raises when this job is interrupted
        return (1.0 - image,)


NODE_CLASS_MAPPINGS = {"StepSleep": StepSleep}
NODE_DISPLAY_NAME_MAPPINGS = {"StepSleep": "Step sleep (test)"}
