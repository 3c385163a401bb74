"""ComfyUI-compatible workflow engine: parse, validate, plan once, execute per frame, report events.

The executor's and validation's names are imported on first use (PEP 562): the executor imports
torch, and a module that needs only the node API (`comfystream.engine.context`, `.progress`,
`.errors`) or the registry should not pay for it, nor should every `comfystream` command that
imports one. Validation itself does not import torch: the server validates without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from comfystream.engine.context import CancelToken, ExecutionContext, current_context
from comfystream.engine.errors import ExecutionError, InterruptProcessingException, PromptValidationError
from comfystream.engine.progress import ProgressBar, report_progress_text
from comfystream.engine.registry import NodeRegistry

if TYPE_CHECKING:
    from comfystream.engine.executor import CompiledPrompt, ExecutionResult, compile_prompt, compile_prompts
    from comfystream.engine.validation import ValidationResult, parse_prompt, validate_prompt

# name -> the submodule that defines it, imported when the name is first asked for
_LAZY = {
    "CompiledPrompt": "executor",
    "ExecutionResult": "executor",
    "compile_prompt": "executor",
    "compile_prompts": "executor",
    "ValidationResult": "validation",
    "parse_prompt": "validation",
    "validate_prompt": "validation",
}


def __getattr__(name: str) -> Any:
    submodule = _LAZY.get(name)
    if submodule is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{submodule}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CancelToken",
    "CompiledPrompt",
    "ExecutionContext",
    "ExecutionError",
    "ExecutionResult",
    "InterruptProcessingException",
    "NodeRegistry",
    "ProgressBar",
    "PromptValidationError",
    "ValidationResult",
    "compile_prompt",
    "compile_prompts",
    "current_context",
    "parse_prompt",
    "report_progress_text",
    "validate_prompt",
]
