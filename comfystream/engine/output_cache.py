"""Outputs of frame-independent nodes, kept across the prompts of one process by input signature.

A node that does not depend on the frame (a checkpoint loader, a text encode) is computed once
and reused for every frame by its compiled prompt. This cache carries those outputs over to the
next prompt: a node whose class and inputs are the same, all the way up its ancestors, is not run
again, as ComfyUI's own cache keys outputs by input signature (`CacheKeySetInputSignature`). So a
prompt update that changes a text or a denoise re-encodes the text and never reloads the
checkpoint; switching to another checkpoint drops the old one once no live prompt holds it
(`retain`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass
class CachedOutput:
    output: list[list[Any]]
    ui: dict[str, Any] | None
    is_changed: Any  # the node's IS_CHANGED when it ran (None without one)


def signature_value(value: Any) -> str:
    """A constant input as a stable, hashable text (widget values are JSON in a prompt)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def is_loader(cls: type) -> bool:
    """A node that loads weights from disk: ComfyUI files them under the `loaders` category."""
    category = str(getattr(cls, "CATEGORY", "") or "")
    return "loaders" in category.split("/") or cls.__name__.endswith(("Loader", "LoaderSimple"))


class OutputCache:
    """One process's frame-independent node outputs by signature (not thread-safe: one owner,
    the worker, compiles and runs prompts on one thread at a time per cache)."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, CachedOutput] = {}
        self.model_loads = 0  # loader nodes run (not taken from here) in this process
        # Called with (label, output, is_loader) when a frame-independent node has run (not when
        # its output was taken from here): the worker shares the weights of loaded models
        # between processes through it (workers/shared_weights.py). Its errors are its own.
        self.on_computed: Callable[[str, list[list[Any]], bool], None] | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> CachedOutput | None:
        return self._entries.get(key)

    def outputs(self) -> list[list[list[Any]]]:
        """Every kept output (what holds the loaded models)."""
        return [entry.output for entry in self._entries.values()]

    def put(self, key: Hashable, entry: CachedOutput) -> None:
        self._entries[key] = entry

    def retain(self, keys: Iterable[Hashable]) -> int:
        """Keep only `keys` (what live prompts use); returns how many entries were dropped."""
        keep = set(keys)
        gone = [k for k in self._entries if k not in keep]
        for k in gone:
            del self._entries[k]
        return len(gone)

    def clear(self) -> None:
        self._entries.clear()
