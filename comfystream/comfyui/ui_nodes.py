"""comfystream's stream nodes as ComfyUI itself loads them (the package `setup-workspace` installs).

In ComfyUI's own UI there is no stream: `LoadTensor` gives a placeholder frame so that a
workflow can be built and tried there, and `SaveTensor` shows what it would send, as
`PreviewImage` does. Inside a comfystream execution they are comfystream's own nodes.

torch is imported where it is used, as in comfystream's own nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comfystream.engine.context import current_context
from comfystream.nodes import NODE_CLASS_MAPPINGS as _BUILTIN
from comfystream.nodes import NODE_DISPLAY_NAME_MAPPINGS as _BUILTIN_NAMES
from comfystream.nodes import frame_io

if TYPE_CHECKING:
    import torch

PLACEHOLDER_SIZE = 512


def placeholder_frame(width: int = PLACEHOLDER_SIZE, height: int = PLACEHOLDER_SIZE) -> torch.Tensor:
    """A colour ramp `[1,H,W,3]` in 0..1, standing in for a stream frame in ComfyUI's UI."""
    import torch

    ys = torch.linspace(0.0, 1.0, height).view(height, 1).expand(height, width)
    xs = torch.linspace(0.0, 1.0, width).view(1, width).expand(height, width)
    return torch.stack([xs, ys, 1.0 - xs * ys], dim=-1).unsqueeze(0).contiguous()


class LoadTensor(frame_io.LoadTensor):
    DESCRIPTION = "The input frame of the stream. In ComfyUI's own UI: a placeholder colour ramp."

    def execute(self, timeout_seconds: float = 1.0):
        if current_context() is None:
            return (placeholder_frame(),)
        return super().execute(timeout_seconds)


class SaveTensor(frame_io.SaveTensor):
    DESCRIPTION = "The output frame of the stream. In ComfyUI's own UI: shown as a preview."

    def execute(self, images: torch.Tensor) -> Any:
        if current_context() is None:
            import nodes  # ComfyUI's, present when ComfyUI runs this package

            return nodes.PreviewImage().save_images(images)
        return super().execute(images)


def _frame_nodes() -> dict[str, type]:
    """Every built-in node of the frame I/O module, with the UI faces above where there is one."""
    faces = {"LoadTensor": LoadTensor, "SaveTensor": SaveTensor}
    return {
        name: faces.get(name, cls)
        for name, cls in _BUILTIN.items()
        if getattr(cls, "__module__", "") == frame_io.__name__
    }


NODE_CLASS_MAPPINGS: dict[str, type] = _frame_nodes()
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    name: _BUILTIN_NAMES[name] for name in NODE_CLASS_MAPPINGS if name in _BUILTIN_NAMES
}
