"""Long graphs: validation, planning and execution walk them without recursion (a 1,000-node chain
failed validation with RecursionError before), and a long loop is still reported as a cycle."""

from __future__ import annotations

import torch

from comfystream.engine import ExecutionContext, PromptValidationError, compile_prompt, validate_prompt

CHAIN = 10_000  # the figure; the error cases use SHORT (the same code path, less CI time)
SHORT = 1_500


def chain_prompt(length: int) -> dict:
    """LoadTensor -> ImageInvert x length -> SaveTensor, ids in data-flow order."""
    prompt = {"0": {"class_type": "LoadTensor", "inputs": {}}}
    for i in range(1, length + 1):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt[str(length + 1)] = {"class_type": "SaveTensor", "inputs": {"images": [str(length), 0]}}
    return prompt


def test_ten_thousand_node_chain_validates_plans_and_runs(registry) -> None:
    result = validate_prompt(chain_prompt(CHAIN), registry)
    assert result.ok, result.error
    compiled = compile_prompt(chain_prompt(CHAIN), registry)
    assert len(compiled.plan.order) == CHAIN + 2
    frame = torch.rand(1, 4, 4, 3)
    out = compiled.execute_sync(ExecutionContext(frame=frame))
    # An even number of inverts gives the frame back.
    assert len(out.frames) == 1 and torch.allclose(out.frames[0], frame, atol=1e-5)


def test_a_bad_node_deep_in_a_long_chain_is_named(registry) -> None:
    prompt = chain_prompt(SHORT)
    prompt["1"]["inputs"]["image"] = ["0", 5]  # LoadTensor has one output
    result = validate_prompt(prompt, registry)
    assert not result.ok
    errors = result.node_errors["1"]["errors"]
    assert errors[0]["type"] == "exception_during_inner_validation", errors
    assert "output 5" in errors[0]["details"]


def test_a_long_cycle_is_a_cycle(registry) -> None:
    prompt = chain_prompt(SHORT)
    prompt["1"]["inputs"]["image"] = [str(SHORT), 0]  # 1 -> ... -> SHORT -> 1
    result = validate_prompt(prompt, registry)
    assert not result.ok
    cycle_errors = [
        e for n in result.node_errors.values() for e in n["errors"] if e["type"] == "dependency_cycle"
    ]
    assert cycle_errors and len(cycle_errors[0]["extra_info"]["cycle_nodes"]) == SHORT
    try:
        compile_prompt(prompt, registry)
    except PromptValidationError:
        pass
    else:
        raise AssertionError("a cycle compiled")
