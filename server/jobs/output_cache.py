"""ComfyUI's output caching for a prompt queued again unchanged: its output nodes' results are
reused instead of run (ComfyUI's execution.py finds every node in its output cache, reports them in
`execution_cached` and sends each output node's cached ui as `executed`).

Done here, in the server, for the whole prompt: two job workers each keep their own caches, and a
prompt queued again may land on either. A prompt is the same when its nodes, their inputs, the
outputs to run and every node's `IS_CHANGED` are equal to those of one that finished successfully;
a node whose `IS_CHANGED` is NaN (never equal: a stream frame, a random source) or raises makes the
prompt uncacheable, as it makes ComfyUI re-run it. A hit whose output files are gone is a miss.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections import OrderedDict
from typing import Any

from comfystream.engine.invoke import map_node_over_list, resolve_blocking
from server.jobs.files import PathRefused, resolve_view_path
from server.jobs.settings import JobSettings

logger = logging.getLogger(__name__)


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _unchanged_marker(value: Any) -> bool:
    """False for what ComfyUI's comparison never finds equal to itself (NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(value, list | tuple):
        return all(_unchanged_marker(v) for v in value)
    return True


def is_changed_values(prompt: dict[str, Any], registry: Any) -> dict[str, Any] | None:
    """Each node's IS_CHANGED (constants as inputs, linked inputs None, as the engine calls it);
    None when one of them means "always changed". Call it with the jobs' folders in view."""
    values: dict[str, Any] = {}
    for node_id, node in prompt.items():
        cls = registry.get(node.get("class_type"))
        if cls is None or not hasattr(cls, "IS_CHANGED"):
            continue
        inputs = {k: [None if _is_link(v) else v] for k, v in (node.get("inputs") or {}).items()}
        try:
            value = resolve_blocking(map_node_over_list(cls, inputs, "IS_CHANGED"))
        except Exception as exc:
            logger.debug("IS_CHANGED of node %s (%s) raised: %s", node_id, node.get("class_type"), exc)
            return None
        if not _unchanged_marker(value):
            return None
        values[node_id] = value
    return values


def cache_key(prompt: dict[str, Any], outputs: list[str], registry: Any) -> str | None:
    changed = is_changed_values(prompt, registry)
    if changed is None:
        return None
    try:
        text = json.dumps([prompt, sorted(outputs), changed], sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _files(outputs: dict[str, Any]):
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for items in ui.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item and item.get("type") in ("output", "temp"):
                    yield item


class OutputCache:
    """Finished prompts' outputs by cache key, the newest `size` of them."""

    def __init__(self, size: int = 128):
        self.size = size
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def put(self, key: str, outputs: dict[str, Any]) -> None:
        self._entries[key] = copy.deepcopy(outputs)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def get(self, key: str, settings: JobSettings) -> dict[str, Any] | None:
        """The outputs to reuse, when every file they name is still there."""
        outputs = self._entries.get(key)
        if outputs is None:
            return None
        for item in _files(outputs):
            try:
                path = resolve_view_path(settings, item["filename"], item["type"], item.get("subfolder"))
            except PathRefused:
                path = None
            if path is None or not path.is_file():
                del self._entries[key]
                return None
        self._entries.move_to_end(key)
        return copy.deepcopy(outputs)
