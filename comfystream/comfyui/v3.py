"""ComfyUI V3 nodes (`comfy_api.latest.io.ComfyNode`) seen through the V1 protocol our engine runs.

ComfyUI's own executor treats V3 classes specially: it clones the class with the hidden inputs
(`PREPARE_CLASS_CLONE`), calls `execute` through a locked copy, sets the executing-node context,
and unpacks the `NodeOutput` it returns. `v1_face` builds a plain V1 class that does the same, so
the engine needs no knowledge of V3.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from comfystream.engine.context import current_context

logger = logging.getLogger(__name__)

_RUN = "comfystream_run_v3"
_V1_CLASS_ATTRS = (
    "RETURN_TYPES",
    "RETURN_NAMES",
    "OUTPUT_IS_LIST",
    "INPUT_IS_LIST",
    "OUTPUT_NODE",
    "OUTPUT_TOOLTIPS",
    "CATEGORY",
    "DESCRIPTION",
    "DEPRECATED",
    "EXPERIMENTAL",
    "API_NODE",
    "NOT_IDEMPOTENT",
)


def is_v3_node(cls: Any) -> bool:
    try:
        from comfy_api.internal import _ComfyNodeInternal
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, _ComfyNodeInternal)


def _hidden_kinds(node_cls: type) -> dict[str, str]:
    """{hidden input name: ComfyUI hidden kind ("UNIQUE_ID", "PROMPT", ...)}."""
    hidden = node_cls.INPUT_TYPES().get("hidden") or {}
    return {name: (spec[0] if isinstance(spec, tuple | list) else spec) for name, spec in hidden.items()}


def _split_hidden(node_cls: type, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    kinds = _hidden_kinds(node_cls)
    hidden = {kinds[k]: v for k, v in kwargs.items() if k in kinds}
    inputs = {k: v for k, v in kwargs.items() if k not in kinds}
    return inputs, hidden


def _locked_call(node_cls: type, method_name: str, hidden: dict[str, Any]) -> Any:
    from comfy_api.internal import make_locked_method_func

    clone = node_cls.PREPARE_CLASS_CLONE(hidden)
    return make_locked_method_func(node_cls, method_name, clone)


def _node_context(node_id: Any):
    """ComfyUI's executing-node context, for nodes that ask `get_executing_context()`."""
    from comfy_execution.utils import CurrentNodeContext

    ctx = current_context()
    prompt_id = ctx.prompt_id if ctx is not None else ""
    if node_id is None and ctx is not None:
        node_id = ctx.current_node
    return CurrentNodeContext(prompt_id, node_id)


def _to_v1_return(node_cls: type, out: Any) -> Any:
    """`NodeOutput` -> V1's `{"ui": ..., "result": (...)}`."""
    from comfy_api.internal import _NodeOutputInternal

    if not isinstance(out, _NodeOutputInternal):
        return out
    if getattr(out, "expand", None) is not None:
        raise NotImplementedError(
            f"{node_cls.__name__}: node expansion (NodeOutput.expand) is not supported by comfystream's engine"
        )
    if getattr(out, "block_execution", None) is not None:
        raise RuntimeError(f"{node_cls.__name__} blocked execution: {out.block_execution}")
    ret: dict[str, Any] = {"result": tuple(out.result) if out.result is not None else ()}
    ui = out.ui
    if ui is not None:
        ret["ui"] = ui if isinstance(ui, dict) else ui.as_dict()
    return ret


def v1_face(node_cls: type, name: str) -> type:
    """A V1 node class that runs the V3 `node_cls` as ComfyUI's executor does."""
    node_cls.GET_SCHEMA()  # validates the class and fills RETURN_TYPES & co.
    attrs: dict[str, Any] = {
        attr: getattr(node_cls, attr) for attr in _V1_CLASS_ATTRS if getattr(node_cls, attr, None) is not None
    }
    attrs["FUNCTION"] = _RUN
    attrs["COMFY_V3_CLASS"] = node_cls
    attrs["RELATIVE_PYTHON_MODULE"] = getattr(node_cls, "RELATIVE_PYTHON_MODULE", None)
    attrs["__doc__"] = node_cls.__doc__
    # Evaluated on every call: V3 schemas list files and models that change at run time.
    attrs["INPUT_TYPES"] = classmethod(lambda cls: node_cls.INPUT_TYPES())
    attrs["GET_NODE_INFO_V1"] = classmethod(lambda cls: node_cls.GET_NODE_INFO_V1())

    execute_name = node_cls.FUNCTION
    if inspect.iscoroutinefunction(getattr(node_cls, execute_name)):

        async def run_async(self: Any, **kwargs: Any) -> Any:
            inputs, hidden = _split_hidden(node_cls, kwargs)
            func = _locked_call(node_cls, execute_name, hidden)
            with _node_context(hidden.get("UNIQUE_ID")):
                return _to_v1_return(node_cls, await func(**inputs))

        attrs[_RUN] = run_async
    else:

        def run(self: Any, **kwargs: Any) -> Any:
            inputs, hidden = _split_hidden(node_cls, kwargs)
            func = _locked_call(node_cls, execute_name, hidden)
            with _node_context(hidden.get("UNIQUE_ID")):
                return _to_v1_return(node_cls, func(**inputs))

        attrs[_RUN] = run

    _add_optional(attrs, node_cls, "validate_inputs", "VALIDATE_INPUTS")
    _add_optional(attrs, node_cls, "fingerprint_inputs", "IS_CHANGED")
    face = type(name, (), attrs)
    face.__module__ = node_cls.__module__
    face.__qualname__ = node_cls.__qualname__
    return face


def _add_optional(attrs: dict[str, Any], node_cls: type, v3_name: str, v1_name: str) -> None:
    """V3's `validate_inputs` / `fingerprint_inputs` as V1's, with the same signature (ComfyUI
    passes a validator only the inputs it names)."""
    from comfy_api.internal import first_real_override

    real = first_real_override(node_cls, v3_name)
    if real is None:
        return

    def call(cls: Any, **kwargs: Any) -> Any:
        inputs, hidden = _split_hidden(node_cls, kwargs)
        return _locked_call(node_cls, v3_name, hidden)(**inputs)

    params = list(inspect.signature(real.__func__).parameters.values())
    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    attrs[v1_name] = classmethod(call)
