"""Loading custom node packages (modules exposing NODE_CLASS_MAPPINGS) from folders."""

from __future__ import annotations

import logging

from comfystream.engine.registry import NodeRegistry

logger = logging.getLogger(__name__)


def load_custom_nodes(directory: str, registry: NodeRegistry) -> list[str]:
    raise NotImplementedError
