"""A stand-in for a GPU-bound model: inverts the image after sleeping `delay_ms` (benchmarks and
the scheduling tests: a worker of known speed, whatever the machine)."""

import time


class SleepInvert:
    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "images": ("IMAGE",),
                "delay_ms": ("FLOAT", {"default": 50.0, "min": 0.0, "max": 10000.0}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "bench"

    def run(self, images, delay_ms):
        time.sleep(delay_ms / 1000.0)
        return (1.0 - images,)


NODE_CLASS_MAPPINGS = {"SleepInvert": SleepInvert}


def sleep_prompt(delay_ms: float) -> dict:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "SleepInvert", "inputs": {"images": ["1", 0], "delay_ms": delay_ms}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
