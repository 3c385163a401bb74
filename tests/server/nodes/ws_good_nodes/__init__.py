"""A custom node package for the workspace-info tests. Each import appends this process's pid to the
file named by COMFYSTREAM_TEST_IMPORT_LOG (when set), so a test can tell how often a process loaded it."""

import os

_log = os.environ.get("COMFYSTREAM_TEST_IMPORT_LOG")
if _log:
    with open(_log, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")


class WsScale:
    """Multiplies an image by a factor."""

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's name
        return {
            "required": {
                "image": ("IMAGE",),
                "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "tests"

    def run(self, image, factor):
        return ((image * factor).clamp(0, 1),)


NODE_CLASS_MAPPINGS = {"WsScale": WsScale}
