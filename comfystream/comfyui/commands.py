"""`comfystream setup-workspace DIR` and `comfystream workspace-info DIR`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from comfystream.comfyui.info import WorkspaceError
from comfystream.comfyui.installer import GPU_CHOICES
from comfystream.comfyui.settings import (
    PREVIEW_METHODS,
    VRAM_MODES,
    WorkspaceSettings,
    WorkspaceSettingsError,
)

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "setup-workspace",
        help="install ComfyUI with comfy-cli and comfystream's nodes into it",
        description=(
            "Installs ComfyUI at DIR with comfy-cli (pip install 'comfystream[workspace]'; needs network "
            "access to GitHub and PyPI), unless DIR already holds ComfyUI, and copies comfystream's stream "
            "nodes (LoadTensor, SaveTensor, ...) to DIR/custom_nodes/comfystream_nodes."
        ),
    )
    p.add_argument("workspace", metavar="DIR", help="where ComfyUI is (or goes)")
    p.add_argument("--gpu", choices=GPU_CHOICES, help="comfy-cli's GPU choice (default: nvidia when torch sees one, else cpu)")
    p.add_argument("--comfyui-version", metavar="VERSION", help="ComfyUI version for comfy-cli: nightly, latest or X.Y.Z")
    p.add_argument(
        "--with-torch",
        action="store_true",
        help="let comfy-cli install torch and all of ComfyUI's requirements (default: keep this environment's torch)",
    )
    p.add_argument("--skip-manager", action="store_true", help="do not install ComfyUI-Manager")
    p.add_argument("--link", action="store_true", help="symlink the node package instead of copying it")
    p.add_argument("--nodes-only", action="store_true", help="only install the node package into an existing ComfyUI")
    p.set_defaults(func=cmd_setup_workspace)

    p = subparsers.add_parser(
        "workspace-info",
        help="load a ComfyUI workspace as a worker would and report its nodes and load errors",
        description="Prints the workspace's information as JSON; exits 1 when the workspace cannot be loaded.",
    )
    p.add_argument("workspace", metavar="DIR", help="the ComfyUI workspace")
    add_settings_arguments(p)
    p.add_argument("--nodes", action="store_true", help="list every node name by source")
    p.set_defaults(func=cmd_workspace_info)

    p = subparsers.add_parser(
        "make-test-checkpoint",
        help="build an SD 1.5 checkpoint with seeded random weights from ComfyUI's own model classes",
        description=(
            "Writes OUT (safetensors, about 2 GB in float16) with the exact key layout of an SD 1.5 "
            "checkpoint, its weights random from SEED. Nothing is downloaded. An OUT already made "
            "with the same seed and dtype is kept (the tests build it once)."
        ),
    )
    p.add_argument("out", metavar="OUT.safetensors")
    p.add_argument("--comfyui", metavar="DIR", required=True, help="a ComfyUI checkout whose model classes to use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float16", "float32", "bfloat16"), default="float16")
    p.add_argument("--force", action="store_true", help="build it even when OUT is already there")
    p.set_defaults(func=cmd_make_test_checkpoint)


def add_workspace_argument(parser: argparse.ArgumentParser) -> None:
    """`--workspace DIR`, for the commands that run workflows (serve, execute, validate)."""
    parser.add_argument(
        "--workspace",
        metavar="DIR",
        default=None,
        help="a ComfyUI workspace whose nodes (core, comfy_extras, custom_nodes) and models the workflows use",
    )
    add_model_paths_argument(parser)


def add_model_paths_argument(parser: argparse.ArgumentParser) -> None:
    """ComfyUI's --extra-model-paths-config: models kept outside the workspace."""
    parser.add_argument(
        "--extra-model-paths",
        metavar="FILE",
        action="append",
        default=[],
        help="an extra_model_paths.yaml (ComfyUI's format) naming more model folders, repeatable; "
        "the workspace's own DIR/extra_model_paths.yaml is always read",
    )


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """ComfyUI's model-management options, as workspace settings."""
    parser.add_argument("--gpu-only", action="store_true", help="ComfyUI's --gpu-only")
    parser.add_argument("--disable-cuda-malloc", action="store_true", help="ComfyUI's --disable-cuda-malloc")
    parser.add_argument("--preview-method", choices=PREVIEW_METHODS, default="none", help="ComfyUI's --preview-method")
    parser.add_argument("--vram-mode", choices=VRAM_MODES, default=None, help="one of ComfyUI's VRAM options")
    parser.add_argument("--no-custom-nodes", action="store_true", help="load core and comfy_extras nodes only")


def registry_with_workspace(
    workspace: str, custom_nodes: list[str] | None = None, extra_model_paths: list[str] | None = None
):
    """comfystream's nodes plus the workspace's (and `custom_nodes`, loaded as ComfyUI loads
    them), for a command that runs in this process; a bad workspace exits with status 2."""
    from comfystream.comfyui.workspace import load_workspace
    from comfystream.nodes import build_registry

    registry = build_registry()
    try:
        settings = WorkspaceSettings(
            extra_custom_node_dirs=tuple(custom_nodes or ()), extra_model_paths=tuple(extra_model_paths or ())
        )
        info = load_workspace(workspace, settings, registry)
    except WorkspaceError as exc:
        print(f"workspace: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    for path, error in info.load_errors.items():
        last = error.strip().splitlines()[-1] if error.strip() else ""
        print(f"workspace: could not load {path}: {last}", file=sys.stderr)
    return registry


def settings_from_args(args: argparse.Namespace) -> WorkspaceSettings:
    return WorkspaceSettings(
        gpu_only=bool(getattr(args, "gpu_only", False)),
        disable_cuda_malloc=bool(getattr(args, "disable_cuda_malloc", False)),
        preview_method=getattr(args, "preview_method", None) or "none",
        vram_mode=getattr(args, "vram_mode", None),
        load_custom_nodes=not getattr(args, "no_custom_nodes", False),
    )


def cmd_setup_workspace(args: argparse.Namespace) -> int:
    from comfystream.comfyui.installer import setup_workspace

    try:
        result = setup_workspace(
            args.workspace,
            gpu=args.gpu,
            version=args.comfyui_version,
            with_torch=args.with_torch,
            skip_manager=args.skip_manager,
            link=args.link,
            nodes_only=args.nodes_only,
        )
    except WorkspaceError as exc:
        print(f"setup-workspace: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "ok": True,
                "workspace": str(result.workspace),
                "installed_comfyui": result.installed_comfyui,
                "node_package": str(result.node_package),
            }
        )
    )
    return 0


def cmd_workspace_info(args: argparse.Namespace) -> int:
    from comfystream.comfyui.workspace import check_workspace, load_workspace

    try:
        check_workspace(args.workspace)  # before importing the engine (and torch) for nothing
        settings = settings_from_args(args)
        from comfystream.nodes import build_registry

        registry = build_registry()
        info = load_workspace(args.workspace, settings, registry)
    except (WorkspaceError, WorkspaceSettingsError) as exc:
        print(f"workspace-info: {exc}", file=sys.stderr)
        return 1
    out = info.to_dict()
    if args.nodes:
        by_source: dict[str, list[str]] = {}
        for name in registry:
            by_source.setdefault(registry.sources.get(name, "?"), []).append(name)
        out["nodes"] = by_source
    else:  # the full package list is long: keep the ones worth reading
        out["packages"] = [p for p in out["packages"] if p["kind"] == "custom_nodes" or not p["loaded"]]
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_make_test_checkpoint(args: argparse.Namespace) -> int:
    from comfystream.comfyui.random_checkpoint import existing_checkpoint, make_checkpoint
    from comfystream.comfyui.workspace import load_workspace

    if not args.force and existing_checkpoint(args.out, args.seed, args.dtype):
        print(json.dumps({"path": args.out, "kept": True}))
        return 0
    try:
        load_workspace(args.comfyui, WorkspaceSettings(load_custom_nodes=False))
    except WorkspaceError as exc:
        print(f"make-test-checkpoint: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(make_checkpoint(args.out, args.seed, args.dtype)))
    return 0
