"""A custom node for the dashboard tests: a job that takes a while and says how far it is, as a
sampler does (ComfyUI's ProgressBar, one update per step, each a point where an interrupt lands).
With `hold` (a file's path) it waits after step `hold_at` for as long as that file exists, sending
nothing, and an interrupt still lands: the test that made the file decides when the job may go on,
so the job runs exactly as long as the test needs, on a fast machine or a loaded one."""

from __future__ import annotations

import os
import time

from comfystream.engine.context import current_context
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
            },
            "optional": {
                "hold": ("STRING", {"default": ""}),
                "hold_at": ("INT", {"default": 1, "min": 1, "max": 10000}),
            },
        }

    def run(self, image, steps: int, step_ms: int, hold: str = "", hold_at: int = 1):
        bar = ProgressBar(steps)
        for step in range(1, steps + 1):
            time.sleep(step_ms / 1000)
            bar.update(1)  # reports progress, and raises when this job is interrupted
            while hold and step == hold_at and os.path.exists(hold):
                time.sleep(0.02)
                current_context().cancel.check()  # raises when this job is interrupted
        return (1.0 - image,)


NODE_CLASS_MAPPINGS = {"StepSleep": StepSleep}
NODE_DISPLAY_NAME_MAPPINGS = {"StepSleep": "Step sleep (test)"}
