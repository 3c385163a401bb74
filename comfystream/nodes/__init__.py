"""Built-in nodes: frame I/O for streams and ComfyUI's core image nodes."""

from __future__ import annotations

from comfystream.nodes import frame_io, image_ops

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "LoadTensor": frame_io.LoadTensor,
    "SaveTensor": frame_io.SaveTensor,
    "ImageInvert": image_ops.ImageInvert,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "LoadTensor": "Load Tensor (stream input)",
    "SaveTensor": "Save Tensor (stream output)",
    "ImageInvert": "Invert Image",
}
