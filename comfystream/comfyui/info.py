"""What a worker reports about the ComfyUI workspace it loaded (crosses the process boundary)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class WorkspaceError(RuntimeError):
    """The workspace is missing, is not a ComfyUI checkout, or ComfyUI failed to import from it."""


@dataclass
class NodePackageInfo:
    """One module ComfyUI loads nodes from: a `comfy_extras` file or a custom node package."""

    name: str
    path: str
    kind: str  # "comfy_extras" | "custom_nodes" | "comfy_api_nodes"
    loaded: bool
    nodes: list[str] = field(default_factory=list)
    error: str | None = None  # ComfyUI's import traceback / message when it failed
    import_seconds: float = 0.0
    skipped: str | None = None  # why it was not imported at all (e.g. comfystream's own nodes)


@dataclass
class NodeClash:
    """Two sources define a node name; `kept` is the one that runs."""

    name: str
    kept: str
    rejected: str


@dataclass
class WorkspaceInfo:
    """The `workspace_info` of the seed, from the worker's side.

    The server adds `total_workers` and `active_prompt_id`; `config_keys` are the settings this
    worker applied to ComfyUI.
    """

    workspace_path: str
    comfyui_version: str | None
    nodes_loaded: int  # every node name the worker's registry can run
    comfyui_nodes: int  # of which come from the workspace (core, comfy_extras, custom_nodes)
    packages: list[NodePackageInfo] = field(default_factory=list)
    clashes: list[NodeClash] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    models_dir: str | None = None
    load_seconds: float = 0.0

    @property
    def config_keys(self) -> list[str]:
        return sorted(self.settings)

    @property
    def custom_node_packages(self) -> list[NodePackageInfo]:
        return [p for p in self.packages if p.kind == "custom_nodes"]

    @property
    def load_errors(self) -> dict[str, str]:
        """{package path: error} for every package that failed to import."""
        return {p.path: p.error or "import failed" for p in self.packages if not p.loaded and not p.skipped}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["config_keys"] = self.config_keys
        out["load_errors"] = self.load_errors
        out["custom_node_packages"] = [asdict(p) for p in self.custom_node_packages]
        return out
