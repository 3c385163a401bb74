"""CUDA out-of-memory in a worker: recognised in the worker, reported as the frame's error with a
fixed prefix, and seen by the server, which replaces the process (its CUDA allocator may be left
fragmented, and the next frames would likely fail the same way) while the stream goes on.

No torch import: the worker's exception is recognised by its type's name and torch's message, and
the server only reads the prefix of the error text it is sent.
"""

from __future__ import annotations

OOM_PREFIX = "CUDA out of memory"


def is_cuda_oom(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised from (the engine wraps a node's exception in
    ExecutionError), is torch's CUDA out-of-memory error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {(c.__module__, c.__qualname__) for c in type(exc).__mro__}
        if ("torch", "OutOfMemoryError") in names or ("torch.cuda", "OutOfMemoryError") in names:
            return True
        # Older torch, and code that re-raises it as a plain RuntimeError, keep torch's message.
        if isinstance(exc, RuntimeError) and str(exc).startswith("CUDA out of memory"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe_frame_error(exc: BaseException) -> str:
    """The error text a failed frame is reported with; a CUDA OOM starts with OOM_PREFIX."""
    text = f"{type(exc).__name__}: {exc}"
    return f"{OOM_PREFIX} ({text})" if is_cuda_oom(exc) else text


def is_oom_report(error: str | None) -> bool:
    """Whether a frame's reported error (describe_frame_error's text) is a CUDA OOM."""
    return error is not None and error.startswith(OOM_PREFIX)
