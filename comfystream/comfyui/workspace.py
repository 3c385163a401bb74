"""Loading a ComfyUI workspace's nodes into a worker's node registry.

`load_workspace(path, settings, registry)` is what a worker's initializer calls once, after it
has pinned its GPU and before it compiles any prompt. ComfyUI's modules are process-global
(`nodes`, `comfy.*`, `folder_paths`), so one process holds one workspace: loading the same one
again only registers its nodes into another registry; a different one is an error.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from comfystream.comfyui import bridges, prompt_server
from comfystream.comfyui.info import NodeClash, NodePackageInfo, WorkspaceError, WorkspaceInfo
from comfystream.comfyui.node_loading import LoadedNode, load_comfyui_nodes
from comfystream.comfyui.settings import (
    WorkspaceSettings,
    WorkspaceSettingsError,
    apply_to_args,
    torch_has_accelerator,
)
from comfystream.comfyui.v3 import is_v3_node, v1_face
from comfystream.engine.registry import NodeRegistry

logger = logging.getLogger(__name__)

# Files and folders every ComfyUI checkout has; a directory without them is not a workspace.
_REQUIRED = ("nodes.py", "folder_paths.py", "comfy", "comfy_extras")
# comfystream's I/O nodes keep their name against any clash: streams depend on the frame nodes,
# and the server's /view, /upload and history on where the image file nodes read and write.
_IO_MODULES = ("comfystream.nodes.frame_io", "comfystream.nodes.image_files")
_CORE_SOURCES = ("comfyui/", "comfy_extras/")
# ComfyUI's top-level modules that node code imports by bare name.
_COMFY_MODULES = (
    "comfy",
    "comfy_extras",
    "comfy_api",
    "comfy_execution",
    "nodes",
    "folder_paths",
    "node_helpers",
    "latent_preview",
    "cuda_malloc",
    "protocol",
    "utils",
    "execution",
)


@dataclass
class _Loaded:
    root: Path
    settings: WorkspaceSettings
    nodes: list[LoadedNode]
    packages: list[NodePackageInfo]
    version: str | None
    models_dir: str | None
    load_seconds: float


_state: _Loaded | None = None
_lock = threading.Lock()


def check_workspace(path: str | os.PathLike[str]) -> Path:
    """The workspace's absolute path, or `WorkspaceError` saying what is wrong; imports nothing.

    The server calls this at start, so that a bad `--workspace` fails there and not in a worker.
    """
    if path is None or str(path).strip() == "":
        raise WorkspaceError("no ComfyUI workspace given")
    root = Path(path).expanduser()
    if not root.exists():
        raise WorkspaceError(f"ComfyUI workspace {root} does not exist")
    if not root.is_dir():
        raise WorkspaceError(f"ComfyUI workspace {root} is not a directory")
    root = root.resolve()
    missing = [name for name in _REQUIRED if not (root / name).exists()]
    if missing:
        raise WorkspaceError(
            f"{root} is not a ComfyUI workspace: it lacks {', '.join(missing)} "
            f"(create one with `comfystream setup-workspace {root}`)"
        )
    return root


def comfyui_version(root: str | os.PathLike[str]) -> str | None:
    """ComfyUI's version from `comfyui_version.py` (or its pyproject), read without importing."""
    root = Path(root)
    for name, pattern in (
        ("comfyui_version.py", r"__version__\s*=\s*['\"]([^'\"]+)['\"]"),
        ("pyproject.toml", r"(?m)^version\s*=\s*['\"]([^'\"]+)['\"]"),
    ):
        try:
            match = re.search(pattern, (root / name).read_text(encoding="utf-8"))
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def load_workspace(
    path: str | os.PathLike[str],
    settings: WorkspaceSettings | dict[str, Any] | None = None,
    registry: NodeRegistry | None = None,
) -> WorkspaceInfo:
    """Import ComfyUI from `path` and register its nodes into `registry` (a fresh
    `build_registry()` when None) beside comfystream's own; returns what was loaded.

    Raises `WorkspaceError` with a clear message when the workspace is missing, is not a
    ComfyUI checkout, ComfyUI fails to import from it, or another workspace (or other
    settings) is already loaded in this process. A custom node package that fails to import
    is not an error: it is listed in the result with its traceback, as ComfyUI logs it.
    """
    global _state
    root = check_workspace(path)
    try:
        settings = WorkspaceSettings.from_mapping(settings)
    except (WorkspaceSettingsError, TypeError) as exc:
        raise WorkspaceError(f"bad workspace settings: {exc}") from exc
    if registry is None:
        # here, not at the top: comfystream.nodes imports torch, which commands that only look at
        # a workspace (workspace-info on a bad path, setup-workspace, --help) never need
        from comfystream.nodes import build_registry

        registry = build_registry()
    with _lock:
        if _state is None:
            _guard_foreign_comfyui(root)
            _state = _import_workspace(root, settings)
        elif _state.root != root:
            raise WorkspaceError(
                f"this process already runs the ComfyUI workspace {_state.root}; "
                f"a worker loads one workspace only (asked for {root})"
            )
        elif _state.settings != settings:
            raise WorkspaceError(
                "this process already loaded the workspace with other settings "
                f"({_state.settings.to_dict()}); ComfyUI applies them once, at import"
            )
        loaded = _state
    return _register(loaded, registry)


def _guard_foreign_comfyui(root: Path) -> None:
    for name in ("nodes", "folder_paths", "comfy"):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None) if module is not None else None
        if file and not Path(file).resolve().is_relative_to(root):
            raise WorkspaceError(
                f"a module {name!r} from {file} is already imported in this process; "
                f"ComfyUI from {root} cannot be loaded beside it"
            )


def _import_workspace(root: Path, settings: WorkspaceSettings) -> _Loaded:
    start = time.perf_counter()
    version = comfyui_version(root)
    _put_on_path(root)
    # Before anything of ComfyUI is imported: nodes import `server` at module level.
    prompt_server.install()
    step = "comfy.cli_args"
    try:
        cli_args = importlib.import_module("comfy.cli_args")
        has_accelerator = torch_has_accelerator()
        if settings.gpu_only and not has_accelerator:
            # As the workers do: a worker placed on the CPU still runs, on the CPU.
            logger.warning("gpu_only is set but torch sees no GPU here: ComfyUI runs on the CPU")
        applied = apply_to_args(cli_args.args, settings, has_accelerator)
        logger.info("ComfyUI %s from %s with %s", version or "(unknown version)", root, applied)
        if "cudaMallocAsync" not in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""):
            step = "cuda_malloc"  # ComfyUI's own choice of allocator, from the args just set
            importlib.import_module("cuda_malloc")
        step = "comfy.model_management"
        model_management = importlib.import_module("comfy.model_management")
        bridges.install_interrupt_bridge(model_management)
        step = "comfy.utils"
        bridges.install_progress_bridge()
        step = "folder_paths"
        folder_paths = importlib.import_module("folder_paths")
        _configure_folder_paths(root, settings, folder_paths)
        step = "nodes"
        nodes_module = importlib.import_module("nodes")
        step = "node modules"
        loaded_nodes, packages = load_comfyui_nodes(
            nodes_module, custom_nodes=settings.load_custom_nodes, api_nodes=settings.api_nodes
        )
    except WorkspaceError:
        raise
    except (WorkspaceSettingsError, Exception) as exc:
        logger.error("ComfyUI from %s failed at %s:\n%s", root, step, traceback.format_exc())
        raise WorkspaceError(
            f"ComfyUI from {root} failed to import ({step}): {type(exc).__name__}: {exc}"
        ) from exc
    return _Loaded(
        root=root,
        settings=settings,
        nodes=loaded_nodes,
        packages=packages,
        version=version,
        models_dir=getattr(folder_paths, "models_dir", None),
        load_seconds=round(time.perf_counter() - start, 3),
    )


def _own_packages_dir() -> str | None:
    """The folder holding comfystream's `comfystream` and `server` packages (a checkout or site-packages)."""
    import comfystream

    parent = Path(comfystream.__file__).resolve().parent.parent
    return str(parent) if (parent / "server" / "__init__.py").is_file() else None


def _resolves_into(name: str, root: Path) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    locations = list(spec.submodule_search_locations or []) if spec else []
    if spec is not None and spec.origin:
        locations.append(spec.origin)
    return any(Path(loc).resolve().is_relative_to(root) for loc in locations)


def _put_on_path(root: Path) -> None:
    """ComfyUI imports its top-level modules by bare name (`nodes`, `folder_paths`, `server`, ...).

    Its folder goes right after the one holding comfystream's packages, not first: a process that
    loaded a workspace and then spawns workers (the server validates prompts against the
    workspace's nodes) hands them its import path, and they must import comfystream's `server`
    package, not ComfyUI's server.py. ComfyUI's own modules must still win over anything else;
    when one would not, ComfyUI's folder goes first after all.
    """
    entry = str(root)
    if entry in sys.path:
        return
    anchor = _own_packages_dir()
    if anchor is None:
        sys.path.insert(0, entry)
        return
    if anchor not in sys.path:  # an editable install's finder runs after every sys.path entry
        sys.path.insert(0, anchor)
    sys.path.insert(sys.path.index(anchor) + 1, entry)
    importlib.invalidate_caches()
    present = [n for n in _COMFY_MODULES if (root / n).is_dir() or (root / f"{n}.py").is_file()]
    shadowed = [n for n in present if n not in sys.modules and not _resolves_into(n, root)]
    if shadowed:
        logger.warning(
            "modules %s outside %s would shadow ComfyUI's: putting ComfyUI first on the import path",
            ", ".join(shadowed),
            root,
        )
        sys.path.remove(entry)
        sys.path.insert(0, entry)


def _model_path_configs(root: Path, settings: WorkspaceSettings) -> list[str]:
    """The `extra_model_paths.yaml` files to read: the workspace's own, then the settings'."""
    configs = []
    default_config = root / "extra_model_paths.yaml"
    if default_config.is_file():
        configs.append(str(default_config))
    configs.extend(settings.extra_model_paths)
    return configs


def _extra_config_module(root: Path) -> Any:
    """ComfyUI's `utils/extra_config.py`, loaded from its file: by name, `utils` may be
    comfy/utils.py (ComfyUI's nodes.py puts `comfy/` first on the import path, and a process
    that loaded a workspace hands that path to the workers it spawns)."""
    path = root / "utils" / "extra_config.py"
    spec = importlib.util.spec_from_file_location("comfystream_comfyui_extra_config", path)
    if spec is None or spec.loader is None:
        raise WorkspaceError(f"{path} cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _configure_folder_paths(root: Path, settings: WorkspaceSettings, folder_paths: Any) -> None:
    """Models, inputs and outputs of the workspace (ComfyUI's main.py does the same at start)."""
    configs = _model_path_configs(root, settings)
    if configs:
        extra_config = _extra_config_module(root)
        for config in configs:
            if not os.path.isfile(config):
                raise WorkspaceError(f"extra model paths file {config} does not exist")
            extra_config.load_extra_path_config(config)
    for directory in settings.extra_custom_node_dirs:
        if not os.path.isdir(directory):
            raise WorkspaceError(f"custom node folder {directory} does not exist")
        folder_paths.add_model_folder_path("custom_nodes", os.path.abspath(directory))


def _is_comfystream_io(name: str, cls: type) -> bool:
    return getattr(cls, "__module__", "") in _IO_MODULES or name in ("LoadTensor", "SaveTensor")


def _register(loaded: _Loaded, registry: NodeRegistry) -> WorkspaceInfo:
    clashes: list[NodeClash] = []
    packages = {p.path: p for p in loaded.packages}
    comfy_names: set[str] = set()
    for node in loaded.nodes:
        try:
            cls = v1_face(node.cls, node.name) if is_v3_node(node.cls) else node.cls
        except Exception as exc:  # a V3 schema that does not validate: that node only is lost
            logger.warning("node %s from %s is unusable: %s", node.name, node.source, exc)
            for package in packages.values():
                if node.name in package.nodes:
                    package.error = (package.error or "") + f"{node.name}: {type(exc).__name__}: {exc}\n"
            continue
        existing = registry.get(node.name)
        existing_source = registry.sources.get(node.name)
        if (
            existing is not None
            and existing_source == "comfystream"
            and node.source.startswith(_CORE_SOURCES)
            and not _is_comfystream_io(node.name, existing)
        ):
            # Our built-in image nodes re-implement ComfyUI's core ones: the workspace's own runs.
            registry.register(node.name, cls, node.display_name, source=node.source, replace=True)
            clashes.append(NodeClash(node.name, kept=node.source, rejected=existing_source))
            comfy_names.add(node.name)
            continue
        if registry.register(node.name, cls, node.display_name, source=node.source):
            comfy_names.add(node.name)
        else:
            clashes.append(NodeClash(node.name, kept=existing_source or "?", rejected=node.source))
    for clash in clashes:
        # Replacing a built-in re-implementation by ComfyUI's own node is expected; anything else is not.
        level = logging.INFO if clash.rejected == "comfystream" else logging.WARNING
        logger.log(level, "node name clash %r: %s runs, %s is not used", clash.name, clash.kept, clash.rejected)
    return WorkspaceInfo(
        workspace_path=str(loaded.root),
        comfyui_version=loaded.version,
        nodes_loaded=len(registry),
        comfyui_nodes=len(comfy_names),
        packages=[replace(p, nodes=list(p.nodes)) for p in loaded.packages],
        clashes=clashes,
        settings=loaded.settings.to_dict(),
        models_dir=loaded.models_dir,
        load_seconds=loaded.load_seconds,
    )
