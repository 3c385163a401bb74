"""One-shot image I/O nodes: LoadImage, SaveImage, PreviewImage (ComfyUI's inputs, outputs and ui).

torch is imported where it is used: the server imports this module for node definitions and
never computes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from comfystream.nodes import folders
from comfystream.nodes.tensor_utils import to_uint8_image

if TYPE_CHECKING:
    import torch


class LoadImage:
    """An image from the input folder (or a path): IMAGE `[B,H,W,3]` and MASK (1 - alpha)."""

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 - ComfyUI's protocol
        return {"required": {"image": (folders.list_input_images(), {"image_upload": True})}}

    def load_image(self, image: str):
        import torch

        path = folders.annotated_filepath(image)
        img = Image.open(path)
        output_images = []
        output_masks = []
        w = h = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda i: i * (1 / 255))
            rgb = frame.convert("RGB")
            if not output_images:
                w, h = rgb.size
            if rgb.size != (w, h):
                continue  # frames of another size are skipped, as ComfyUI does
            output_images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
            if "A" in frame.getbands():
                mask = 1.0 - torch.from_numpy(np.array(frame.getchannel("A")).astype(np.float32) / 255.0)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            output_masks.append(mask.unsqueeze(0))
        if len(output_images) > 1 and img.format not in ("MPO",):
            return (torch.cat(output_images, dim=0), torch.cat(output_masks, dim=0))
        return (output_images[0], output_masks[0])

    @classmethod
    def IS_CHANGED(cls, image):  # noqa: N802
        m = hashlib.sha256()
        with open(folders.annotated_filepath(image), "rb") as f:
            m.update(f.read())
        return m.digest().hex()

    @classmethod
    def VALIDATE_INPUTS(cls, image=None):  # noqa: N802
        # No image at all (an empty input folder leaves the editor's list empty, so it sends none):
        # say where images come from rather than fail on the missing argument.
        if image is None or image == "":
            return (
                "no image chosen: put one in the input folder "
                f"({folders.get_input_directory()}) or upload one (the node's upload button, "
                "POST /upload/image), then pick it"
            )
        # A name outside the folders gets the answer of a missing file: whether it exists stays unsaid.
        try:
            valid = isinstance(image, str) and os.path.isfile(folders.annotated_filepath(image))
        except folders.PathOutsideFolders:
            valid = False
        return True if valid else f"Invalid image file: {image}"


class PrimaryInputLoadImage(LoadImage):
    """comfystream's marker for the image that becomes the stream input when a UI prompt is converted."""

    CATEGORY = "ComfyStream/Loaders"


class SaveImage:
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    def __init__(self):
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    def folder(self) -> str:
        return folders.get_output_directory()

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                    },
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(
        self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None
    ):
        filename_prefix += self.prefix_append
        output_dir = self.folder()
        folder, filename, counter, subfolder = folders.save_image_path(
            filename_prefix, output_dir, images[0].shape[1], images[0].shape[0]
        )
        results = []
        for batch_number, image in enumerate(images):
            img = Image.fromarray(to_uint8_image(image))
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for key in extra_pnginfo:
                    metadata.add_text(key, json.dumps(extra_pnginfo[key]))
            file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            img.save(os.path.join(folder, file), pnginfo=metadata, compress_level=self.compress_level)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    DESCRIPTION = "Preview the images without saving them to the ComfyUI output directory."

    def __init__(self):
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    def folder(self) -> str:
        return folders.get_temp_directory()

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {
            "required": {"images": ("IMAGE",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }
