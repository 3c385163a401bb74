"""ComfyUI's post-processing nodes (comfy_extras/nodes_post_processing.py): blend, blur, sharpen, quantize.

torch is imported where it is used: the server imports this module for node definitions and
never computes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from comfystream.nodes.tensor_utils import common_upscale, image_alpha_fix

if TYPE_CHECKING:
    import torch

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
DITHER_MODES = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


class ImageBlend:
    CATEGORY = "image/postprocessing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blend_images"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's protocol
        return {
            "required": {
                "image1": ("IMAGE",),
                "image2": ("IMAGE",),
                "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
                "blend_mode": (BLEND_MODES,),
            }
        }

    def blend_images(self, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float, blend_mode: str):
        import torch

        image1, image2 = image_alpha_fix(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:
            image2 = image2.permute(0, 3, 1, 2)
            image2 = common_upscale(
                image2, image1.shape[2], image1.shape[1], upscale_method="bicubic", crop="center"
            )
            image2 = image2.permute(0, 2, 3, 1)
        blended = self.blend_mode(image1, image2, blend_mode)
        blended = image1 * (1 - blend_factor) + blended * blend_factor
        blended = torch.clamp(blended, 0, 1)
        if image1.shape[-1] == 4:  # alpha is transparency, not colour: keep image1's
            blended[..., 3] = image1[..., 3]
        return (blended,)

    @staticmethod
    def blend_mode(img1: torch.Tensor, img2: torch.Tensor, mode: str) -> torch.Tensor:
        import torch

        if mode == "normal":
            return img2
        if mode == "multiply":
            return img1 * img2
        if mode == "screen":
            return 1 - (1 - img1) * (1 - img2)
        if mode == "overlay":
            return torch.where(img1 <= 0.5, 2 * img1 * img2, 1 - 2 * (1 - img1) * (1 - img2))
        if mode == "soft_light":
            g = torch.where(img1 <= 0.25, ((16 * img1 - 12) * img1 + 4) * img1, torch.sqrt(img1))
            return torch.where(
                img2 <= 0.5, img1 - (1 - 2 * img2) * img1 * (1 - img1), img1 + (2 * img2 - 1) * (g - img1)
            )
        if mode == "difference":
            return img1 - img2
        raise ValueError(f"Unsupported blend mode: {mode}")


def gaussian_kernel(
    kernel_size: int, sigma: float, device=None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A normalised 2-D Gaussian (`dtype` float32 when None)."""
    import torch

    x, y = torch.meshgrid(
        torch.linspace(-1, 1, kernel_size, device=device),
        torch.linspace(-1, 1, kernel_size, device=device),
        indexing="ij",
    )
    d = torch.sqrt(x * x + y * y)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(torch.float32 if dtype is None else dtype)


class ImageBlur:
    CATEGORY = "image/postprocessing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blur"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            }
        }

    def blur(self, image: torch.Tensor, blur_radius: int, sigma: float):
        import torch.nn.functional as F  # noqa: N812

        if blur_radius == 0:
            return (image,)
        channels = image.shape[3]
        kernel_size = blur_radius * 2 + 1
        kernel = gaussian_kernel(kernel_size, sigma, device=image.device, dtype=image.dtype)
        kernel = kernel.repeat(channels, 1, 1).unsqueeze(1)
        image = image.permute(0, 3, 1, 2)  # torch convolves [B,C,H,W]
        padded = F.pad(image, (blur_radius, blur_radius, blur_radius, blur_radius), "reflect")
        blurred = F.conv2d(padded, kernel, padding=kernel_size // 2, groups=channels)
        blurred = blurred[:, :, blur_radius:-blur_radius, blur_radius:-blur_radius]
        return (blurred.permute(0, 2, 3, 1),)


class ImageSharpen:
    CATEGORY = "image/postprocessing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sharpen"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
                "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
                "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}),
            }
        }

    def sharpen(self, image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float):
        import torch
        import torch.nn.functional as F  # noqa: N812

        if sharpen_radius == 0:
            return (image,)
        channels = image.shape[3]
        kernel_size = sharpen_radius * 2 + 1
        kernel = gaussian_kernel(kernel_size, sigma, device=image.device, dtype=image.dtype) * -(alpha * 10)
        kernel = kernel.to(dtype=image.dtype)
        center = kernel_size // 2
        kernel[center, center] = kernel[center, center] - kernel.sum() + 1.0
        kernel = kernel.repeat(channels, 1, 1).unsqueeze(1)
        tensor_image = image.permute(0, 3, 1, 2)
        r = sharpen_radius
        tensor_image = F.pad(tensor_image, (r, r, r, r), "reflect")
        sharpened = F.conv2d(tensor_image, kernel, padding=center, groups=channels)[:, :, r:-r, r:-r]
        return (torch.clamp(sharpened.permute(0, 2, 3, 1), 0, 1),)


class ImageQuantize:
    CATEGORY = "image/postprocessing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "quantize"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "image": ("IMAGE",),
                "colors": ("INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
                "dither": (DITHER_MODES,),
            }
        }

    @staticmethod
    def bayer(im: Image.Image, pal_im: Image.Image, order: int) -> Image.Image:
        import torch

        def normalized_bayer_matrix(n: int) -> np.ndarray:
            if n == 0:
                return np.zeros((1, 1), "float32")
            q = 4**n
            m = q * normalized_bayer_matrix(n - 1)
            return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q

        num_colors = len(pal_im.getpalette()) // 3
        spread = 2 * 256 / num_colors
        bayer_n = int(math.log2(order))
        bayer_matrix = torch.from_numpy(spread * normalized_bayer_matrix(bayer_n) + 0.5)
        result = torch.from_numpy(np.array(im).astype(np.float32))
        tw = math.ceil(result.shape[0] / bayer_matrix.shape[0])
        th = math.ceil(result.shape[1] / bayer_matrix.shape[1])
        tiled = bayer_matrix.tile(tw, th).unsqueeze(-1)
        result.add_(tiled[: result.shape[0], : result.shape[1]]).clamp_(0, 255)
        im = Image.fromarray(result.to(dtype=torch.uint8).cpu().numpy())
        return im.quantize(palette=pal_im, dither=Image.Dither.NONE)

    def quantize(self, image: torch.Tensor, colors: int, dither: str):
        import torch

        rgb = image[..., :3]
        batch_size = rgb.shape[0]
        result = torch.zeros_like(rgb)
        for b in range(batch_size):
            im = Image.fromarray((rgb[b] * 255).to(torch.uint8).cpu().numpy(), mode="RGB")
            # The palette comes from a first quantize (Pillow issue 5836).
            pal_im = im.quantize(colors=colors)
            if dither == "none":
                quantized = im.quantize(palette=pal_im, dither=Image.Dither.NONE)
            elif dither == "floyd-steinberg":
                quantized = im.quantize(palette=pal_im, dither=Image.Dither.FLOYDSTEINBERG)
            elif dither.startswith("bayer"):
                quantized = self.bayer(im, pal_im, int(dither.split("-")[-1]))
            else:
                raise ValueError(f"Unsupported dither mode: {dither}")
            result[b] = torch.tensor(np.array(quantized.convert("RGB"))).float() / 255
        if image.shape[-1] == 4:
            result = torch.cat((result, image[..., 3:]), dim=-1)
        return (result,)
