"""The nodes this server validates prompts against, and what `GET /stream/{id}/workspace-info` says
of them: with `--workspace`, the ComfyUI workspace loaded (its version, nodes, custom node packages
and their load errors); without, comfystream's built-in engine and `--custom-nodes`."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from comfystream.comfyui import WorkspaceInfo as LoadedWorkspace
from server.config import ServerConfig
from server.nodes.models import CustomNodePackage, WorkspaceInfo

logger = logging.getLogger(__name__)

# What a worker is configured with (the seed's workspace-info `config_keys`).
# Params that configure a worker process itself (the seed's restart parameters), and the keys of a
# worker's config that workspace-info lists.
WORKER_PARAMS = ("cwd", "disable_cuda_malloc", "gpu_only")
WORKER_CONFIG_KEYS = (*WORKER_PARAMS, "preview_method")
BUILTIN_SOURCE = "comfystream"  # the registry's source of comfystream's own nodes


@dataclass
class NodeSetup:
    registry: Any  # comfystream.engine.NodeRegistry
    workspace: LoadedWorkspace | None = None  # None: no --workspace


def load_nodes(config: ServerConfig) -> NodeSetup:
    """comfystream's built-in nodes and `--custom-nodes`, plus, with `--workspace`, that ComfyUI
    workspace's nodes (loaded on the CPU here: the server only validates; workers run them on their
    GPUs). Each custom node package is imported once: with a workspace ComfyUI's loader takes
    `--custom-nodes` (they may import comfy.*), as it does in the workers; without, the engine's."""
    from comfystream.nodes import build_registry

    custom = [str(d) for d in config.custom_nodes]
    workspace = None
    if config.workspace is None:
        registry = build_registry(custom_node_dirs=custom)
    else:
        from comfystream.comfyui import WorkspaceSettings, load_workspace

        registry = build_registry()
        settings = WorkspaceSettings(
            cpu=True,
            extra_custom_node_dirs=tuple(custom),
            extra_model_paths=tuple(str(p) for p in config.extra_model_paths),
        )
        workspace = load_workspace(config.workspace, settings, registry)
        logger.info(
            "workspace %s: ComfyUI %s, %d node types (%d from ComfyUI)",
            workspace.workspace_path,
            workspace.comfyui_version or "(unknown version)",
            workspace.nodes_loaded,
            workspace.comfyui_nodes,
        )
    for package, error in load_errors(registry, workspace).items():
        logger.warning("custom nodes %s failed to load: %s", package, str(error).strip().splitlines()[-1:])
    return NodeSetup(registry, workspace)


def load_errors(registry: Any, workspace: LoadedWorkspace | None) -> dict[str, str]:
    """{package path: error} of every custom node package that failed, whoever loaded it."""
    errors = {str(k): str(v) for k, v in (getattr(registry, "load_errors", {}) or {}).items()}
    if workspace is not None:
        errors.update(workspace.load_errors)
    return errors


def _engine_packages(registry: Any) -> list[CustomNodePackage]:
    """The custom node packages the engine's loader imported (nodes by source), and those it could not."""
    nodes: dict[str, list[str]] = defaultdict(list)
    for name, source in (getattr(registry, "sources", {}) or {}).items():
        if source != BUILTIN_SOURCE:
            nodes[str(source)].append(name)
    failed = {str(k): str(v) for k, v in (getattr(registry, "load_errors", {}) or {}).items()}
    return [
        CustomNodePackage(
            name=path.rstrip("/").rsplit("/", 1)[-1],
            path=path,
            loaded=path not in failed or bool(nodes.get(path)),
            nodes=sorted(nodes.get(path, [])),
            error=failed.get(path),
        )
        for path in sorted(set(nodes) | set(failed))
    ]


def describe(
    registry: Any,
    workspace: LoadedWorkspace | None,
    config: ServerConfig,
    from_pipeline: dict[str, Any],
    worker_count: int,
) -> WorkspaceInfo:
    """The workspace-info body: the server's nodes, and the stream's workers (`from_pipeline`: its
    pipeline's `workspace_info()`)."""
    common = {
        "custom_node_dirs": [str(d) for d in config.custom_node_dirs],
        "config_keys": sorted(set(from_pipeline.get("config_keys") or []) | set(WORKER_CONFIG_KEYS)),
        "total_workers": int(from_pipeline.get("total_workers", worker_count)),
        "active_prompt_id": from_pipeline.get("active_prompt_id"),
        "nodes_loaded": len(registry),
        "load_errors": load_errors(registry, workspace),
    }
    if workspace is None:
        return WorkspaceInfo(
            engine="builtin",
            message=(
                f"no ComfyUI workspace (--workspace): prompts run on comfystream's built-in engine, "
                f"{len(registry)} node types"
            ),
            workspace_path=from_pipeline.get("workspace_path"),
            custom_node_packages=_engine_packages(registry),
            **common,
        )
    return WorkspaceInfo(
        engine="comfyui",
        message=f"ComfyUI {workspace.comfyui_version or '(unknown version)'} at {workspace.workspace_path}",
        workspace_path=workspace.workspace_path,
        comfyui_version=workspace.comfyui_version,
        comfyui_nodes=workspace.comfyui_nodes,
        custom_node_packages=[
            CustomNodePackage(name=p.name, path=p.path, loaded=p.loaded, nodes=list(p.nodes), error=p.error)
            for p in workspace.custom_node_packages
        ],
        **common,
    )
