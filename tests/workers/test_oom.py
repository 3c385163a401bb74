"""Recognising CUDA out-of-memory in a worker's frame error, however a node lets it out."""

from __future__ import annotations

import torch

from comfystream.engine import ExecutionError
from workers.oom import describe_frame_error, is_cuda_oom, is_oom_report

TORCH_TEXT = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"


def _wrapped(inner: BaseException) -> ExecutionError:
    """As the engine raises a node's exception: ExecutionError(...) from it."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise ExecutionError({"node_id": "2", "node_type": "Big", "exception_type": "x"}) from exc
    except ExecutionError as outer:
        return outer


def test_oom_is_recognised_directly_wrapped_or_by_torchs_text():
    for exc in (
        torch.cuda.OutOfMemoryError(TORCH_TEXT),
        _wrapped(torch.cuda.OutOfMemoryError(TORCH_TEXT)),
        RuntimeError(TORCH_TEXT),  # older torch, or a node re-raising it plainly
    ):
        assert is_cuda_oom(exc)
        text = describe_frame_error(exc)
        assert is_oom_report(text) and TORCH_TEXT.split(".")[0] in text
    for exc in (RuntimeError("shape mismatch"), _wrapped(ValueError("CUDA out of memory")), MemoryError()):
        assert not is_cuda_oom(exc)
        assert not is_oom_report(describe_frame_error(exc))
    assert not is_oom_report(None)
