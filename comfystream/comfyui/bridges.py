"""ComfyUI's process-global hooks, tied to comfystream's per-execution context.

- Progress: ComfyUI's `comfy.utils.ProgressBar` calls one global hook; ours reports to the
  execution running in the calling thread/task (`current_context()`), so `progress` and
  `preview` events carry that execution's `prompt_id`, and two executions never mix.
- Interrupt: ComfyUI nodes poll `comfy.model_management.throw_exception_if_processing_interrupted()`
  (directly, and through the progress hook as ComfyUI's own server does). It now also fires when
  the current execution's cancel token is set, and raises comfystream's
  `InterruptProcessingException`, which is also what ComfyUI's own name resolves to, so
  `except comfy.model_management.InterruptProcessingException` in node code still catches it.
  ComfyUI's global `interrupt_current_processing()` keeps working as before.
- V3 progress (`comfy_api` `execution.set_progress`) goes through ComfyUI's progress registry;
  a registry that forwards to the current execution replaces the global one.
"""

from __future__ import annotations

import logging
from typing import Any

from comfystream.engine.context import current_context
from comfystream.engine.errors import InterruptProcessingException
from comfystream.engine.progress import report_progress

logger = logging.getLogger(__name__)


def progress_hook(value: float, total: float, preview: Any, prompt_id: str | None = None, node_id: str | None = None) -> None:
    """`comfy.utils.set_progress_bar_global_hook` target (ComfyUI's signature)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()
    # The node that made the bar (ComfyUI binds it at creation); else the engine's current node.
    report_progress(value, total, preview, node_id=node_id)


def install_interrupt_bridge(model_management: Any) -> None:
    """Call right after `import comfy.model_management`, before any node module imports it."""
    if getattr(model_management, "_comfystream_bridged", False):
        return
    model_management.InterruptProcessingException = InterruptProcessingException
    global_flag_check = model_management.throw_exception_if_processing_interrupted
    global_flag = model_management.processing_interrupted

    def throw_exception_if_processing_interrupted() -> None:
        ctx = current_context()
        if ctx is not None:
            ctx.cancel.check()
        global_flag_check()  # ComfyUI's own flag: resets it and raises (our class, see above)

    def processing_interrupted() -> bool:
        ctx = current_context()
        if ctx is not None and ctx.cancel.cancelled:
            return True
        return global_flag()

    model_management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    model_management.processing_interrupted = processing_interrupted
    model_management._comfystream_bridged = True


def install_progress_bridge() -> None:
    import comfy.utils

    comfy.utils.set_progress_bar_global_hook(progress_hook)
    try:
        from comfy_execution import progress as comfy_progress
    except ImportError:  # older ComfyUI: no V3 progress registry
        return
    comfy_progress.global_progress_registry = _make_registry(comfy_progress)


def _make_registry(comfy_progress: Any) -> Any:
    from comfy_execution.graph import DynamicPrompt

    class ExecutionProgressRegistry(comfy_progress.ProgressRegistry):
        """ComfyUI's progress registry, reporting to the execution that runs the caller."""

        def update_progress(self, node_id: str, value: float, max_value: float, image: Any = None) -> None:
            report_progress(value, max_value, image, node_id=node_id)

        def start_progress(self, node_id: str) -> None:
            pass

        def finish_progress(self, node_id: str) -> None:
            pass

    return ExecutionProgressRegistry(prompt_id="", dynprompt=DynamicPrompt({}))
