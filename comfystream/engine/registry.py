"""The registry of node classes (ComfyUI's NODE_CLASS_MAPPINGS, with where each one came from)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeConflict:
    """Two sources offered a node of the same name; the first one registered is kept."""

    name: str
    kept_source: str
    rejected_source: str


class NodeRegistry(Mapping[str, type]):
    """Node classes by name, with display names and the source (package) each came from.

    A mapping (`registry["ImageInvert"]`, `name in registry`) so that engine code reads it the
    way ComfyUI reads `nodes.NODE_CLASS_MAPPINGS`.
    """

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self.display_names: dict[str, str] = {}
        self.sources: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        self.conflicts: list[NodeConflict] = []
        # ComfyUI's EXTENSION_WEB_DIRS: package name -> its WEB_DIRECTORY (frontend extensions).
        self.web_dirs: dict[str, str] = {}

    # Mapping interface
    def __getitem__(self, name: str) -> type:
        return self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def register(
        self,
        name: str,
        cls: type,
        display_name: str | None = None,
        source: str = "comfystream",
        replace: bool = False,
    ) -> bool:
        """Add one node class. Returns False (and records a conflict) when another source owns the name.

        Registering the same class again from the same source is a no-op; `replace=True`
        overrides deliberately.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"node name must be a non-empty string, got {name!r}")
        if not isinstance(cls, type):
            raise TypeError(f"node {name!r}: expected a class, got {type(cls).__name__}")
        existing = self._classes.get(name)
        if existing is not None and not replace:
            old_source = self.sources.get(name, "?")
            if existing is cls or old_source == source:
                if existing is not cls:
                    self._set(name, cls, display_name, source)
                return True
            conflict = NodeConflict(name, old_source, source)
            self.conflicts.append(conflict)
            logger.warning(
                "node %r from %s clashes with the one from %s; keeping %s",
                name,
                source,
                old_source,
                old_source,
            )
            return False
        self._set(name, cls, display_name, source)
        return True

    def _set(self, name: str, cls: type, display_name: str | None, source: str) -> None:
        self._classes[name] = cls
        self.sources[name] = source
        if display_name:
            self.display_names[name] = display_name
        else:
            self.display_names.pop(name, None)

    def register_mappings(
        self,
        class_mappings: Mapping[str, type],
        display_names: Mapping[str, str] | None = None,
        source: str = "comfystream",
    ) -> list[str]:
        """Register a package's NODE_CLASS_MAPPINGS; returns the names it added."""
        display_names = display_names or {}
        added = []
        for name, cls in class_mappings.items():
            try:
                if self.register(name, cls, display_names.get(name), source=source):
                    added.append(name)
            except (TypeError, ValueError) as exc:
                self.load_errors.setdefault(source, "")
                self.load_errors[source] += f"{exc}\n"
                logger.warning("%s: %s", source, exc)
        return added

    def record_load_error(self, source: str, error: str) -> None:
        self.load_errors[source] = error

    def names(self) -> Iterable[str]:
        return self._classes.keys()

    def node_info(self, name: str) -> dict[str, Any]:
        """One entry of ComfyUI's `/object_info` for a V1 node class."""
        cls = self._classes[name]
        v1_info = getattr(cls, "GET_NODE_INFO_V1", None)
        if callable(v1_info):  # ComfyUI V3 nodes describe themselves
            return v1_info()
        input_types = cls.INPUT_TYPES()
        return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
        info: dict[str, Any] = {
            "input": input_types,
            "input_order": {key: list(value.keys()) for key, value in input_types.items()},
            "is_input_list": getattr(cls, "INPUT_IS_LIST", False),
            "output": return_types,
            "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(return_types)),
            "output_name": getattr(cls, "RETURN_NAMES", return_types),
            "name": name,
            "display_name": self.display_names.get(name, name),
            "description": getattr(cls, "DESCRIPTION", ""),
            "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
            "category": getattr(cls, "CATEGORY", "sd"),
            "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
        }
        if hasattr(cls, "OUTPUT_TOOLTIPS"):
            info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
        if getattr(cls, "DEPRECATED", False):
            info["deprecated"] = True
        if getattr(cls, "EXPERIMENTAL", False):
            info["experimental"] = True
        if hasattr(cls, "API_NODE"):
            info["api_node"] = cls.API_NODE
        return info

    def object_info(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """ComfyUI's `/object_info` (or `/object_info/{name}`); a node whose schema fails is logged and left out."""
        names = [name] if name is not None else list(self._classes)
        out: dict[str, dict[str, Any]] = {}
        for n in names:
            if n not in self._classes:
                continue
            try:
                out[n] = self.node_info(n)
            except Exception:
                logger.exception(
                    "[ERROR] An error occurred while retrieving information for the '%s' node.", n
                )
        return out

