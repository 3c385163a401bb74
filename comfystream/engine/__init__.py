"""ComfyUI-compatible workflow engine: parse, validate, plan once, execute per frame, report events."""

from comfystream.engine.context import CancelToken, ExecutionContext, current_context
from comfystream.engine.errors import ExecutionError, InterruptProcessingException, PromptValidationError
from comfystream.engine.executor import CompiledPrompt, ExecutionResult, compile_prompt, compile_prompts
from comfystream.engine.progress import ProgressBar, report_progress_text
from comfystream.engine.registry import NodeRegistry
from comfystream.engine.validation import ValidationResult, parse_prompt, validate_prompt

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
