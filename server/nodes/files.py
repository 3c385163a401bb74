"""Files a prompt names over HTTP stay inside the input, output and temp folders.

The engine's own LoadImage confines its names (comfystream.nodes.folders), but a ComfyUI
workspace's nodes resolve names with ComfyUI's folder_paths, which joins without a check. So every
prompt that comes in a request is checked here first, by the names alone: an input that names a
file (a combo of files, or one with an upload widget) may not hold an absolute path or `..`. The
file system is never asked, so the answer is the same whether such a file exists or not."""

from __future__ import annotations

import re
from typing import Any

from comfystream.engine import ValidationResult
from comfystream.engine.node_types import get_input_info

# Widget flags ComfyUI's frontend uses for inputs that name uploaded files.
_FILE_FLAGS = ("image_upload", "video_upload", "audio_upload", "upload", "image_folder")
_ANNOTATION = re.compile(r" \[(input|output|temp)\]$")
_DRIVE = re.compile(r"^[A-Za-z]:")


def escapes_folder(name: str) -> bool:
    """True when `name` (maybe annotated `[output]`) would lead out of its folder."""
    stem = _ANNOTATION.sub("", name)
    return (
        "\0" in stem
        or stem.startswith(("/", "\\", "~"))
        or bool(_DRIVE.match(stem))
        or ".." in re.split(r"[\\/]", stem)
    )


def _names_a_file(input_type: Any, options: dict[str, Any]) -> bool:
    return (
        isinstance(input_type, list | tuple)
        or input_type == "COMBO"
        or any(options.get(flag) for flag in _FILE_FLAGS)
    )


def outside_file_errors(prompt: dict[str, Any], registry: Any) -> dict[str, dict[str, Any]]:
    """ComfyUI-shaped node_errors for every input of `prompt` that names a file outside the folders."""
    node_errors: dict[str, dict[str, Any]] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        cls = registry.get(node.get("class_type")) if isinstance(node.get("class_type"), str) else None
        if cls is None:
            continue
        try:
            input_types = cls.INPUT_TYPES()
        except Exception:  # validation reports a node whose schema fails
            continue
        for name, value in node["inputs"].items():
            if not isinstance(value, str) or not escapes_folder(value):
                continue
            input_type, _, options = get_input_info(input_types, name)
            if not _names_a_file(input_type, options or {}):
                continue
            entry = node_errors.setdefault(
                str(node_id), {"errors": [], "dependent_outputs": [], "class_type": node.get("class_type")}
            )
            entry["errors"].append(
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"{name} - Invalid file: {value} (names are relative to the input, "
                    "output or temp folder)",
                    "extra_info": {"input_name": name, "received_value": value},
                }
            )
    return node_errors


def refuse_outside_files(prompt: dict[str, Any], registry: Any) -> ValidationResult | None:
    """A failed ValidationResult when `prompt` names a file outside the folders; else None."""
    node_errors = outside_file_errors(prompt, registry)
    if not node_errors:
        return None
    details = "\n".join(
        f"{e['message']}: {e['details']}" for entry in node_errors.values() for e in entry["errors"]
    )
    error = {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": details,
        "extra_info": {},
    }
    return ValidationResult(False, error, [], node_errors, prompt)
