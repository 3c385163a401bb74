"""Prompt checks done in the server process, before any worker sees a prompt: the engine's
validation is cheap, and an invalid prompt must never reach (or disturb) a running worker."""

from __future__ import annotations

from typing import Any

from comfystream.engine import ValidationResult, validate_prompt
from comfystream.prompts import normalize_prompts, normalize_prompts_or_default, registry_input_types
from server.nodes.files import refuse_outside_files


class PromptRejected(ValueError):
    """A prompt failed the engine's validation: `result` is its `ValidationResult`."""

    def __init__(self, result: ValidationResult, index: int, count: int) -> None:
        self.result = result
        self.index = index
        self.count = count
        message = (result.error or {}).get("message") or "prompt failed validation"
        super().__init__(f"prompt {index + 1} of {count}: {message}")


def validate_prompts(
    value: Any, registry: Any, *, default_if_none: bool
) -> tuple[list[dict[str, Any]], bool]:
    """Normalise and validate; returns (prompts, given) where `given` is False for the default prompt.

    Raises `PromptFormatError` (not a prompt at all) or `PromptRejected` (ComfyUI validation failed).
    """
    given = not (value is None or value == [] or value == "")
    input_types = registry_input_types(registry)  # a workflow saved from the editor is converted
    if default_if_none:
        prompts = normalize_prompts_or_default(value, input_types)
    else:
        prompts = normalize_prompts(value, input_types)
    for index, prompt in enumerate(prompts):
        result = refuse_outside_files(prompt, registry) or validate_prompt(prompt, registry)
        if not result.ok:
            raise PromptRejected(result, index, len(prompts))
    return prompts, given


def with_missing_node_hint(error: dict[str, Any] | None) -> dict[str, Any] | None:
    """ComfyUI's `missing_node_type` error, its details saying how this server gets a node (its
    message stays ComfyUI's, which clients may match on)."""
    if not error or error.get("type") != "missing_node_type":
        return error
    class_type = (error.get("extra_info") or {}).get("class_type")
    hint = (
        f"this server has no node {class_type!r}. ComfyUI's own nodes (checkpoints, samplers, ...) "
        "run with a ComfyUI workspace: `comfystream serve --workspace DIR` (`comfystream "
        "setup-workspace DIR` makes one); a custom node package goes in DIR/custom_nodes, or "
        "`--custom-nodes FOLDER`. GET /object_info lists the nodes this server has"
    )
    details = str(error.get("details") or "")
    return {**error, "details": f"{details}: {hint}" if details else hint}
