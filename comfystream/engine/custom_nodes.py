"""Loading custom node packages from folders, as ComfyUI loads `custom_nodes/`.

Every package (a folder with `__init__.py`) or module (`*.py`) in a folder that exposes
`NODE_CLASS_MAPPINGS` (and optionally `NODE_DISPLAY_NAME_MAPPINGS`) is registered. One that
fails to import is recorded in `registry.load_errors` with its traceback and skipped; it never
stops the others.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import traceback
from types import ModuleType

from comfystream.engine.registry import NodeRegistry

logger = logging.getLogger(__name__)


def _module_name(path: str) -> str:
    # Unique per path, so two folders with a package of the same name do not collide.
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    stem = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    return f"comfystream_custom_nodes.{safe}_{digest}"


def _import(path: str) -> ModuleType:
    name = _module_name(path)
    if os.path.isdir(path):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
        )
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: the package's relative imports need it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def candidates(directory: str) -> list[str]:
    """Packages and modules in `directory` that ComfyUI would try (no hidden, no `.disabled`)."""
    out = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if entry.startswith((".", "__")) or entry.endswith(".disabled"):
            continue
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, "__init__.py")):
            out.append(path)
        elif os.path.isfile(path) and entry.endswith(".py"):
            out.append(path)
    return out


def load_custom_node_package(path: str, registry: NodeRegistry) -> list[str]:
    """Import one package or module and register its nodes; returns the names added ([] on failure)."""
    source = os.path.abspath(path)
    try:
        module = _import(path)
    except Exception:
        registry.record_load_error(source, traceback.format_exc())
        logger.warning("Cannot import %s module for custom nodes:\n%s", source, traceback.format_exc())
        return []
    _record_web_dir(module, source, registry)
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, dict):
        logger.info("Skip %s module for custom nodes due to the lack of NODE_CLASS_MAPPINGS.", source)
        return []
    display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    for cls in mappings.values():
        if isinstance(cls, type) and not hasattr(cls, "RELATIVE_PYTHON_MODULE"):
            cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{os.path.splitext(os.path.basename(source))[0]}"
    added = registry.register_mappings(mappings, display if isinstance(display, dict) else {}, source=source)
    logger.info("Loaded %d custom node(s) from %s", len(added), source)
    return added


def _record_web_dir(module: ModuleType, source: str, registry: NodeRegistry) -> None:
    """A package's `WEB_DIRECTORY` (its frontend extensions), as ComfyUI records it: by the package's
    folder name, relative to the package, only when it is a folder."""
    web = getattr(module, "WEB_DIRECTORY", None)
    if not isinstance(web, str) or not os.path.isdir(source):
        return
    web_dir = os.path.abspath(os.path.join(source, web))
    if os.path.isdir(web_dir):
        registry.web_dirs[os.path.basename(source)] = web_dir


def load_custom_nodes(directory: str, registry: NodeRegistry) -> list[str]:
    """Load every custom node package in `directory`; returns the node names added."""
    if not os.path.isdir(directory):
        registry.record_load_error(os.path.abspath(directory), f"not a directory: {directory}")
        logger.warning("custom node folder %s does not exist", directory)
        return []
    added: list[str] = []
    for path in candidates(directory):
        added.extend(load_custom_node_package(path, registry))
    return added
