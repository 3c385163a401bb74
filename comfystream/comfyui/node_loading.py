"""Running ComfyUI's own node loaders while recording which module gave which node, and why one failed.

ComfyUI loads `comfy_extras` and `custom_nodes` through `nodes.load_custom_node`, which swallows
import errors into log lines and merges every module's nodes into one dict. We run ComfyUI's own
`init_builtin_extra_nodes` / `init_external_custom_nodes` (so its file lists, `.disabled` and
whitelist rules stay exactly those of the workspace's version) with `load_custom_node` wrapped to
attribute nodes to their module and keep the error text.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfystream.comfyui.info import NodePackageInfo

logger = logging.getLogger(__name__)

# A custom node package that `comfystream setup-workspace` installed carries this file; a worker
# skips the package (its nodes are the worker's own built-ins).
NODE_PACKAGE_MARKER = "comfystream_node_package.py"


@dataclass
class LoadedNode:
    name: str
    cls: type
    display_name: str | None
    source: str


class _ErrorCapture(logging.Handler):
    """Collects ComfyUI's warnings while one module loads (its import traceback among them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a record that cannot format must not break loading
            self.messages.append(str(record.msg))


def run_coroutine(coro: Coroutine[Any, Any, Any] | Any) -> Any:
    """Run ComfyUI's async loaders from synchronous code, with or without a loop in this thread
    (a plain value, from a ComfyUI whose loaders were synchronous, is returned as it is)."""
    if not inspect.iscoroutine(coro):
        return coro
    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:  # outside the except block, so node import errors carry no chained context
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, name="comfystream-comfyui-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _source_name(kind: str, module_path: str) -> str:
    return f"{kind}/{Path(module_path).name}"


class RecordingLoader:
    """Wraps `nodes.load_custom_node` for one ComfyUI `nodes` module."""

    def __init__(self, nodes_module: Any) -> None:
        self.nodes = nodes_module
        self.original = nodes_module.load_custom_node
        self.packages: list[NodePackageInfo] = []
        self.loaded: list[LoadedNode] = []

    def _begin(self, module_path: str, module_parent: str) -> dict[str, Any] | None:
        kind = module_parent
        is_file = os.path.isfile(module_path)
        info = NodePackageInfo(
            name=Path(module_path).stem if is_file else Path(module_path).name,
            path=os.path.abspath(module_path),
            kind=kind,
            loaded=False,
        )
        self.packages.append(info)
        if not is_file and os.path.isfile(os.path.join(module_path, NODE_PACKAGE_MARKER)):
            info.skipped = "comfystream's own frame nodes: the worker's built-in ones are used"
            logger.info("skipping %s: %s", module_path, info.skipped)
            return None
        capture = _ErrorCapture()
        root = logging.getLogger()
        state = {
            "info": info,
            "before": dict(self.nodes.NODE_CLASS_MAPPINGS),
            "capture": capture,
            "old_level": root.level,
            "start": time.perf_counter(),
            "source": _source_name(kind, module_path),
        }
        root.addHandler(capture)
        if root.getEffectiveLevel() > logging.WARNING:  # ComfyUI reports import errors as warnings
            root.setLevel(logging.WARNING)
        return state

    def _finish(self, state: dict[str, Any], ok: bool, ignore: Any) -> bool:
        root = logging.getLogger()
        root.removeHandler(state["capture"])
        root.setLevel(state["old_level"])
        info: NodePackageInfo = state["info"]
        before: dict[str, type] = state["before"]
        mappings: dict[str, type] = self.nodes.NODE_CLASS_MAPPINGS
        display: dict[str, str] = self.nodes.NODE_DISPLAY_NAME_MAPPINGS
        info.import_seconds = round(time.perf_counter() - state["start"], 4)
        info.loaded = bool(ok)
        for name, cls in mappings.items():
            if before.get(name) is not cls:
                info.nodes.append(name)
                self.loaded.append(LoadedNode(name, cls, display.get(name), state["source"]))
        if not ok:
            messages = [m for m in state["capture"].messages if "pydantic-settings" not in m]
            info.error = "\n".join(messages) or "import failed"
            last = info.error.strip().splitlines()[-1] if info.error.strip() else info.error
            logger.warning("ComfyUI node module %s failed to load: %s", info.path, last)
        # ComfyUI's rule: a custom node never replaces a node that was there before it.
        for name in ignore or ():
            if name in before:
                mappings[name] = before[name]
        return bool(ok)

    async def load_custom_node_async(
        self, module_path: str, ignore: Any = frozenset(), module_parent: str = "custom_nodes"
    ) -> bool:
        state = self._begin(module_path, module_parent)
        if state is None:
            return False
        ok = False
        try:
            # An empty ignore set: we want every name the module defines, clashes included.
            ok = await self.original(module_path, set(), module_parent=module_parent)
        except Exception as exc:  # ComfyUI catches these itself; guard against versions that do not
            state["capture"].messages.append(f"{type(exc).__name__}: {exc}")
        finally:
            ok = self._finish(state, ok, ignore)
        return ok

    def load_custom_node_sync(
        self, module_path: str, ignore: Any = frozenset(), module_parent: str = "custom_nodes"
    ) -> bool:
        """For ComfyUI versions whose loaders were synchronous."""
        state = self._begin(module_path, module_parent)
        if state is None:
            return False
        ok = False
        try:
            ok = self.original(module_path, set(), module_parent=module_parent)
        except Exception as exc:
            state["capture"].messages.append(f"{type(exc).__name__}: {exc}")
        finally:
            ok = self._finish(state, ok, ignore)
        return ok

    def __enter__(self) -> RecordingLoader:
        if inspect.iscoroutinefunction(self.original):
            self.nodes.load_custom_node = self.load_custom_node_async
        else:
            self.nodes.load_custom_node = self.load_custom_node_sync
        return self

    def __exit__(self, *exc: Any) -> None:
        self.nodes.load_custom_node = self.original


def load_comfyui_nodes(nodes_module: Any, custom_nodes: bool, api_nodes: bool) -> tuple[list[LoadedNode], list[NodePackageInfo]]:
    """Core nodes, then `comfy_extras`, then (optionally) API nodes and `custom_nodes`, in ComfyUI's order."""
    core = [
        LoadedNode(name, cls, nodes_module.NODE_DISPLAY_NAME_MAPPINGS.get(name), "comfyui/nodes.py")
        for name, cls in nodes_module.NODE_CLASS_MAPPINGS.items()
    ]
    with RecordingLoader(nodes_module) as loader:
        init_public_apis = getattr(nodes_module, "init_public_apis", None)
        if init_public_apis is not None:
            run_coroutine(init_public_apis())
        run_coroutine(nodes_module.init_builtin_extra_nodes())
        if api_nodes and hasattr(nodes_module, "init_builtin_api_nodes"):
            run_coroutine(nodes_module.init_builtin_api_nodes())
        if custom_nodes:
            run_coroutine(nodes_module.init_external_custom_nodes())
    return core + loader.loaded, loader.packages
