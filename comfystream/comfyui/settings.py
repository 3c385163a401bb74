"""How a worker runs a ComfyUI workspace: ComfyUI's model-management options, as comfystream names them.

ComfyUI reads these from `comfy.cli_args.args` when `comfy.model_management` is imported, so
`apply_to_args` must run before that import (the loader sees to it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# ComfyUI's --preview-method values (comfy.cli_args.LatentPreviewMethod).
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")
# ComfyUI's mutually exclusive VRAM options (--gpu-only is one of them there too).
VRAM_MODES = ("gpu_only", "highvram", "normalvram", "lowvram", "novram", "cpu")


class WorkspaceSettingsError(ValueError):
    """A workspace setting has a value ComfyUI cannot take."""


@dataclass(frozen=True)
class WorkspaceSettings:
    """Options applied to ComfyUI before it is imported in a worker.

    `gpu_only`, `disable_cuda_malloc` and `preview_method` are the stream parameters of the
    seed; `vram_mode` picks one of ComfyUI's VRAM modes. `cpu=None` means: run on the CPU when
    torch sees no GPU (ComfyUI itself would fail to start there).
    """

    gpu_only: bool = False
    disable_cuda_malloc: bool = False
    preview_method: str = "none"
    vram_mode: str | None = None
    cpu: bool | None = None
    # Load DIR/custom_nodes (and `extra_custom_node_dirs`); off gives core + comfy_extras only.
    load_custom_nodes: bool = True
    extra_custom_node_dirs: tuple[str, ...] = ()
    # Extra `extra_model_paths.yaml` files; DIR/extra_model_paths.yaml is read when present.
    extra_model_paths: tuple[str, ...] = ()
    # ComfyUI's paid API nodes (comfy_api_nodes) need network access and keys: off by default.
    api_nodes: bool = False
    # Anything else of comfy.cli_args.args, by its attribute name (e.g. {"force_fp16": True}).
    extra_args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preview_method not in PREVIEW_METHODS:
            raise WorkspaceSettingsError(
                f"preview_method must be one of {', '.join(PREVIEW_METHODS)}, got {self.preview_method!r}"
            )
        if self.vram_mode is not None and self.vram_mode not in VRAM_MODES:
            raise WorkspaceSettingsError(
                f"vram_mode must be one of {', '.join(VRAM_MODES)}, got {self.vram_mode!r}"
            )
        if self.gpu_only and self.vram_mode not in (None, "gpu_only"):
            raise WorkspaceSettingsError(
                f"gpu_only and vram_mode={self.vram_mode!r} exclude each other (ComfyUI takes one VRAM mode)"
            )
        if self.cpu and (self.gpu_only or self.vram_mode == "gpu_only"):
            raise WorkspaceSettingsError("cpu and gpu_only exclude each other")
        # Lists from JSON become tuples, so that settings stay hashable and comparable.
        object.__setattr__(self, "extra_custom_node_dirs", tuple(str(p) for p in self.extra_custom_node_dirs))
        object.__setattr__(self, "extra_model_paths", tuple(str(p) for p in self.extra_model_paths))
        object.__setattr__(self, "extra_args", dict(self.extra_args))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> WorkspaceSettings:
        """From a stream's parameters or a config dict; unknown keys are ignored (they belong to
        other layers: `width`, `height`, `cwd`, ...)."""
        if values is None:
            return cls()
        if isinstance(values, WorkspaceSettings):
            return values
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in names and v is not None}
        for flag in ("gpu_only", "disable_cuda_malloc", "load_custom_nodes", "api_nodes"):
            if flag in kwargs and not isinstance(kwargs[flag], bool):
                raise WorkspaceSettingsError(f"{flag} must be true or false, got {kwargs[flag]!r}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["extra_custom_node_dirs"] = list(self.extra_custom_node_dirs)
        out["extra_model_paths"] = list(self.extra_model_paths)
        return out

    def effective_vram_mode(self, has_accelerator: bool) -> str | None:
        """The ComfyUI VRAM option to set, `cpu` when nothing else can run."""
        if self.cpu or not has_accelerator:  # ComfyUI fails to start on a GPU mode without a GPU
            return "cpu"
        if self.gpu_only:
            return "gpu_only"
        return self.vram_mode


def torch_has_accelerator() -> bool:
    """Whether ComfyUI would find a device other than the CPU (without initialising CUDA)."""
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def apply_to_args(args: Any, settings: WorkspaceSettings, has_accelerator: bool) -> dict[str, Any]:
    """Set ComfyUI's parsed command-line `args` from `settings`; returns what was set."""
    from comfy.cli_args import LatentPreviewMethod

    applied: dict[str, Any] = {}

    def put(name: str, value: Any) -> None:
        if not hasattr(args, name):
            raise WorkspaceSettingsError(f"this ComfyUI has no option {name!r}")
        setattr(args, name, value)
        applied[name] = value

    mode = settings.effective_vram_mode(has_accelerator)
    for name in VRAM_MODES:
        put(name, name == mode)
    put("disable_cuda_malloc", settings.disable_cuda_malloc)
    if settings.disable_cuda_malloc:
        put("cuda_malloc", False)
    put("preview_method", LatentPreviewMethod(settings.preview_method))
    if hasattr(args, "disable_api_nodes"):  # newer ComfyUI only
        put("disable_api_nodes", not settings.api_nodes)
    for name, value in settings.extra_args.items():
        put(name, value)
    return applied

