"""Built-in nodes: frame I/O for streams, one-shot image I/O, and ComfyUI's core image nodes.

`build_registry` is where a registry gets them: the engine knows node classes only as a registry
hands them over, so it never imports the nodes that run on it.
"""

from __future__ import annotations

from collections.abc import Iterable

from comfystream.engine.custom_nodes import load_custom_nodes
from comfystream.engine.registry import NodeRegistry
from comfystream.nodes import filters, frame_io, image_files, image_ops

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "LoadTensor": frame_io.LoadTensor,
    "SaveTensor": frame_io.SaveTensor,
    "LoadImage": image_files.LoadImage,
    "PrimaryInputLoadImage": image_files.PrimaryInputLoadImage,
    "SaveImage": image_files.SaveImage,
    "PreviewImage": image_files.PreviewImage,
    "ImageInvert": image_ops.ImageInvert,
    "ImageScale": image_ops.ImageScale,
    "ImageScaleBy": image_ops.ImageScaleBy,
    "EmptyImage": image_ops.EmptyImage,
    "ImageCrop": image_ops.ImageCrop,
    "ImageFlip": image_ops.ImageFlip,
    "ImageRotate": image_ops.ImageRotate,
    "GetImageSize": image_ops.GetImageSize,
    "ImageCompositeMasked": image_ops.ImageCompositeMasked,
    "ImageBlend": filters.ImageBlend,
    "ImageBlur": filters.ImageBlur,
    "ImageSharpen": filters.ImageSharpen,
    "ImageQuantize": filters.ImageQuantize,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "LoadTensor": "Load Tensor (stream input)",
    "SaveTensor": "Save Tensor (stream output)",
    "LoadImage": "Load Image",
    "PrimaryInputLoadImage": "Primary Input Load Image",
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "ImageInvert": "Invert Image",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "EmptyImage": "EmptyImage",
    "ImageCrop": "Image Crop",
    "ImageFlip": "Image Flip",
    "ImageRotate": "Image Rotate",
    "GetImageSize": "Get Image Size",
    "ImageCompositeMasked": "ImageCompositeMasked",
    "ImageBlend": "Image Blend",
    "ImageBlur": "Image Blur",
    "ImageSharpen": "Image Sharpen",
    "ImageQuantize": "Image Quantize",
}


def build_registry(custom_node_dirs: Iterable[str] | None = None) -> NodeRegistry:
    """The built-in nodes plus every custom node package found in `custom_node_dirs`."""
    registry = NodeRegistry()
    registry.register_mappings(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, source="comfystream")
    for directory in custom_node_dirs or ():
        load_custom_nodes(directory, registry)
    return registry
