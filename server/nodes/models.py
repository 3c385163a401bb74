"""What `GET /stream/{id}/workspace-info` says of the nodes prompts run with (pydantic, in
/openapi.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class CustomNodePackage(BaseModel):
    name: str
    path: str
    loaded: bool
    nodes: list[str] = Field(default_factory=list, description="the node types it added")
    error: str | None = Field(None, description="why it failed to import (a traceback), when it did")


class WorkspaceInfo(BaseModel):
    """The seed's fields (`workspace_path`, `config_keys`, `total_workers`, `active_prompt_id`) and
    the nodes prompts run with: a ComfyUI workspace's (`--workspace`) or the built-in engine's."""

    engine: Literal["comfyui", "builtin"] = Field(
        ..., description="comfyui: a ComfyUI workspace is loaded; builtin: comfystream's own engine"
    )
    message: str = Field(..., description="the same, in a sentence")
    workspace_path: str | None
    comfyui_version: str | None = None
    nodes_loaded: int = Field(..., description="node types prompts may use")
    comfyui_nodes: int = Field(0, description="of which come from the ComfyUI workspace")
    custom_node_dirs: list[str]
    custom_node_packages: list[CustomNodePackage] = Field(default_factory=list)
    load_errors: dict[str, str] = Field(
        default_factory=dict, description="{package path: error} of every custom node package that failed"
    )
    config_keys: list[str]
    total_workers: int
    active_prompt_id: str | None = None


class WorkspaceInfoResponse(BaseModel):
    success: bool = True
    stream_id: str
    workspace_info: WorkspaceInfo
