"""Turning a prompt built in ComfyUI's UI into a streaming prompt (as comfystream does).

Its input image node (`PrimaryInputLoadImage`, or the single `LoadImage`) becomes `LoadTensor`;
its `PreviewImage` / `SaveImage` output becomes `SaveTensor` on the same images.
"""

from __future__ import annotations

import copy
from typing import Any

INPUT_TYPES = ("LoadImage", "LoadTensor", "LoadAudioTensor")
OUTPUT_TYPES = ("PreviewImage", "SaveImage", "SaveTensor", "SaveAudioTensor")


class PromptConversionError(ValueError):
    """The prompt cannot be turned into a streaming one (no input / output, or too many)."""


def convert_prompt(prompt: dict[str, Any]) -> dict[str, Any]:
    """A copy of `prompt` with its image input and output replaced by LoadTensor / SaveTensor."""
    prompt = copy.deepcopy(prompt)
    primary = [k for k, n in prompt.items() if n.get("class_type") == "PrimaryInputLoadImage"]
    inputs = [k for k, n in prompt.items() if n.get("class_type") in INPUT_TYPES]
    outputs = [k for k, n in prompt.items() if n.get("class_type") in OUTPUT_TYPES]
    if len(primary) > 1:
        raise PromptConversionError(f"too many primary inputs in prompt: nodes {', '.join(primary)}")
    if not primary and len(inputs) > 1:
        raise PromptConversionError(
            f"too many inputs in prompt: nodes {', '.join(inputs)} (mark the stream input with PrimaryInputLoadImage)"
        )
    if len(outputs) > 1:
        raise PromptConversionError(f"too many outputs in prompt: nodes {', '.join(outputs)}")
    if not primary and not inputs:
        raise PromptConversionError(
            "missing input: the prompt needs a LoadImage, PrimaryInputLoadImage or LoadTensor"
        )
    if not outputs:
        raise PromptConversionError(
            "missing output: the prompt needs a PreviewImage, SaveImage or SaveTensor"
        )

    for key in primary:
        prompt[key] = {"class_type": "LoadTensor", "inputs": {}}
    if not primary:
        for key in inputs:
            if prompt[key]["class_type"] == "LoadImage":
                prompt[key] = {"class_type": "LoadTensor", "inputs": {}}
    for key in outputs:
        node = prompt[key]
        if node["class_type"] in ("PreviewImage", "SaveImage"):
            images = node.get("inputs", {}).get("images")
            if images is None:
                raise PromptConversionError(f"output node {key} ({node['class_type']}) has no images input")
            prompt[key] = {"class_type": "SaveTensor", "inputs": {"images": images}}
    return prompt
