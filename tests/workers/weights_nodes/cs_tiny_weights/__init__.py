"""A small model loaded from a safetensors file, as ComfyUI's loaders do (tests of shared weights).

`TinyWeightsLoader` (a loader: ComfyUI's `loaders` category) builds the network and copies the
file's tensors into it (private memory, as `load_state_dict` does in ComfyUI);
`TinyWeightsPatchInPlace` adds to every weight in place, as a LoRA patch merged into the weights
does; `TinyWeightsApply` colours each frame by a value computed through every layer, so that any
change to any weight shows in the output; `TinyWeightsOwnWay` keeps a model in the node itself
(a custom node that loads its model its own way).
"""

from __future__ import annotations

import torch

WIDTH = 1024


class _Linear(torch.nn.Linear):
    """Not initialised: the file's tensors fill it (ComfyUI's loaders build with
    comfy.ops.disable_weight_init for the same reason: a random init of 128 MiB is CPU for nothing)."""

    def reset_parameters(self) -> None:
        return None


class TinyNet(torch.nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Linear(WIDTH, WIDTH) for _ in range(layers))
        self.head = _Linear(WIDTH, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        v = torch.linspace(-1.0, 1.0, WIDTH)
        for layer in self.layers:
            v = torch.tanh(layer(v))
        colour = torch.sigmoid(self.head(v))
        return (image * 0.5 + colour * 0.5).clamp(0.0, 1.0)


def make_weights(layers: int, seed: int) -> dict[str, torch.Tensor]:
    """The file's tensors (what a test writes with safetensors' save_file)."""
    generator = torch.Generator().manual_seed(seed)
    net = TinyNet(layers)
    return {
        name: (torch.randn(t.shape, generator=generator) / WIDTH**0.5).contiguous()
        for name, t in net.state_dict().items()
    }


def load(path: str) -> TinyNet:
    from safetensors.torch import load_file

    state = load_file(path)
    layers = sum(1 for k in state if k.startswith("layers.") and k.endswith(".weight"))
    net = TinyNet(layers)
    net.load_state_dict(state)
    return net.eval()


class TinyWeightsLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("TINY_MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"path": ("STRING", {"default": ""})}}

    def load(self, path):
        return (load(path),)


class TinyWeightsPatchInPlace:
    CATEGORY = "advanced/model_patches"
    RETURN_TYPES = ("TINY_MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"model": ("TINY_MODEL",), "amount": ("FLOAT", {"default": 0.01})}}

    def patch(self, model, amount):
        for p in model.parameters():
            p.add_(amount)  # in place, into whatever memory the weights are in
        return (model,)


class TinyWeightsApply:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"model": ("TINY_MODEL",), "image": ("IMAGE",)}}

    def apply(self, model, image):
        return (model(image),)


_OWN: dict[str, TinyNet] = {}


class TinyWeightsOwnWay:
    """Loads its model into a dict of its own and returns only a name: nothing to share."""

    CATEGORY = "loaders"
    RETURN_TYPES = ("STRING",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"path": ("STRING", {"default": ""})}}

    def load(self, path):
        _OWN[path] = load(path)
        return (path,)


class TinyWeightsApplyOwn:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"name": ("STRING", {"forceInput": True}), "image": ("IMAGE",)}}

    def apply(self, name, image):
        return (_OWN[name](image),)


NODE_CLASS_MAPPINGS = {
    "TinyWeightsLoader": TinyWeightsLoader,
    "TinyWeightsPatchInPlace": TinyWeightsPatchInPlace,
    "TinyWeightsApply": TinyWeightsApply,
    "TinyWeightsOwnWay": TinyWeightsOwnWay,
    "TinyWeightsApplyOwn": TinyWeightsApplyOwn,
}
