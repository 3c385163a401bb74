"""Runs the engine-level checks against a real ComfyUI in a fresh process and prints JSON.

ComfyUI's modules are process-global (`nodes`, `comfy`, `folder_paths`, a `server` module), so
the tests load it here, in a child process, rather than in pytest's own. Usage:
`python comfyui_probe.py WORKSPACE CUSTOM_NODES_DIR FRAMES.npy REFERENCE_OUT.npy`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import torch

from comfystream.comfyui import load_workspace
from comfystream.engine import (
    ExecutionContext,
    ExecutionError,
    InterruptProcessingException,
    PromptValidationError,
    compile_prompt,
)
from comfystream.nodes import build_registry


def blur_sharpen_prompt() -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.5}},
        "3": {
            "class_type": "ImageSharpen",
            "inputs": {"image": ["2", 0], "sharpen_radius": 2, "sigma": 1.0, "alpha": 0.5},
        },
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }


def single_node_prompt(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": class_type, "inputs": {"image": ["1", 0], **inputs}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """As the worker converts a frame (workers/tensors.py)."""
    from workers.tensors import rgb_to_image

    return rgb_to_image(torch, rgb)


def comfyui_reference(frame: torch.Tensor) -> torch.Tensor:
    """ComfyUI's own node classes, called directly, on the same input."""
    from comfy_extras.nodes_post_processing import Blur, Sharpen

    blurred = Blur.execute(frame, blur_radius=3, sigma=1.5)[0]
    return Sharpen.execute(blurred, sharpen_radius=2, sigma=1.0, alpha=0.5)[0]


def run(plan: Any, frame: torch.Tensor, on_event: Any = None, ctx_hook: Any = None) -> dict[str, Any]:
    """One execution; records events, how it ended, and how far the node at "2" got."""
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = ExecutionContext(prompt_id=str(uuid.uuid4()), frame=frame)

    def record(event_type: str, data: dict[str, Any]) -> None:
        events.append((event_type, data))
        if on_event is not None:
            on_event(ctx, event_type, data)

    ctx.on_event = record
    if ctx_hook is not None:
        ctx_hook(ctx)
    start = time.monotonic()
    try:
        result = plan.execute_sync(ctx)
        outcome = "completed"
        frames = len(result.frames)
    except InterruptProcessingException:
        outcome, frames = "interrupted", 0
    except ExecutionError as exc:
        outcome, frames = f"error: {exc}", 0
    progress = [d for t, d in events if t == "progress" and d.get("node") == "2"]
    previews = [d for t, d in events if t == "preview"]
    return {
        "prompt_id": ctx.prompt_id,
        "outcome": outcome,
        "frames": frames,
        "elapsed_s": time.monotonic() - start,
        "event_types": [t for t, _ in events],
        "last_progress": max((d["value"] for d in progress), default=0),
        "progress_max": max((d["max"] for d in progress), default=0),
        "event_prompt_ids": sorted({d.get("prompt_id") for _, d in events}),
        "previews": [
            {
                "prompt_id": d["prompt_id"],
                "node": d["node"],
                "image_type": d["image_type"],
                "jpeg": bytes(d["image"][:2]) == b"\xff\xd8",
                "size": _image_size(d["image"]),
            }
            for d in previews
        ],
        "progress_text": [d for t, d in events if t == "progress_text"],
    }


def _image_size(data: bytes) -> list[int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return list(img.size)


def cancel_at(value: float, how: str) -> Any:
    def on_event(ctx: ExecutionContext, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "progress" and data.get("node") == "2" and data["value"] >= value:
            if how == "token":
                ctx.cancel.cancel("test")
            else:
                import comfy.model_management

                comfy.model_management.interrupt_current_processing(True)

    return on_event


def main() -> None:
    workspace, custom_nodes, frames_path, reference_path = sys.argv[1:5]
    registry = build_registry()
    # latent2rgb: sampler previews on (ComfyUI's default is none), applied before ComfyUI is imported.
    settings = {"extra_custom_node_dirs": [custom_nodes], "preview_method": "latent2rgb"}
    info = load_workspace(workspace, settings, registry)
    out: dict[str, Any] = {
        "info": {
            "comfyui_version": info.comfyui_version,
            "nodes_loaded": info.nodes_loaded,
            "comfyui_nodes": info.comfyui_nodes,
            "load_errors": info.load_errors,
            "clashes": [vars(c) for c in info.clashes],
            "custom_node_packages": {
                p.name: {"loaded": p.loaded, "nodes": p.nodes, "skipped": p.skipped}
                for p in info.custom_node_packages
            },
            "sources": {
                name: registry.sources.get(name) for name in ("LoadTensor", "ImageBlur", "CSTestChannelSwap")
            },
        }
    }

    # Blur + sharpen on every frame of the stream: the engine vs ComfyUI's classes called directly.
    frames = np.load(frames_path)
    plan = compile_prompt(blur_sharpen_prompt(), registry)
    references, equal = [], []
    for rgb in frames:
        frame = to_tensor(rgb)
        result = plan.execute_sync(ExecutionContext(frame=frame))
        reference = comfyui_reference(frame)
        references.append(reference[0].numpy())
        equal.append(bool(torch.equal(result.frames[0], reference)))
    np.save(reference_path, np.stack(references))
    out["pixels_equal"] = equal

    frame = to_tensor(frames[0])
    swap = compile_prompt(single_node_prompt("CSTestChannelSwap"), registry)
    swapped = swap.execute_sync(ExecutionContext(frame=frame)).frames[0]
    out["channel_swap_equal"] = bool(torch.equal(swapped, frame.flip(-1)))

    v3 = compile_prompt(single_node_prompt("CSTestV3Gain", gain=0.5), registry)
    v3_result = v3.execute_sync(ExecutionContext(frame=frame))
    out["v3"] = {
        "equal": bool(torch.equal(v3_result.frames[0], (frame * 0.5).clamp(0.0, 1.0))),
        "ui": v3_result.outputs.get("2"),
    }
    try:
        compile_prompt(single_node_prompt("CSTestV3Gain", gain=0.0), registry)
        out["v3"]["validation"] = None
    except PromptValidationError as exc:
        out["v3"]["validation"] = exc.result.to_comfy()["node_errors"]

    slow = {"steps": 400, "step_seconds": 0.01}
    out["interrupt_token"] = run(
        compile_prompt(single_node_prompt("CSTestSlowProgress", **slow), registry),
        frame,
        cancel_at(3, "token"),
    )
    out["interrupt_comfy"] = run(
        compile_prompt(single_node_prompt("CSTestSlowProgress", **slow), registry),
        frame,
        cancel_at(3, "comfy"),
    )
    # ComfyUI's own flag is reset by the interrupt it caused: the next execution runs to the end.
    out["after_comfy_interrupt"] = run(
        compile_prompt(single_node_prompt("CSTestSlowProgress", steps=5, step_seconds=0.0), registry), frame
    )
    out["interrupt_poll"] = run(
        compile_prompt(single_node_prompt("CSTestPollInterrupt", seconds=20.0), registry),
        frame,
        ctx_hook=lambda ctx: threading.Timer(0.3, ctx.cancel.cancel).start(),
    )

    # Two executions at once: cancelling one leaves the other running to the end.
    results: dict[str, Any] = {}

    def worker(name: str, hook: Any) -> None:
        plan = compile_prompt(single_node_prompt("CSTestSlowProgress", steps=60, step_seconds=0.01), registry)
        results[name] = run(plan, frame, hook)

    threads = [
        threading.Thread(target=worker, args=("cancelled", cancel_at(3, "token"))),
        threading.Thread(target=worker, args=("other", None)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["concurrent"] = results

    size_prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    out["image_size"] = run(compile_prompt(size_prompt, registry), frame)
    out["sampler_preview"] = run(
        compile_prompt(single_node_prompt("CSTestSamplerPreview", steps=3), registry), frame
    )
    out["ui_package"] = ui_package(custom_nodes, reference_path)
    out["child_server_module"] = child_server_module()
    print(json.dumps(out))


def _report_server_module(queue: Any) -> None:
    import server

    queue.put(getattr(server, "__file__", None))


def child_server_module() -> str | None:
    """Which `server` a process spawned from this one imports (the server spawns its workers so)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_report_server_module, args=(queue,))
    child.start()
    try:
        return queue.get(timeout=120)
    finally:
        child.join(30)


def ui_package(custom_nodes: str, scratch: str) -> dict[str, Any]:
    """comfystream's node package as ComfyUI's own server loads and runs it (no comfystream execution)."""
    import os

    import folder_paths
    import nodes

    from comfystream.comfyui.node_loading import run_coroutine

    temp = os.path.join(os.path.dirname(scratch), "comfyui-temp")
    folder_paths.set_temp_directory(temp)
    loaded = run_coroutine(nodes.load_custom_node(os.path.join(custom_nodes, "comfystream_nodes")))
    load_tensor = nodes.NODE_CLASS_MAPPINGS["LoadTensor"]
    save_tensor = nodes.NODE_CLASS_MAPPINGS["SaveTensor"]
    (placeholder,) = getattr(load_tensor(), load_tensor.FUNCTION)()
    ui = getattr(save_tensor(), save_tensor.FUNCTION)(placeholder)
    images = ui["ui"]["images"]
    return {
        "loaded": loaded,
        "module": load_tensor.__module__,
        "placeholder_shape": list(placeholder.shape),
        "placeholder_range": [float(placeholder.min()), float(placeholder.max())],
        "preview_type": images[0]["type"],
        "preview_file": os.path.isfile(os.path.join(temp, images[0]["subfolder"], images[0]["filename"])),
    }


if __name__ == "__main__":
    main()
