"""comfystream's stream nodes (LoadTensor, SaveTensor, ...) for ComfyUI.

`comfystream setup-workspace DIR` copies this folder to DIR/custom_nodes/comfystream_nodes so
that streaming workflows can be built in ComfyUI's own UI. The nodes themselves live in the
comfystream package, which must be importable from the Python that runs ComfyUI.
"""

try:
    from comfystream.comfyui.ui_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as exc:  # ComfyUI logs this and goes on without the package
    raise ImportError(
        "comfystream_nodes needs the comfystream package in the Python that runs ComfyUI "
        "(run ComfyUI with comfystream's virtual environment, or `pip install` comfystream into ComfyUI's): "
        f"{exc}"
    ) from exc

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
