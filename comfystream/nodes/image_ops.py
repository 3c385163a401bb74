"""Image nodes from ComfyUI's core and comfy_extras, with ComfyUI's input names, defaults, ranges and results.

torch is imported where it is used: the server imports this module for node definitions and
never computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comfystream.engine.progress import report_progress_text
from comfystream.nodes.tensor_utils import common_upscale, image_alpha_fix, repeat_to_batch_size

if TYPE_CHECKING:
    import torch

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]


class ImageInvert:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's protocol
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image: torch.Tensor):
        return (1.0 - image,)


class ImageScale:
    upscale_methods = UPSCALE_METHODS
    crop_methods = CROP_METHODS
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (cls.upscale_methods,),
                "width": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "crop": (cls.crop_methods,),
            }
        }

    def upscale(self, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str):
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)


class ImageScaleBy:
    upscale_methods = UPSCALE_METHODS
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "upscale_method": (cls.upscale_methods,),
                "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    def upscale(self, image: torch.Tensor, upscale_method: str, scale_by: float):
        samples = image.movedim(-1, 1)
        width = round(samples.shape[3] * scale_by)
        height = round(samples.shape[2] * scale_by)
        return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


class EmptyImage:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"

    def __init__(self, device: str = "cpu"):
        self.device = device

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
            }
        }

    def generate(self, width: int, height: int, batch_size: int = 1, color: int = 0):
        import torch

        r = torch.full([batch_size, height, width, 1], ((color >> 16) & 0xFF) / 0xFF, device=self.device)
        g = torch.full([batch_size, height, width, 1], ((color >> 8) & 0xFF) / 0xFF, device=self.device)
        b = torch.full([batch_size, height, width, 1], (color & 0xFF) / 0xFF, device=self.device)
        return (torch.cat((r, g, b), dim=-1),)


class ImageCrop:
    CATEGORY = "image/transform"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "width": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "height": ("INT", {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}),
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
            }
        }

    def crop(self, image: torch.Tensor, width: int, height: int, x: int, y: int):
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y : y + height, x : x + width, :],)


class ImageFlip:
    CATEGORY = "image/transform"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "flip"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "flip_method": (["x-axis: vertically", "y-axis: horizontally"],),
            }
        }

    def flip(self, image: torch.Tensor, flip_method: str):
        import torch

        if flip_method.startswith("x"):
            image = torch.flip(image, dims=[1])
        elif flip_method.startswith("y"):
            image = torch.flip(image, dims=[2])
        return (image,)


class ImageRotate:
    CATEGORY = "image/transform"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "rotate"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "rotation": (["none", "90 degrees", "180 degrees", "270 degrees"],),
            }
        }

    def rotate(self, image: torch.Tensor, rotation: str):
        import torch

        rotate_by = 0
        if rotation.startswith("90"):
            rotate_by = 1
        elif rotation.startswith("180"):
            rotate_by = 2
        elif rotation.startswith("270"):
            rotate_by = 3
        # dims [2, 1]: from the width axis towards the height axis, i.e. clockwise on screen.
        return (torch.rot90(image, k=rotate_by, dims=[2, 1]),)


class GetImageSize:
    CATEGORY = "image"
    DESCRIPTION = "Returns width and height of the image, and passes it through unchanged."
    RETURN_TYPES = ("INT", "INT", "INT")
    RETURN_NAMES = ("width", "height", "batch_size")
    FUNCTION = "get_size"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"image": ("IMAGE",)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def get_size(self, image: torch.Tensor, unique_id: str | None = None):
        height = image.shape[1]
        width = image.shape[2]
        batch_size = image.shape[0]
        if unique_id:
            report_progress_text(f"width: {width}, height: {height}\n batch size: {batch_size}", unique_id)
        return (width, height, batch_size)


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """ComfyUI's `nodes_mask.composite` on `[B,C,H,W]` tensors (writes into `destination`)."""
    import torch

    source = source.to(destination.device)
    if resize_source:
        source = torch.nn.functional.interpolate(
            source, size=(destination.shape[-2], destination.shape[-1]), mode="bilinear"
        )
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = (x // multiplier, y // multiplier)
    right, bottom = (left + source.shape[-1], top + source.shape[-2])
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True)
        mask = torch.nn.functional.interpolate(
            mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])),
            size=(source.shape[-2], source.shape[-1]),
            mode="bilinear",
        )
        mask = repeat_to_batch_size(mask, source.shape[0])
    # Only the part of the source that lands inside the destination is written.
    visible_width, visible_height = (
        destination.shape[-1] - left + min(0, x),
        destination.shape[-2] - top + min(0, y),
    )
    mask = mask[:, :, :visible_height, :visible_width]
    if mask.ndim < source.ndim:
        mask = mask.unsqueeze(1)
    inverse_mask = torch.ones_like(mask) - mask
    source_portion = mask * source[..., :visible_height, :visible_width]
    destination_portion = inverse_mask * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = source_portion + destination_portion
    return destination


class ImageCompositeMasked:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "composite"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "destination": ("IMAGE",),
                "source": ("IMAGE",),
                "x": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "y": ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1}),
                "resize_source": ("BOOLEAN", {"default": False}),
            },
            "optional": {"mask": ("MASK",)},
        }

    def composite(
        self,
        destination: torch.Tensor,
        source: torch.Tensor,
        x: int,
        y: int,
        resize_source: bool,
        mask: torch.Tensor | None = None,
    ):
        destination, source = image_alpha_fix(destination, source)
        destination = destination.clone().movedim(-1, 1)
        output = composite(destination, source.movedim(-1, 1), x, y, mask, 1, resize_source).movedim(1, -1)
        return (output,)
