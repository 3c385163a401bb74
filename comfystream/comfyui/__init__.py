"""Running a real ComfyUI workspace's nodes in comfystream's workers, and setting one up.

A worker calls `load_workspace(path, settings, registry)` once, in its initializer; the server
calls `check_workspace(path)` at start so that a bad `--workspace` fails early.
"""

from comfystream.comfyui.info import NodeClash, NodePackageInfo, WorkspaceError, WorkspaceInfo
from comfystream.comfyui.settings import WorkspaceSettings, WorkspaceSettingsError
from comfystream.comfyui.workspace import check_workspace, comfyui_version, load_workspace

__all__ = [
    "NodeClash",
    "NodePackageInfo",
    "WorkspaceError",
    "WorkspaceInfo",
    "WorkspaceSettings",
    "WorkspaceSettingsError",
    "check_workspace",
    "comfyui_version",
    "load_workspace",
]
