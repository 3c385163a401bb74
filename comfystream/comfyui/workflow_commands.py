"""`comfystream validate` and `comfystream execute`: run the engine on a workflow file, in this
process, with comfystream's nodes, custom node folders, or a ComfyUI workspace's nodes (`--workspace`).

They live with the ComfyUI adapter because `--workspace` needs it: the engine below knows nothing
of ComfyUI workspaces."""

from __future__ import annotations

import argparse
import base64
import functools
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from comfystream.comfyui.commands import add_workspace_argument, registry_with_workspace

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate",
        help="validate an API-format workflow the way ComfyUI does",
        description='Prints {"ok": true} (with ComfyUI\'s "node_errors" of any invalid branch beside a valid output) and exits 0, or prints ComfyUI\'s {"error", "node_errors"} and exits 1.',
    )
    p.add_argument("workflow", help="API-format workflow JSON file")
    p.add_argument(
        "--custom-nodes", action="append", default=[], metavar="DIR", help="custom node folder (repeatable)"
    )
    add_workspace_argument(p)
    p.set_defaults(func=_local(cmd_validate))

    p = subparsers.add_parser(
        "execute",
        help="run an API-format workflow once",
        description="Runs the workflow once and writes every image of every output node to DIR/{node_id}_{index:03d}.png.",
    )
    p.add_argument("workflow", help="API-format workflow JSON file")
    p.add_argument("--input", metavar="IMAGE", help="image fed to LoadTensor")
    p.add_argument(
        "--output-dir", default="output", metavar="DIR", help="where the images go (default: ./output)"
    )
    p.add_argument("--events", action="store_true", help="print each event as one JSON line on stdout")
    p.add_argument(
        "--custom-nodes", action="append", default=[], metavar="DIR", help="custom node folder (repeatable)"
    )
    add_workspace_argument(p)
    p.set_defaults(func=_local(cmd_execute))


def _read_workflow(path: str) -> Any:
    """The file's text (parsed by the engine, so that bad JSON gets ComfyUI's invalid_prompt shape)."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def _registry(args: argparse.Namespace):
    from comfystream.nodes import build_registry

    custom_nodes = args.custom_nodes
    if args.workspace:  # ComfyUI's loader takes the custom nodes too: they may import ComfyUI's modules
        return registry_with_workspace(args.workspace, custom_nodes, args.extra_model_paths)
    registry = build_registry(custom_node_dirs=custom_nodes)
    for source, error in registry.load_errors.items():
        last = error.strip().splitlines()[-1] if error.strip() else ""
        print(f"custom nodes: could not load {source}: {last}", file=sys.stderr)
    return registry


def _local(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command run by the machine's own user: its workflow may name files anywhere (a prompt that
    comes over HTTP is confined to the input, output and temp folders)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from comfystream.nodes.folders import outside_paths_allowed

        with outside_paths_allowed():
            return command(args)

    return run


def cmd_validate(args: argparse.Namespace) -> int:
    from comfystream.engine import validate_prompt

    try:
        text = _read_workflow(args.workflow)
    except OSError as exc:
        print(f"cannot read {args.workflow}: {exc.strerror}", file=sys.stderr)
        return 2
    result = validate_prompt(text, _registry(args))
    if result.ok:
        # As POST /prompt: the valid outputs run; an invalid branch's errors are reported beside them.
        answer: dict[str, Any] = {"ok": True}
        if result.node_errors:
            answer["node_errors"] = result.node_errors
            print(
                f"{len(result.node_errors)} node(s) failed validation; their outputs will not run",
                file=sys.stderr,
            )
        print(json.dumps(answer, default=str))
        return 0
    print(json.dumps(result.to_comfy(), default=str))
    return 1


def _json_event(event_type: str, data: dict[str, Any]) -> str:
    payload = dict(data)
    if isinstance(payload.get("image"), bytes | bytearray):
        payload["image"] = base64.b64encode(payload["image"]).decode("ascii")
    return json.dumps({"type": event_type, "data": payload}, default=str)


def load_image_tensor(path: str):
    """An image file as IMAGE `[1,H,W,3]` float32 0..1 (LoadImage's conversion)."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
        return torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,]


def write_output_images(output_images: dict[str, list[Any]], output_dir: str) -> list[str]:
    """Each image to `{node_id}_{index:03d}.png`, 8-bit as ComfyUI's SaveImage converts."""
    from PIL import Image

    from comfystream.nodes.tensor_utils import to_uint8_image

    os.makedirs(output_dir, exist_ok=True)
    written = []
    for node_id, tensors in output_images.items():
        index = 0
        for tensor in tensors:
            batch = tensor if tensor.ndim == 4 else tensor[None]
            for image in batch:
                path = os.path.join(output_dir, f"{node_id}_{index:03d}.png")
                Image.fromarray(to_uint8_image(image)).save(path)
                written.append(path)
                index += 1
    return written


def cmd_execute(args: argparse.Namespace) -> int:
    from comfystream.engine import (
        ExecutionContext,
        ExecutionError,
        InterruptProcessingException,
        PromptValidationError,
        compile_prompt,
    )

    try:
        text = _read_workflow(args.workflow)
        frame = load_image_tensor(args.input) if args.input else None
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    except Exception as exc:  # PIL raises several types for a file that is not an image
        print(f"cannot read the input image {args.input}: {exc}", file=sys.stderr)
        return 2

    registry = _registry(args)
    try:
        plan = compile_prompt(text, registry)
    except PromptValidationError as exc:
        print(json.dumps(exc.result.to_comfy(), default=str))
        return 1

    def on_event(event_type: str, data: dict[str, Any]) -> None:
        print(_json_event(event_type, data), flush=True)

    # SaveImage / PreviewImage keep their own files in a scratch folder: the CLI's outputs are
    # the {node_id}_{index}.png files.
    with tempfile.TemporaryDirectory(prefix="comfystream-execute-") as scratch:
        ctx = ExecutionContext(
            prompt_id=str(uuid.uuid4()),
            frame=frame,
            on_event=on_event if args.events else None,
            output_dir=scratch,
            capture_outputs=True,
        )
        try:
            result = plan.execute_sync(ctx)
        except ExecutionError as exc:
            if not args.events:
                print(f"execution failed: {exc}", file=sys.stderr)
            return 3
        except InterruptProcessingException:
            print("execution interrupted", file=sys.stderr)
            return 3
    written = write_output_images(result.output_images, args.output_dir)
    for path in written:
        logger.info("wrote %s", path)
    if not args.events:
        print(json.dumps({"ok": True, "prompt_id": ctx.prompt_id, "files": written}))
    return 0
