"""Fixtures for the engine tests: a registry of the built-in nodes and a one-call runner."""

from __future__ import annotations

from typing import Any

import pytest

from comfystream.engine import ExecutionContext, compile_prompt
from comfystream.nodes import build_registry


@pytest.fixture(scope="session")
def registry():
    return build_registry()


class Recorder:
    """Collects events in order; checks prompt_id is on every one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, dict(data)))

    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == event_type]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def run_node(registry, class_type: str, inputs: dict[str, Any], frame=None, output: int = 0, **ctx_kwargs):
    """Run one node (its tensor inputs come in through LoadTensor-free constant nodes) and return its outputs.

    Tensor inputs are fed by a tiny `_Const` node registered on a copy of the registry, so the
    node runs through the engine exactly as in a prompt.
    """
    from comfystream.engine import NodeRegistry

    reg = NodeRegistry()
    for name in registry:
        reg.register(name, registry[name], source=registry.sources[name])
    consts: dict[str, Any] = {}
    prompt: dict[str, Any] = {}
    node_inputs: dict[str, Any] = {}
    for i, (name, value) in enumerate(inputs.items()):
        if _is_tensor(value):
            consts[f"c{i}"] = value
            prompt[f"c{i}"] = {"class_type": f"_Const_c{i}", "inputs": {}}
            node_inputs[name] = [f"c{i}", 0]
        else:
            node_inputs[name] = value
    input_types = registry[class_type].INPUT_TYPES()
    for cid, value in consts.items():
        name = next(n for n, v in node_inputs.items() if v == [cid, 0])
        spec = {**input_types.get("required", {}), **input_types.get("optional", {})}[name]
        reg.register(f"_Const_{cid}", _const_class(value, spec[0]), source="test")
    prompt["node"] = {"class_type": class_type, "inputs": node_inputs}
    captured: dict[str, Any] = {}
    reg.register("_Capture", _capture_class(captured, len(registry[class_type].RETURN_TYPES)), source="test")
    capture_inputs = {f"v{i}": ["node", i] for i in range(len(registry[class_type].RETURN_TYPES))}
    prompt["capture"] = {"class_type": "_Capture", "inputs": capture_inputs}
    plan = compile_prompt(prompt, reg)
    result = plan.execute_sync(ExecutionContext(frame=frame, **ctx_kwargs))
    return [captured.get(f"v{i}") for i in range(len(registry[class_type].RETURN_TYPES))], result


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _const_class(value, type_name):
    class Const:
        RETURN_TYPES = (type_name,)
        FUNCTION = "get"
        CATEGORY = "test"

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {}}

        def get(self):
            return (value,)

    return Const


def _capture_class(captured: dict, n: int):
    class Capture:
        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True
        CATEGORY = "test"

        @classmethod
        def INPUT_TYPES(cls):  # noqa: N802
            return {"required": {f"v{i}": ("*",) for i in range(n)}}

        def capture(self, **kwargs):
            captured.update(kwargs)
            return ()

    return Capture
