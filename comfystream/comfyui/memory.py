"""Letting go of models nothing uses any more, the way ComfyUI's executor does between prompts."""

from __future__ import annotations

import gc
import sys


def release_unused_models() -> None:
    """After the outputs holding a model were dropped: collect them (model code has reference
    cycles), then let ComfyUI's model management forget its entries for models that are gone (it
    holds them weakly) and give cached device memory back. Without a ComfyUI loaded, the
    collection is all it takes."""
    gc.collect()
    model_management = sys.modules.get("comfy.model_management")
    if model_management is None:
        return
    for name in ("cleanup_models", "soft_empty_cache"):
        step = getattr(model_management, name, None)
        if step is not None:
            step()
