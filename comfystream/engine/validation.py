"""Prompt validation with ComfyUI's rules, error types, messages and result shapes.

Mirrors ComfyUI's `execution.validate_prompt` / `validate_inputs`: prompt-level errors
(`invalid_prompt`, `missing_node_type`, `prompt_no_outputs`, `prompt_outputs_failed_validation`)
and per-node `node_errors[node_id] = {"errors", "dependent_outputs", "class_type"}`. Values
are coerced (INT/FLOAT/STRING/BOOLEAN) before min/max checks, and the coerced prompt is kept on
the result for planning.

torch is not imported here: the server validates every prompt it is sent and never computes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import sys
import traceback
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfystream.engine.invoke import map_node_over_list, resolve_blocking
from comfystream.engine.node_types import (
    COMBO_TYPE,
    full_type_name,
    get_input_info,
    hidden_values,
    is_output_node,
    validate_node_input,
)
from comfystream.prompts import PromptFormatError, normalize_prompts

logger = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    """ComfyUI's `(valid, error, good_outputs, node_errors)` plus the coerced prompt."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, dict[str, Any]]
    prompt: dict[str, Any] = field(default_factory=dict)

    def to_comfy(self) -> dict[str, Any]:
        """The body of ComfyUI's `POST /prompt` answer on a validation failure."""
        return {"error": self.error, "node_errors": self.node_errors}

    def validation_errors(self) -> list[dict[str, Any]]:
        """Flat list in the seed API's shape: node_id, node_type, error_type, message, input_name, ..."""
        out: list[dict[str, Any]] = []
        for node_id, entry in self.node_errors.items():
            for err in entry["errors"]:
                extra = err.get("extra_info") or {}
                config = extra.get("input_config")
                options: list[Any] = []
                if isinstance(config, list | tuple) and config:
                    if isinstance(config[0], list):
                        options = list(config[0])
                    elif len(config) > 1 and isinstance(config[1], dict):
                        options = list(config[1].get("options", []))
                out.append(
                    {
                        "node_id": node_id,
                        "node_type": entry.get("class_type"),
                        "error_type": err.get("type"),
                        "message": err.get("message"),
                        "details": err.get("details"),
                        "input_name": extra.get("input_name"),
                        "received_value": extra.get("received_value"),
                        "valid_options": options,
                    }
                )
        if not out and self.error is not None:
            out.append(
                {
                    "node_id": (self.error.get("extra_info") or {}).get("node_id"),
                    "node_type": (self.error.get("extra_info") or {}).get("class_type"),
                    "error_type": self.error.get("type"),
                    "message": self.error.get("message"),
                    "details": self.error.get("details"),
                    "input_name": None,
                    "received_value": None,
                    "valid_options": [],
                }
            )
        return out


def _prompt_error(
    type_: str, message: str, details: str = "", extra_info: dict | None = None
) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def _failed(error: dict[str, Any], prompt: dict[str, Any] | None = None) -> ValidationResult:
    return ValidationResult(False, error, [], {}, prompt or {})


def _link_source(prompt: dict[str, Any], registry: Mapping[str, type], node_id: str, name: str, link: list):
    """The class and RETURN_TYPES entry a link points at; raises a clear error for a dangling one."""
    o_id, slot = link
    if not isinstance(o_id, str) or o_id not in prompt:
        raise LookupError(
            f"input '{name}' of node {node_id} links to node {o_id!r}, which is not in the prompt"
        )
    o_class = registry[prompt[o_id]["class_type"]]
    returns = tuple(getattr(o_class, "RETURN_TYPES", ()))
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(returns):
        raise IndexError(
            f"input '{name}' of node {node_id} links to output {slot!r} of node {o_id} "
            f"({prompt[o_id]['class_type']}), which has {len(returns)} output(s)"
        )
    return o_id, returns[slot]


class _Validator:
    def __init__(self, prompt: dict[str, Any], registry: Mapping[str, type], extra_data: dict[str, Any]):
        self.prompt = prompt
        self.registry = registry
        self.extra_data = extra_data
        self.validated: dict[str, tuple[bool, list[dict[str, Any]], str]] = {}
        self.visiting_set: set[str] = set()  # the ids on the `visiting` path, for a constant-time check

    def validate_inputs(self, unique_id: str, visiting: list[str]) -> tuple[bool, list[dict[str, Any]], str]:
        """ComfyUI's recursive validation, run on an explicit stack: each node's check is a generator
        that yields the id of a linked node it needs and is resumed with that node's result (or
        the exception it raised), so a chain of any length never reaches Python's recursion limit."""
        stack = [self._validate_node(unique_id, visiting)]
        result: Any = None
        error: BaseException | None = None
        while stack:
            try:
                if error is not None:
                    thrown, error = error, None
                    needed = stack[-1].throw(thrown)
                else:
                    needed = stack[-1].send(result)
            except StopIteration as done:
                stack.pop()
                result = done.value
                continue
            except Exception as exc:
                stack.pop()
                if not stack:
                    raise
                error = exc  # into the node that linked to this one, as the recursion raised it
                continue
            result = None
            stack.append(self._validate_node(needed, visiting))
        return result

    def _validate_node(
        self, unique_id: str, visiting: list[str]
    ) -> Generator[str, Any, tuple[bool, list[dict[str, Any]], str]]:
        prompt, validated = self.prompt, self.validated
        if unique_id in validated:
            return validated[unique_id]
        if unique_id in self.visiting_set:  # the list's own `in` is linear: a long chain went quadratic
            path_nodes = visiting[visiting.index(unique_id) :] + [unique_id]
            cycle_nodes = list(dict.fromkeys(path_nodes))
            cycle_path = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in path_nodes)
            for n in cycle_nodes:
                validated[n] = (
                    False,
                    [
                        {
                            "type": "dependency_cycle",
                            "message": "Dependency cycle detected",
                            "details": cycle_path,
                            "extra_info": {"node_id": n, "cycle_nodes": cycle_nodes},
                        }
                    ],
                    n,
                )
            return validated[unique_id]

        inputs = prompt[unique_id]["inputs"]
        obj_class = self.registry[prompt[unique_id]["class_type"]]
        class_inputs = obj_class.INPUT_TYPES()
        errors: list[dict[str, Any]] = []
        valid = True

        validate_function = getattr(obj_class, "VALIDATE_INPUTS", None)
        validate_function_inputs: list[str] = []
        validate_has_kwargs = False
        if validate_function is not None:
            argspec = inspect.getfullargspec(validate_function)
            validate_function_inputs = argspec.args
            validate_has_kwargs = argspec.varkw is not None
        received_types: dict[str, Any] = {}

        # Declared order (ComfyUI walks a set; the order of its errors is not meaningful).
        valid_inputs = list(
            dict.fromkeys([*class_inputs.get("required", {}), *class_inputs.get("optional", {})])
        )
        for x in valid_inputs:
            input_type, input_category, extra_info = get_input_info(class_inputs, x)
            if x not in inputs:
                if input_category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue

            val = inputs[x]
            info = (input_type, extra_info)
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append(
                        {
                            "type": "bad_linked_input",
                            "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                            "details": f"{x}",
                            "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                        }
                    )
                    continue
                o_id, received_type = _link_source(prompt, self.registry, unique_id, x, val)
                received_types[x] = received_type
                if "input_types" not in validate_function_inputs and not validate_node_input(
                    received_type, input_type
                ):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    visiting.append(unique_id)
                    self.visiting_set.add(unique_id)
                    try:
                        r = yield o_id  # validated by validate_inputs' loop, not by recursion
                    finally:
                        visiting.pop()
                        self.visiting_set.discard(unique_id)
                    if r[0] is False:
                        valid = False  # the linked node's own errors are recorded under its id
                        continue
                except Exception as ex:
                    typ, _, tb = sys.exc_info()
                    valid = False
                    validated[o_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(ex),
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "exception_message": str(ex),
                                    "exception_type": full_type_name(typ),
                                    "traceback": traceback.format_tb(tb),
                                    "linked_node": val,
                                },
                            }
                        ],
                        o_id,
                    )
                    continue
            else:
                try:
                    # A list widget value travels wrapped as {"__value__": [...]}: lists mean links.
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[x] = val
                    if input_type == "INT":
                        val = int(val)
                        inputs[x] = val
                    if input_type == "FLOAT":
                        val = float(val)
                        inputs[x] = val
                    if input_type == "STRING":
                        val = str(val)
                        inputs[x] = val
                    if input_type == "BOOLEAN":
                        val = bool(val)
                        inputs[x] = val
                except Exception as ex:
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {input_type} value",
                            "details": f"{x}, {val}, {ex}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        }
                    )
                    continue

                if x not in validate_function_inputs and not validate_has_kwargs:
                    if "min" in extra_info and val < extra_info["min"]:
                        errors.append(
                            {
                                "type": "value_smaller_than_min",
                                "message": "Value {} smaller than min of {}".format(val, extra_info["min"]),
                                "details": f"{x}",
                                "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                            }
                        )
                        continue
                    if "max" in extra_info and val > extra_info["max"]:
                        errors.append(
                            {
                                "type": "value_bigger_than_max",
                                "message": "Value {} bigger than max of {}".format(val, extra_info["max"]),
                                "details": f"{x}",
                                "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                            }
                        )
                        continue
                    if isinstance(input_type, list) or input_type == COMBO_TYPE:
                        if input_type == COMBO_TYPE:
                            if extra_info.get("remote_combo"):
                                continue  # options live client-side
                            combo_options = extra_info.get("options", [])
                        else:
                            combo_options = input_type
                        if extra_info.get("multiselect", False) and isinstance(val, list):
                            invalid_vals = [v for v in val if v not in combo_options]
                        else:
                            invalid_vals = [val] if val not in combo_options else []
                        if invalid_vals:
                            input_config: Any = info
                            # ComfyUI does not send back huge option lists (model file names).
                            if len(combo_options) > 20:
                                list_info = f"(list of length {len(combo_options)})"
                                input_config = None
                            else:
                                list_info = str(combo_options)
                            errors.append(
                                {
                                    "type": "value_not_in_list",
                                    "message": "Value not in list",
                                    "details": f"{x}: {', '.join(repr(v) for v in invalid_vals)} not in {list_info}",
                                    "extra_info": {
                                        "input_name": x,
                                        "input_config": input_config,
                                        "received_value": val,
                                    },
                                }
                            )
                            continue

        if validate_function_inputs or validate_has_kwargs:
            input_data_all: dict[str, list[Any]] = {}
            for x, v in inputs.items():
                if isinstance(v, list):
                    input_data_all[x] = [None]  # linked: not known before execution
                elif get_input_info(class_inputs, x)[1] is not None:
                    input_data_all[x] = [v]
            input_data_all.update(hidden_values(class_inputs, unique_id, prompt, self.extra_data))
            input_filtered = {
                x: v
                for x, v in input_data_all.items()
                if x in validate_function_inputs or validate_has_kwargs
            }
            if "input_types" in validate_function_inputs:
                input_filtered["input_types"] = [received_types]
            ret = resolve_blocking(map_node_over_list(obj_class, input_filtered, "VALIDATE_INPUTS"))
            for x in input_filtered or (None,):
                for r in ret:
                    if r is not True:
                        details = x if x is not None else ""
                        if r is not False:
                            details = f"{x} - {r}" if x is not None else str(r)
                        errors.append(
                            {
                                "type": "custom_validation_failed",
                                "message": "Custom validation failed for node",
                                "details": details,
                                "extra_info": {"input_name": x} if x is not None else {},
                            }
                        )

        prior = validated.get(unique_id, (True, [], unique_id))
        # A cycle found deeper in the recursion may already have put an error on this node.
        ret = (
            prior[0] and valid is True and not errors,
            prior[1] + [e for e in errors if e not in prior[1]],
            unique_id,
        )
        validated[unique_id] = ret
        return ret


def parse_prompt(prompt: Any) -> dict[str, Any]:
    """One API-format prompt from a dict, a JSON string or `{"prompt": {...}}` (a copy)."""
    prompts = normalize_prompts(prompt)
    if len(prompts) != 1:
        raise PromptFormatError(f"expected one prompt, got a list of {len(prompts)}")
    return prompts[0]


def validate_prompt(
    prompt: Any,
    registry: Mapping[str, type],
    partial_execution_list: list[str] | None = None,
    extra_data: dict[str, Any] | None = None,
) -> ValidationResult:
    """Validate one prompt; never raises on bad input (the result says what is wrong)."""
    # Nodes' VALIDATE_INPUTS may touch tensors: under inference mode, as ComfyUI runs them. While
    # nothing has imported torch no node holds a tensor, and validating imports none (the server
    # and `comfystream validate` never import torch).
    torch = sys.modules.get("torch")
    with torch.inference_mode() if torch is not None else contextlib.nullcontext():
        return _validate_prompt(prompt, registry, partial_execution_list, extra_data)


def _validate_prompt(
    prompt: Any,
    registry: Mapping[str, type],
    partial_execution_list: list[str] | None,
    extra_data: dict[str, Any] | None,
) -> ValidationResult:
    if _is_empty_prompt(prompt):  # ComfyUI finds no output node in it
        return _failed(_prompt_error("prompt_no_outputs", "Prompt has no outputs"), {})
    try:
        prompt = parse_prompt(prompt)
    except PromptFormatError as exc:
        return _failed(_prompt_error("invalid_prompt", "Invalid prompt", str(exc)))
    extra_data = extra_data or {}

    outputs: set[str] = set()
    for x, node in prompt.items():
        inputs = node.setdefault("inputs", {})
        if "class_type" not in node:
            title = (node.get("_meta") or {}).get("title") if isinstance(node.get("_meta"), dict) else None
            return _failed(
                _prompt_error(
                    "missing_node_type",
                    f"Node '{title or f'ID #{x}'}' has no class_type. The workflow may be corrupted or a custom node is missing.",
                    f"Node ID '#{x}'",
                    {"node_id": x, "class_type": None, "node_title": title},
                ),
                prompt,
            )
        class_type = node["class_type"]
        cls = registry.get(class_type) if isinstance(class_type, str) else None
        if cls is None:
            meta = node.get("_meta") if isinstance(node.get("_meta"), dict) else {}
            title = meta.get("title", class_type)
            return _failed(
                _prompt_error(
                    "missing_node_type",
                    f"Node '{title}' not found. The custom node may not be installed.",
                    f"Node ID '#{x}'",
                    {"node_id": x, "class_type": class_type, "node_title": title},
                ),
                prompt,
            )
        if not isinstance(inputs, dict):
            return _failed(
                _prompt_error(
                    "invalid_prompt", "Invalid prompt", f"Node ID '#{x}': inputs must be an object"
                ),
                prompt,
            )
        if is_output_node(cls) and (partial_execution_list is None or x in partial_execution_list):
            outputs.add(x)

    if not outputs:
        return _failed(_prompt_error("prompt_no_outputs", "Prompt has no outputs"), prompt)

    validator = _Validator(prompt, registry, extra_data)
    good_outputs: list[str] = []
    errors: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, dict[str, Any]] = {}
    for o in sorted(outputs, key=_node_order_key):
        try:
            valid, reasons, _ = validator.validate_inputs(o, [])
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {
                        "exception_type": full_type_name(typ),
                        "traceback": traceback.format_tb(tb),
                    },
                }
            ]
            validator.validated[o] = (False, reasons, o)

        if valid is True:
            good_outputs.append(o)
            continue
        # The caller's mistake, answered with these reasons: one line, not an ERROR (ComfyUI's).
        logger.info(
            "prompt output %s failed validation: %s",
            o,
            "; ".join(f"{r['message']}: {r['details']}" for r in reasons),
        )
        errors.append((o, reasons))
        for node_id, (node_valid, node_reasons, _) in validator.validated.items():
            # Downstream nodes of a failing one are invalid but carry no errors of their own.
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)

    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in errors for e in reasons)
        error = _prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return ValidationResult(False, error, [], node_errors, prompt)
    return ValidationResult(True, None, good_outputs, node_errors, prompt)


def _is_empty_prompt(prompt: Any) -> bool:
    """`{}`, as a dict, a JSON string or wrapped as `{"prompt": {}}`."""
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except ValueError:
            return False
    if isinstance(prompt, dict) and set(prompt) == {"prompt"} and isinstance(prompt["prompt"], dict | str):
        return _is_empty_prompt(prompt["prompt"])
    return isinstance(prompt, dict) and not prompt


def _node_order_key(node_id: str) -> tuple[int, int | str]:
    # Numeric ids in numeric order, then the rest: deterministic output order for messages.
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)
