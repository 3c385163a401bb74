"""A GPU-bound stand-in model for measuring throughput and latency without downloading weights.

`StandInModel` runs a small convolutional network with random (seeded) weights over each frame:
conv 3x3 (3 -> channels), `layers` x conv 3x3 (channels -> channels), conv 3x3 (channels -> 3),
ReLU between them, added to the input as a small residual (the output stays a recognisable,
slightly altered picture in 0..1). Its cost grows with `channels`^2 * `layers` * pixels: about
9 * 2 * (6 * channels + layers * channels^2) FLOPs per pixel (64 channels, 8 layers: 157 GFLOP
per 512x512 frame). It runs on CUDA when torch sees a GPU, else on the CPU; on CUDA in half
precision unless `precision` says fp32, with channels-last convolutions (a ComfyUI IMAGE,
[B,H,W,C], viewed as [B,C,H,W] already is channels-last: no copy).

Use it as a custom node package: `comfystream serve --custom-nodes examples/custom_nodes`, and the
prompt LoadTensor -> StandInModel -> SaveTensor (`PROMPT` below). `bench/gpu.py` uses it.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

_MODELS: dict[tuple[int, int, int, str, torch.dtype], torch.nn.Module] = {}
_LOCK = threading.Lock()  # a worker prepares prompts in a thread beside its frame loop


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def build_model(
    channels: int, layers: int, seed: int, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The network, random weights from `seed` (the same on every device), ready for inference."""
    generator = torch.Generator().manual_seed(seed)
    convs = [torch.nn.Conv2d(3, channels, 3, padding=1)]
    convs += [torch.nn.Conv2d(channels, channels, 3, padding=1) for _ in range(layers)]
    convs += [torch.nn.Conv2d(channels, 3, 3, padding=1)]
    parts: list[torch.nn.Module] = []
    with torch.no_grad():
        for i, conv in enumerate(convs):
            fan_in = conv.in_channels * 9
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            conv.bias.zero_()
            parts.append(conv)
            if i < len(convs) - 1:
                parts.append(torch.nn.ReLU(inplace=True))
    model = torch.nn.Sequential(*parts).eval().requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.to(device=device, dtype=dtype)


def get_model(
    channels: int, layers: int, seed: int, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    key = (channels, layers, seed, str(device), dtype)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _MODELS[key] = build_model(channels, layers, seed, device, dtype)
        return model


def run_model(
    images: torch.Tensor, channels: int, layers: int, seed: int = 0, precision: str = "auto"
) -> torch.Tensor:
    """IMAGE [B,H,W,3] float 0..1 -> IMAGE of the same shape, float32, on the model's device."""
    device = default_device()
    half = precision == "fp16" or (precision == "auto" and device.type == "cuda")
    dtype = torch.float16 if half and device.type == "cuda" else torch.float32
    model = get_model(channels, layers, seed, device, dtype)
    with torch.inference_mode():
        x = images.to(device=device, dtype=dtype).permute(0, 3, 1, 2)  # [B,C,H,W], channels-last strides
        delta = torch.tanh(model(x)).mul_(0.1)
        return (x + delta).clamp_(0.0, 1.0).permute(0, 2, 3, 1).float()


class StandInModel:
    DESCRIPTION = "A small convolutional network with random weights: a GPU-bound stand-in for a real model."
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "ComfyStream/bench"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "channels": ("INT", {"default": 64, "min": 1, "max": 1024}),
                "layers": ("INT", {"default": 8, "min": 0, "max": 128}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "precision": (["auto", "fp32", "fp16"], {"default": "auto"}),
            }
        }

    def run(
        self, images: torch.Tensor, channels: int, layers: int, seed: int, precision: str
    ) -> tuple[torch.Tensor]:
        return (run_model(images, channels, layers, seed, precision),)


def prompt(channels: int = 64, layers: int = 8, seed: int = 0, precision: str = "auto") -> dict[str, Any]:
    """The stream prompt LoadTensor -> StandInModel -> SaveTensor."""
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {
            "class_type": "StandInModel",
            "inputs": {
                "images": ["1", 0],
                "channels": channels,
                "layers": layers,
                "seed": seed,
                "precision": precision,
            },
        },
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


PROMPT = prompt()
NODE_CLASS_MAPPINGS = {"StandInModel": StandInModel}
NODE_DISPLAY_NAME_MAPPINGS = {"StandInModel": "Stand-in model (random conv net)"}
