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


def _one_prompt(value: Any, where: str, input_types: Any = None) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json_limits.loads(value)
        except json.JSONDecodeError as exc:
            raise PromptFormatError(f"{where}: {json_limits.describe_error(exc)}") from None
    if isinstance(value, dict) and set(value) >= {"prompt"} and isinstance(value["prompt"], dict | str):
        # {"prompt": {...}} as POST /prompt bodies and saved API files wrap it.
        return _one_prompt(value["prompt"], where, input_types)
    if not isinstance(value, dict):
        raise PromptFormatError(
            f"{where}: a prompt must be a JSON object of nodes, got {type(value).__name__}"
        )
    if is_ui_workflow(value) and input_types is not None:
        return ui_to_api(value, input_types)
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


# Nodes that live in the editor only: notes, reroutes (links pass through them), the legacy primitive
# (its value is already in the widget it feeds).
_FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_MUTED, _BYPASSED = 2, 4
_UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload")


def _widget_inputs(input_types: dict[str, Any]) -> list[tuple[str, int]]:
    """(input name, how many widget values it takes) for each input the editor shows as a widget,
    in the editor's order: a seed's "control after generate" and an upload button add one each."""
    widgets: list[tuple[str, int]] = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, list | tuple) and spec else spec
            options = (
                spec[1]
                if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], dict)
                else {}
            )
            if options.get("forceInput") or not (isinstance(kind, list | tuple) or kind in _WIDGET_TYPES):
                continue
            extra = int(
                bool(options.get("control_after_generate"))
                or (kind == "INT" and name in ("seed", "noise_seed"))
            )
            extra += sum(1 for key in _UPLOAD_OPTIONS if options.get(key))
            widgets.append((name, 1 + extra))
    return widgets


def ui_to_api(workflow: dict[str, Any], input_types: Any) -> dict[str, dict[str, Any]]:
    """A workflow as the editor saves it, as the editor's "Export (API)" makes it: each node that runs
    (not muted, bypassed or editor-only) with its widget values named by the node's inputs and its
    links resolved through reroutes and bypassed nodes. `input_types(class_type)` gives a node's
    INPUT_TYPES (None for an unknown node: it keeps its links, and validation names it)."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise PromptFormatError(
            "prompt: a workflow with subgraphs cannot be converted here; in the editor use Workflow > Export (API)"
        )
    nodes = {str(n.get("id")): n for n in workflow["nodes"] if isinstance(n, dict)}
    links: dict[Any, tuple[str, int]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list | tuple) and len(link) >= 5:
            links[link[0]] = (str(link[1]), int(link[2]))
        elif isinstance(link, dict):
            links[link.get("id")] = (str(link.get("origin_id")), int(link.get("origin_slot") or 0))

    def source(link_id: Any, depth: int = 0) -> list[Any] | None:
        """[node_id, slot] a link really comes from (None: from nothing that runs)."""
        if link_id not in links or depth > 64:
            return None
        origin, slot = links[link_id]
        node = nodes.get(origin)
        if node is None:
            return None
        if node.get("type") == "Reroute" or node.get("mode") == _BYPASSED:
            wanted = None
            outputs = node.get("outputs") or []
            if node.get("type") != "Reroute" and slot < len(outputs):
                wanted = outputs[slot].get("type")
            for entry in node.get("inputs") or []:
                if entry.get("link") is not None and (wanted is None or entry.get("type") == wanted):
                    return source(entry["link"], depth + 1)
            return None
        if node.get("type") in _FRONTEND_ONLY or node.get("mode") == _MUTED:
            return None
        return [origin, slot]

    prompt: dict[str, dict[str, Any]] = {}
    for node_id, node in nodes.items():
        class_type = node.get("type")
        if not isinstance(class_type, str) or class_type in _FRONTEND_ONLY:
            continue
        if node.get("mode") in (_MUTED, _BYPASSED):
            continue
        inputs: dict[str, Any] = {}
        types = input_types(class_type)
        values = node.get("widgets_values")
        if isinstance(values, dict):
            inputs.update(values)
        elif isinstance(values, list) and types:
            position = 0
            for name, count in _widget_inputs(types):
                if position < len(values):
                    inputs[name] = values[position]
                position += count
        for entry in node.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("link") is not None:
                linked = source(entry["link"])
                if linked is not None:
                    inputs[entry.get("name")] = linked
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        if node.get("title"):
            prompt[node_id]["_meta"] = {"title": node["title"]}
    if not prompt:
        raise PromptFormatError("prompt: the workflow has no node that runs")
    return prompt


def normalize_prompts(value: Any, input_types: Any = None) -> list[dict[str, Any]]:
    """Return a list of API-format prompts from a dict, a JSON string, or a list of either. With
    `input_types` (class_type -> INPUT_TYPES, or None), a workflow in the editor's UI format is
    converted (`ui_to_api`); without, it is refused with the format expected."""
    if isinstance(value, str):
        try:
            parsed = json_limits.loads(value)
        except json.JSONDecodeError as exc:
            raise PromptFormatError(f"prompt: {json_limits.describe_error(exc)}") from None
        value = parsed
    if isinstance(value, list):
        if not value:
            raise PromptFormatError("prompts: the list is empty")
        return [_one_prompt(item, f"prompts[{i}]", input_types) for i, item in enumerate(value)]
    return [_one_prompt(value, "prompt", input_types)]


def normalize_prompts_or_default(value: Any, input_types: Any = None) -> list[dict[str, Any]]:
    """As `normalize_prompts`, but no prompt at all (None or []) means `[DEFAULT_PROMPT]`."""
    if value is None or value == [] or value == "":
        return [copy.deepcopy(DEFAULT_PROMPT)]
    return normalize_prompts(value, input_types)


def registry_input_types(registry: Any) -> Any:
    """`input_types` for `normalize_prompts` / `ui_to_api` from a node registry (a mapping of
    class_type -> node class)."""

    def input_types(class_type: str) -> dict[str, Any] | None:
        cls = registry.get(class_type)
        if cls is None:
            return None
        try:
            return cls.INPUT_TYPES()
        except Exception:  # a node whose INPUT_TYPES fails: its widgets stay unnamed; validation says why
            return None

    return input_types
