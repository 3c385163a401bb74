"""Prompt checks done in the server process, before any worker sees a prompt: the engine's
validation is cheap, and an invalid prompt must never reach (or disturb) a running worker."""

from __future__ import annotations

from typing import Any

from comfystream.engine import ValidationResult, validate_prompt
from comfystream.prompts import normalize_prompts, normalize_prompts_or_default
from server.prompt_files import refuse_outside_files


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
    prompts = normalize_prompts_or_default(value) if default_if_none else normalize_prompts(value)
    for index, prompt in enumerate(prompts):
        result = refuse_outside_files(prompt, registry) or validate_prompt(prompt, registry)
        if not result.ok:
            raise PromptRejected(result, index, len(prompts))
    return prompts, given
