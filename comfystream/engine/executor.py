"""A compiled prompt: validated and planned once, then executed many times (once per frame).

Every execution runs under `torch.inference_mode()`, as ComfyUI's executor runs every prompt:
model weights loaded by a node would otherwise record autograd graphs (and ops with `out=`
refuse to run on them).

The per-execution path is a loop over pre-resolved steps (bound node functions, constant
kwargs, links as indexes into a value list); nothing re-reads the prompt. Nodes that do not
depend on the frame input run on the first execution and their outputs are reused, until
their `IS_CHANGED` says otherwise. One loop serves both drivers: it is a generator that yields
only to await an async node, so `execute_sync` of a prompt without async nodes never touches
asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from comfystream.engine.context import ExecutionContext, reset_current_context, set_current_context
from comfystream.engine.errors import ExecutionError, InterruptProcessingException, PromptValidationError
from comfystream.engine.invoke import (
    format_value,
    map_node_over_list,
    merge_returns,
    resolve_async,
    resolve_blocking,
)
from comfystream.engine.node_types import (
    EXTRA_DATA_HIDDEN,
    full_type_name,
    get_input_info,
    hidden_spec,
    is_async_node,
    is_output_node,
)
from comfystream.engine.output_cache import CachedOutput, OutputCache, is_loader, signature_value
from comfystream.engine.planning import DependencyCycleError, Plan, plan_prompt
from comfystream.engine.progress import send_progress_state
from comfystream.engine.validation import ValidationResult, validate_prompt

logger = logging.getLogger(__name__)


@dataclass
class ExecutionResult:
    outputs: dict[str, dict[str, Any]]  # node_id -> ui dict (ComfyUI history "outputs")
    frames: list[Any]  # what SaveTensor produced, in order
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    # With ctx.capture_outputs: node_id -> the images fed to that output node's IMAGE inputs.
    output_images: dict[str, list[Any]] = field(default_factory=dict)


class _Step:
    """One node of the plan with everything its call needs resolved ahead of time."""

    __slots__ = (
        "index",
        "node_id",
        "class_type",
        "cls",
        "func",
        "is_async",
        "is_output",
        "input_is_list",
        "output_is_list",
        "consts",
        "links",
        "ctx_hidden",
        "has_is_changed",
        "frame_dependent",
        "fast",
        "image_inputs",
        "signature",
        "loader",
    )

    def __init__(self, index: int, node_id: str, class_type: str, cls: type):
        self.index = index
        self.node_id = node_id
        self.class_type = class_type
        self.cls = cls
        self.func: Any = None  # bound on first run (ComfyUI instantiates nodes lazily too)
        self.is_async = is_async_node(cls)
        self.is_output = is_output_node(cls)
        self.input_is_list = bool(getattr(cls, "INPUT_IS_LIST", False))
        self.output_is_list = bool(any(getattr(cls, "OUTPUT_IS_LIST", ()) or ()))
        self.consts: dict[str, Any] = {}  # name -> value (one item; ComfyUI wraps it as [value])
        self.links: tuple[tuple[str, int, int], ...] = ()  # (name, source step index, slot)
        self.ctx_hidden: tuple[tuple[str, str], ...] = ()  # (name, extra_data key)
        self.has_is_changed = hasattr(cls, "IS_CHANGED")
        self.frame_dependent = True
        self.fast = not self.input_is_list and not self.output_is_list
        self.image_inputs: frozenset[str] = frozenset()
        # What the output of a frame-independent node depends on: its class, its constants and
        # its ancestors' signatures (None: not shared across prompts).
        self.signature: Any = None
        self.loader = is_loader(cls)

    def bind(self) -> Any:
        obj = self.cls()
        self.func = getattr(obj, self.cls.FUNCTION)
        return self.func

    def list_inputs(self, values: list[Any], ctx: ExecutionContext) -> dict[str, list[Any]]:
        """ComfyUI's `input_data_all`: every input as a list."""
        inputs: dict[str, list[Any]] = {k: [v] for k, v in self.consts.items()}
        for name, src, slot in self.links:
            out = values[src]
            inputs[name] = out[slot] if out is not None and slot < len(out) else [None]
        for name, key in self.ctx_hidden:
            inputs[name] = [ctx.extra_data.get(key)]
        return inputs


def _now_ms() -> int:
    return int(time.time() * 1000)


class CompiledPrompt:
    """A validated, planned prompt. `execute` / `execute_sync` run it with a fresh context each time."""

    def __init__(
        self,
        prompt: dict[str, Any],
        registry: Mapping[str, type],
        validation: ValidationResult,
        plan: Plan,
        cache: OutputCache | None = None,
    ):
        self.prompt = prompt
        self.registry = registry
        self.validation = validation
        self.plan = plan
        self.outputs = list(plan.outputs)
        index = {node_id: i for i, node_id in enumerate(plan.order)}
        steps: list[_Step] = []
        for i, node_id in enumerate(plan.order):
            node = prompt[node_id]
            cls = registry[node["class_type"]]
            step = _Step(i, node_id, node["class_type"], cls)
            input_types = cls.INPUT_TYPES()
            linked = {name for name, _, _ in plan.parents[node_id]}
            for name, value in node.get("inputs", {}).items():
                if name in linked or isinstance(value, list):
                    continue
                if get_input_info(input_types, name)[1] in ("required", "optional"):
                    step.consts[name] = value
            step.links = tuple((name, index[src], slot) for name, src, slot in plan.parents[node_id])
            ctx_hidden = []
            whole_prompt: set[str] = set()  # hidden inputs that are the whole prompt: not in the signature
            for name, kind in hidden_spec(input_types).items():
                if kind == "PROMPT":
                    step.consts[name] = prompt
                    whole_prompt.add(name)
                elif kind == "UNIQUE_ID":
                    step.consts[name] = node_id
                elif kind in ("DYNPROMPT", "EXECUTION_LIST"):
                    step.consts[name] = None
                    whole_prompt.add(name)
                elif kind in EXTRA_DATA_HIDDEN:
                    ctx_hidden.append((name, EXTRA_DATA_HIDDEN[kind]))
            step.ctx_hidden = tuple(ctx_hidden)
            step.image_inputs = frozenset(
                name
                for name, _, _ in plan.parents[node_id]
                if get_input_info(input_types, name)[0] == "IMAGE"
            )
            step.frame_dependent = node_id in plan.frame_dependent
            if not step.frame_dependent and not step.ctx_hidden:
                parent_signatures = [steps[src].signature for _, src, _ in step.links]
                if all(sig is not None for sig in parent_signatures):
                    consts = tuple(
                        sorted((k, signature_value(v)) for k, v in step.consts.items() if k not in whole_prompt)
                    )
                    links = tuple(
                        (name, sig, slot) for (name, _, slot), sig in zip(step.links, parent_signatures, strict=True)
                    )
                    step.signature = (step.class_type, consts, links)
            steps.append(step)
        self.steps = steps
        self.is_async = any(s.is_async for s in steps)
        self._static = [s for s in steps if not s.frame_dependent]
        self._dynamic = [s for s in steps if s.frame_dependent]
        # Static steps that consume each static step's output, transitively.
        self._static_descendants: dict[int, set[int]] = {}
        for s in reversed(self._static):
            desc: set[int] = set()
            for t in self._static:
                if any(src == s.index for _, src, _ in t.links):
                    desc.add(t.index)
                    desc |= self._static_descendants.get(t.index, set())
            self._static_descendants[s.index] = desc
        self.cache = cache
        self._static_values: dict[int, list[list[Any]]] = {}
        self._static_ui: dict[str, dict[str, Any]] = {}
        self._is_changed: dict[int, Any] = {}
        self._base_values: list[Any] | None = None  # value list with every static output filled in

    # -- public API -------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[str]:
        return [s.node_id for s in self.steps]

    @property
    def static_nodes(self) -> list[str]:
        """Nodes computed once and reused (not depending on the frame input)."""
        return [s.node_id for s in self._static]

    @property
    def signatures(self) -> list[Any]:
        """The shared-cache keys of this prompt's frame-independent nodes (what it keeps alive)."""
        return [s.signature for s in self._static if s.signature is not None]

    def reset_cache(self) -> None:
        """Forget the reused frame-independent outputs (they are computed again next time)."""
        self._static_values.clear()
        self._static_ui.clear()
        self._is_changed.clear()
        self._base_values = None

    async def execute(self, ctx: ExecutionContext) -> ExecutionResult:
        token = set_current_context(ctx)
        try:
            gen = self._run(ctx)
            value: Any = None
            error: BaseException | None = None
            while True:
                try:
                    # Inference mode around each synchronous stretch only: the loop may run
                    # other coroutines while an async node is awaited.
                    with torch.inference_mode():
                        awaitable = gen.throw(error) if error is not None else gen.send(value)
                except StopIteration as stop:
                    return stop.value
                error = None
                try:
                    value = await awaitable
                except Exception as exc:  # handed to the node's error handling inside the loop
                    error = exc
        finally:
            reset_current_context(token)

    def execute_sync(self, ctx: ExecutionContext) -> ExecutionResult:
        if self.is_async:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self.execute(ctx))
            raise RuntimeError(
                "this prompt has async nodes: use `await plan.execute(ctx)` inside a running loop"
            )
        token = set_current_context(ctx)
        try:
            gen = self._run(ctx)
            try:
                with torch.inference_mode():
                    next(gen)
            except StopIteration as stop:
                return stop.value
            gen.close()
            raise RuntimeError("an async node ran in execute_sync")  # is_async said there was none
        finally:
            reset_current_context(token)

    # -- the loop ----------------------------------------------------------------------------

    def _stale_static(self, ctx: ExecutionContext) -> set[int]:
        """Static steps to (re)compute this time: on the first run those the shared cache does not
        hold for the same signature (and IS_CHANGED), then those whose IS_CHANGED moved."""
        changed_now: dict[int, Any] = {}
        for s in self._static:
            if not s.has_is_changed:
                continue
            # ComfyUI gives IS_CHANGED the constants only (linked inputs are None).
            inputs = {k: [v] for k, v in s.consts.items()}
            for name, _, _ in s.links:
                inputs[name] = [None]
            try:
                changed_now[s.index] = resolve_blocking(map_node_over_list(s.cls, inputs, "IS_CHANGED"))
            except Exception as exc:
                logger.warning("IS_CHANGED of node %s (%s) failed: %s", s.node_id, s.class_type, exc)
                changed_now[s.index] = float("nan")
        stale: set[int] = set()
        adopt: dict[int, CachedOutput] = {}
        for s in self._static:
            if s.index in self._static_values:
                previous = self._is_changed.get(s.index, _MISSING)
                fresh = s.index not in changed_now or previous is _MISSING or changed_now[s.index] == previous
            else:
                entry = self.cache.get(s.signature) if self.cache is not None and s.signature is not None else None
                fresh = entry is not None and (
                    s.index not in changed_now or entry.is_changed == changed_now[s.index]
                )
                if fresh:
                    adopt[s.index] = entry
            if not fresh:
                stale.add(s.index)
                stale |= self._static_descendants[s.index]
        for i, entry in adopt.items():
            if i not in stale:
                self._static_values[i] = entry.output
                if entry.ui:
                    self._static_ui[self.steps[i].node_id] = entry.ui
        self._is_changed.update(changed_now)
        return stale

    def _run(self, ctx: ExecutionContext) -> Generator[Any, Any, ExecutionResult]:
        emit = _safe_emitter(ctx.on_event) if ctx.on_event is not None else None
        prompt_id = ctx.prompt_id
        cancel = ctx.cancel
        if emit is not None:
            emit("execution_start", {"prompt_id": prompt_id, "timestamp": _now_ms()})

        base = self._base_values
        has_is_changed = any(s.has_is_changed for s in self._static)
        if base is not None and not has_is_changed:
            run = self._dynamic  # the per-frame fast path: statics are all cached
            values = base.copy()
            cached_ids = [s.node_id for s in self._static]
        else:
            stale = self._stale_static(ctx)
            values = [None] * len(self.steps)
            for i, out in self._static_values.items():
                if i not in stale:
                    values[i] = out
            run = [s for s in self.steps if s.frame_dependent or s.index in stale]
            cached_ids = [s.node_id for s in self._static if s.index not in stale]
        if emit is not None:
            emit("execution_cached", {"nodes": cached_ids, "prompt_id": prompt_id, "timestamp": _now_ms()})

        ui_outputs: dict[str, dict[str, Any]] = {}
        if self._static_ui:  # reused nodes keep their ui in the result, as ComfyUI's history does
            reused = set(cached_ids)
            ui_outputs = {nid: ui for nid, ui in self._static_ui.items() if nid in reused}

        for pos, step in enumerate(run):
            node_id = step.node_id
            ctx.current_node = node_id
            inputs_for_error: dict[str, list[Any]] | None = None
            try:
                cancel.check()
                if emit is not None:
                    emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
                    ctx.node_progress[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
                    send_progress_state(ctx)
                func = step.func or step.bind()
                ui = None
                output = None
                if step.fast and not step.ctx_hidden:
                    # One call with one value per input (the streaming case).
                    kwargs = dict(step.consts)
                    for name, src, slot in step.links:
                        out = values[src]
                        lst = out[slot] if slot < len(out) else [None]
                        if len(lst) != 1:
                            break
                        kwargs[name] = lst[0]
                    else:
                        r = func(**kwargs)
                        if step.is_async:
                            r = yield r
                        if type(r) is tuple:
                            output = [[x] for x in r]
                        else:
                            output, ui = merge_returns([r], step.cls)
                if output is None:
                    inputs = step.list_inputs(values, ctx)
                    inputs_for_error = inputs
                    if step.input_is_list:
                        returns = [func(**inputs)]
                    else:
                        returns = _map_bound(func, inputs)
                    if step.is_async:
                        returns = yield resolve_async(returns)
                    output, ui = merge_returns(returns, step.cls)
                values[step.index] = output
                if not step.frame_dependent:
                    self._static_values[step.index] = output
                    if ui:
                        self._static_ui[node_id] = ui
                    if self.cache is not None:
                        if step.loader:
                            self.cache.model_loads += 1
                        if self.cache.on_computed is not None:
                            self.cache.on_computed(f"node {node_id} ({step.class_type})", output, step.loader)
                        if step.signature is not None:
                            self.cache.put(
                                step.signature, CachedOutput(output, ui, self._is_changed.get(step.index))
                            )
                if ui:
                    ui_outputs[node_id] = ui
                    if emit is not None:
                        emit(
                            "executed",
                            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                        )
                if emit is not None:
                    st = ctx.node_progress[node_id]
                    st["state"] = "finished"
                    st["value"] = st["max"]
                    send_progress_state(ctx)
            except InterruptProcessingException:
                logger.info("Processing interrupted (prompt %s, node %s)", prompt_id, node_id)
                ctx.current_node = None
                if emit is not None:
                    emit(
                        "execution_interrupted",
                        {
                            "prompt_id": prompt_id,
                            "node_id": node_id,
                            "node_type": step.class_type,
                            "executed": [s.node_id for s in run[:pos]],
                            "timestamp": _now_ms(),
                        },
                    )
                    emit("executing", {"node": None, "prompt_id": prompt_id})
                raise
            except Exception as ex:
                typ, _, tb = sys.exc_info()
                if inputs_for_error is None:
                    try:
                        inputs_for_error = step.list_inputs(values, ctx)
                    except Exception:
                        inputs_for_error = {}
                logger.error(
                    "!!! Exception during processing !!! prompt %s node %s (%s): %s",
                    prompt_id,
                    node_id,
                    step.class_type,
                    ex,
                )
                logger.debug("%s", traceback.format_exc())
                payload = {
                    "prompt_id": prompt_id,
                    "node_id": node_id,
                    "node_type": step.class_type,
                    "executed": [s.node_id for s in run[:pos]],
                    "exception_message": f"{ex}\n",
                    "exception_type": full_type_name(typ),
                    "traceback": traceback.format_tb(tb),
                    "current_inputs": {k: [format_value(x) for x in v] for k, v in inputs_for_error.items()},
                    "current_outputs": cached_ids,
                    "timestamp": _now_ms(),
                }
                ctx.current_node = None
                if emit is not None:
                    ctx.node_progress.setdefault(node_id, {"value": 0.0, "max": 1.0})["state"] = "error"
                    emit("execution_error", payload)
                    emit("executing", {"node": None, "prompt_id": prompt_id})
                raise ExecutionError(payload) from ex

        ctx.current_node = None
        if self._base_values is None and len(self._static_values) == len(self._static):
            base_values: list[Any] = [None] * len(self.steps)
            for i, out in self._static_values.items():
                base_values[i] = out
            self._base_values = base_values
        if emit is not None:
            emit("execution_success", {"prompt_id": prompt_id, "timestamp": _now_ms()})
            emit("executing", {"node": None, "prompt_id": prompt_id})
        result = ExecutionResult(
            outputs=ui_outputs,
            frames=ctx.output_frames,
            executed=[s.node_id for s in run],
            cached=cached_ids,
        )
        if ctx.capture_outputs:
            for s in self.steps:
                if s.is_output:
                    images = result.output_images.setdefault(s.node_id, [])
                    for name, src, slot in s.links:
                        if name in s.image_inputs and values[src] is not None and slot < len(values[src]):
                            images.extend(values[src][slot])
        return result


_MISSING = object()


def _safe_emitter(on_event: Any) -> Any:
    """The caller's callback, made unable to fail the run: a raising callback is logged, not fatal."""

    def emit(event_type: str, data: dict[str, Any]) -> None:
        try:
            on_event(event_type, data)
        except Exception:
            logger.exception("event callback failed on %s", event_type)

    return emit


def _map_bound(func: Any, inputs: dict[str, list[Any]]) -> list[Any]:
    if not inputs:
        return [func()]
    n = max(len(v) for v in inputs.values())
    if n == 0:
        return [func()]
    return [func(**{k: v[i if len(v) > i else -1] for k, v in inputs.items()}) for i in range(n)]


def compile_prompts(
    value: Any,
    registry: Mapping[str, type],
    extra_data: dict[str, Any] | None = None,
    cache: OutputCache | None = None,
) -> list[CompiledPrompt]:
    """Every prompt of a dict, JSON string or list of either; raises PromptValidationError on the first bad one."""
    from comfystream.prompts import PromptFormatError, normalize_prompts

    try:
        prompts = normalize_prompts(value)
    except PromptFormatError:
        return [
            compile_prompt(value, registry, extra_data=extra_data)
        ]  # raises with ComfyUI's invalid_prompt
    return [compile_prompt(p, registry, extra_data=extra_data, cache=cache) for p in prompts]


def compile_prompt(
    prompt: Any,
    registry: Mapping[str, type],
    partial_execution_list: list[str] | None = None,
    extra_data: dict[str, Any] | None = None,
    cache: OutputCache | None = None,
) -> CompiledPrompt:
    """Validate and plan once; raises PromptValidationError (with ComfyUI's result) on a bad prompt."""
    result = validate_prompt(prompt, registry, partial_execution_list, extra_data)
    if not result.ok:
        raise PromptValidationError(result)
    try:
        plan = plan_prompt(result.prompt, result.outputs, registry)
    except DependencyCycleError as exc:
        error = {
            "type": "dependency_cycle",
            "message": "Dependency cycle detected",
            "details": str(exc),
            "extra_info": {"cycle_nodes": exc.cycle},
        }
        node_errors = {
            n: {
                "errors": [error],
                "dependent_outputs": list(result.outputs),
                "class_type": result.prompt[n]["class_type"],
            }
            for n in exc.cycle
        }
        failed = ValidationResult(
            False,
            {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": f"{error['message']}: {exc}",
                "extra_info": {},
            },
            [],
            node_errors,
            result.prompt,
        )
        raise PromptValidationError(failed) from exc
    return CompiledPrompt(result.prompt, registry, result, plan, cache)
