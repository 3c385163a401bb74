"""`get_nodes`: each node of the running prompts with its inputs' values and their schema."""

from __future__ import annotations

from typing import Any


def _input_schema(spec: Any) -> dict[str, Any]:
    """One input of ComfyUI's /object_info (`[type, config]` or `[[options...], config]`)."""
    if not isinstance(spec, list | tuple) or not spec:
        return {"type": "unknown"}
    kind, config = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    out: dict[str, Any] = {}
    if isinstance(kind, list | tuple):
        out["type"] = "combo"
        out["options"] = list(kind)
    else:
        out["type"] = str(kind)
    for key in ("min", "max", "step", "default", "widget", "multiline", "tooltip"):
        if key in config:
            out[key] = config[key]
    return out


def nodes_info(prompts: list[dict[str, Any]], object_info: dict[str, Any]) -> dict[str, Any]:
    """`{prompt_index: {node_id: {"class_type", "inputs": {name: {"value", "type", ...}}}}}`.

    Linked inputs (``[node_id, index]``) are reported with ``"link": true``; an unknown node
    type has ``"known": false`` and its inputs' types as ``"unknown"``.
    """
    out: dict[str, Any] = {}
    for index, prompt in enumerate(prompts):
        nodes: dict[str, Any] = {}
        for node_id, node in prompt.items():
            class_type = node.get("class_type")
            schema = object_info.get(class_type) if isinstance(class_type, str) else None
            declared: dict[str, Any] = {}
            if schema:
                for section in ("required", "optional"):
                    declared.update((schema.get("input") or {}).get(section) or {})
            inputs: dict[str, Any] = {}
            for name, value in (node.get("inputs") or {}).items():
                info = {"value": value, **_input_schema(declared.get(name))}
                if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                    info["link"] = True
                inputs[name] = info
            nodes[str(node_id)] = {"class_type": class_type, "known": schema is not None, "inputs": inputs}
        out[str(index)] = nodes
    return out
