"""Calling a node the way ComfyUI does: list mapping, `{"ui","result"}` returns, OUTPUT_IS_LIST merging."""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any


def slice_inputs(inputs: dict[str, list[Any]], i: int) -> dict[str, Any]:
    # ComfyUI repeats the last item of a shorter list.
    return {k: v[i if len(v) > i else -1] for k, v in inputs.items()}


def map_node_over_list(obj: Any, inputs: dict[str, list[Any]], func_name: str) -> list[Any]:
    """Call `obj.func_name` once per list index (or once with whole lists under INPUT_IS_LIST).

    Coroutines returned by async functions are left in the result for the caller to await.
    """
    func = getattr(obj, func_name)
    if getattr(obj, "INPUT_IS_LIST", False):
        return [func(**inputs)]
    if not inputs:
        return [func()]
    n = max(len(v) for v in inputs.values())
    if n == 0:
        return [func()]
    if n == 1:
        return [func(**{k: v[0] for k, v in inputs.items()})]
    return [func(**slice_inputs(inputs, i)) for i in range(n)]


def merge_returns(return_values: list[Any], cls: Any) -> tuple[list[list[Any]], dict[str, list[Any]]]:
    """ComfyUI's `get_output_from_returns` (without subgraph expansion): (outputs, ui).

    `outputs[i]` is the list of values of output `i` over the list calls; OUTPUT_IS_LIST
    outputs are concatenated. `ui` joins each key's lists.
    """
    results: list[Any] = []
    uis: list[dict[str, Any]] = []
    for r in return_values:
        if isinstance(r, dict):
            if "ui" in r and r["ui"] is not None:
                uis.append(r["ui"])
            if "result" in r:
                results.append(r["result"])
        else:
            results.append(r)
    output: list[list[Any]] = []
    if results and results[0] is not None:
        width = len(results[0])
        output_is_list = getattr(cls, "OUTPUT_IS_LIST", None) or [False] * width
        for i, is_list in zip(range(width), output_is_list, strict=False):
            if is_list:
                output.append([x for o in results for x in o[i]])
            else:
                output.append([o[i] for o in results])
    ui: dict[str, list[Any]] = {}
    if uis:
        ui = {k: [y for x in uis for y in x[k]] for k in uis[0].keys()}
    return output, ui


async def resolve_async(values: list[Any]) -> list[Any]:
    """Await the coroutines among `values` concurrently (as ComfyUI runs async list items)."""
    pending = [(i, v) for i, v in enumerate(values) if inspect.isawaitable(v)]
    if not pending:
        return values
    done = await asyncio.gather(*(v for _, v in pending))
    out = list(values)
    for (i, _), value in zip(pending, done, strict=True):
        out[i] = value
    return out


def resolve_blocking(values: list[Any]) -> list[Any]:
    """`resolve_async` for synchronous callers (validation, IS_CHANGED) with or without a running loop."""
    if not any(inspect.isawaitable(v) for v in values):
        return values
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(resolve_async(values))
    # A loop already runs in this thread: run ours in a helper thread rather than nest loops.
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(resolve_async(values))
        except BaseException as exc:  # handed back to the caller below
            box["error"] = exc

    thread = threading.Thread(target=runner, name="comfystream-validate-async")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def format_value(x: Any) -> Any:
    """ComfyUI's `format_value` for execution_error's `current_inputs`."""
    if x is None:
        return None
    if isinstance(x, int | float | bool | str):
        return x
    return str(x)
