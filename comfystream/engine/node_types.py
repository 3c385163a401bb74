"""How ComfyUI reads a node class: input specs, links, and socket type compatibility."""

from __future__ import annotations

import inspect
from typing import Any, Literal

ANY_TYPE = "*"
COMBO_TYPE = "COMBO"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"

InputCategory = Literal["required", "optional", "hidden"]


def is_link(value: Any) -> bool:
    """A link is `[node_id, output_index]` (ComfyUI: a 2-list of str and int)."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def get_input_info(
    input_types: dict[str, Any], input_name: str
) -> tuple[Any, InputCategory, dict[str, Any]] | tuple[None, None, None]:
    """(input type, category, extra options) for one input name, as ComfyUI's `get_input_info`."""
    for category in ("required", "optional", "hidden"):
        section = input_types.get(category)
        if section and input_name in section:
            spec = section[input_name]
            if isinstance(spec, str):  # hidden inputs are often plain strings ("PROMPT")
                return spec, category, {}
            input_type = spec[0]
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            return input_type, category, extra
    return None, None, None


def validate_node_input(received_type: Any, input_type: Any, strict: bool = False) -> bool:
    """Whether an output of `received_type` may feed an input of `input_type`.

    ComfyUI's rules: equal types match (the comparison goes through `!=`, so legacy "any"
    string subclasses that override `__ne__` still match); `*` matches everything; a
    comma-separated union matches when it overlaps (strict: when it is a subset).
    """
    if not received_type != input_type:
        return True
    if received_type == ANY_TYPE or input_type == ANY_TYPE:
        return True
    if received_type == MATCH_TYPE or input_type == MATCH_TYPE:
        return True
    if isinstance(received_type, list) and input_type == COMBO_TYPE:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    if ANY_TYPE in received or ANY_TYPE in wanted:
        return True
    if strict:
        return received.issubset(wanted)
    return bool(received & wanted)


def is_output_node(cls: type) -> bool:
    return getattr(cls, "OUTPUT_NODE", False) is True


def is_async_node(cls: type) -> bool:
    func = getattr(cls, getattr(cls, "FUNCTION", ""), None)
    return func is not None and inspect.iscoroutinefunction(func)


def full_type_name(klass: type) -> str:
    """`module.QualName` (just the name for builtins), as ComfyUI reports exception types."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


# Hidden inputs filled from the prompt's `extra_data` (ComfyUI's names -> extra_data keys).
EXTRA_DATA_HIDDEN = {
    "EXTRA_PNGINFO": "extra_pnginfo",
    "AUTH_TOKEN_COMFY_ORG": "auth_token_comfy_org",
    "API_KEY_COMFY_ORG": "api_key_comfy_org",
    "COMFY_USAGE_SOURCE": "comfy_usage_source",
}


def hidden_spec(input_types: dict[str, Any]) -> dict[str, str]:
    """{input name: hidden kind} for the node's hidden inputs."""
    hidden = input_types.get("hidden") or {}
    out = {}
    for name, spec in hidden.items():
        kind = spec if isinstance(spec, str) else (spec[0] if spec else None)
        if isinstance(kind, str):
            out[name] = kind
    return out


def hidden_values(
    input_types: dict[str, Any], node_id: str, prompt: dict[str, Any], extra_data: dict[str, Any]
) -> dict[str, list[Any]]:
    """ComfyUI's hidden inputs (PROMPT, UNIQUE_ID, EXTRA_PNGINFO, ...) as single-item lists."""
    out: dict[str, list[Any]] = {}
    for name, kind in hidden_spec(input_types).items():
        if kind == "PROMPT":
            out[name] = [prompt]
        elif kind == "UNIQUE_ID":
            out[name] = [node_id]
        elif kind in ("DYNPROMPT", "EXECUTION_LIST"):
            out[name] = [None]
        elif kind in EXTRA_DATA_HIDDEN:
            out[name] = [extra_data.get(EXTRA_DATA_HIDDEN[kind])]
    return out
