"""The default prompt and normalisation of the prompt formats the API accepts."""

from __future__ import annotations

import copy
import json
from typing import Any

from comfystream import json_limits

# LoadTensor -> ImageInvert -> SaveTensor: the prompt a stream runs when none is given.
DEFAULT_PROMPT: dict[str, dict[str, Any]] = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
}


class PromptFormatError(ValueError):
    """A prompt that is not an API-format workflow (not JSON, not an object of nodes)."""


def _one_prompt(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json_limits.loads(value)
        except json.JSONDecodeError as exc:
            raise PromptFormatError(f"{where}: {json_limits.describe_error(exc)}") from None
    if isinstance(value, dict) and set(value) >= {"prompt"} and isinstance(value["prompt"], dict | str):
        # {"prompt": {...}} as POST /prompt bodies and saved API files wrap it.
        return _one_prompt(value["prompt"], where)
    if not isinstance(value, dict):
        raise PromptFormatError(f"{where}: a prompt must be a JSON object of nodes, got {type(value).__name__}")
    if is_ui_workflow(value):
        raise PromptFormatError(
            f"{where}: this is a workflow as the editor saves it (UI format: 'nodes' and 'links'); a "
            "prompt is in API format, {node_id: {class_type, inputs}}. In the editor use Workflow > "
            "Export (API), or run it from the editor (its Run, or the Streams tab's 'Run this "
            "workflow on it') which converts it"
        )
    if not value:
        raise PromptFormatError(f"{where}: the prompt has no nodes")
    for node_id, node in value.items():
        if not isinstance(node, dict):
            raise PromptFormatError(f"{where}: node {node_id!r} must be an object, got {type(node).__name__}")
    return copy.deepcopy(value)


def is_ui_workflow(value: Any) -> bool:
    """The editor's saved format (LiteGraph's: a list of nodes and a list of links), not a prompt."""
    return isinstance(value, dict) and isinstance(value.get("nodes"), list) and "links" in value


def normalize_prompts(value: Any) -> list[dict[str, Any]]:
    """Return a list of API-format prompts from a dict, a JSON string, or a list of either."""
    if isinstance(value, str):
        try:
            parsed = json_limits.loads(value)
        except json.JSONDecodeError as exc:
            raise PromptFormatError(f"prompt: {json_limits.describe_error(exc)}") from None
        value = parsed
    if isinstance(value, list):
        if not value:
            raise PromptFormatError("prompts: the list is empty")
        return [_one_prompt(item, f"prompts[{i}]") for i, item in enumerate(value)]
    return [_one_prompt(value, "prompt")]


def normalize_prompts_or_default(value: Any) -> list[dict[str, Any]]:
    """As `normalize_prompts`, but no prompt at all (None or []) means `[DEFAULT_PROMPT]`."""
    if value is None or value == [] or value == "":
        return [copy.deepcopy(DEFAULT_PROMPT)]
    return normalize_prompts(value)
