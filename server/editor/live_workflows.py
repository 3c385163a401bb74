"""Workflows the editor offers for this server's built-in engine: the one a first visit opens (an
image through a visible effect, which Run turns into a picture), and live-video templates for its
template browser. Built here in the editor's own format (LiteGraph's: nodes, links, widget values),
each a chain of nodes, so that they follow the nodes' real inputs and never go stale as files would.
Thumbnails are the sample image through the same effect."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image, ImageFilter, ImageOps

from comfystream.nodes.folders import list_input_images
from server.http.keys import CONFIG_KEY
from server.http.routes import Route
from server.jobs import SAMPLE_IMAGE
from server.jobs.settings import JOB_SETTINGS_KEY
from server.jobs.submit import job_folders

CATEGORY_TITLE = "Live video (comfystream)"


@dataclass(frozen=True)
class Step:
    """One node of a chain: IMAGE in (input `takes`, none for a source), IMAGE out unless a sink."""

    type: str
    widgets: list[Any] = field(default_factory=list)
    takes: str | None = "image"  # the IMAGE input the previous node feeds
    gives: tuple[str, ...] = ("IMAGE",)  # its outputs; the first feeds the next node
    size: tuple[int, int] = (270, 82)


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    description: str
    steps: tuple[Step, ...]
    effect: Any  # PIL image -> PIL image: the thumbnail


SOURCE = Step("LoadTensor", [1.0], takes=None, size=(270, 60))
SINK = Step("SaveTensor", takes="images", gives=(), size=(270, 60))
INVERT = Step("ImageInvert", size=(220, 30))

TEMPLATES: tuple[Template, ...] = (
    Template(
        "comfystream_live_invert",
        "Live: invert",
        "A stream's frames inverted (the default prompt): LoadTensor -> ImageInvert -> SaveTensor",
        (SOURCE, INVERT, SINK),
        ImageOps.invert,
    ),
    Template(
        "comfystream_live_blur",
        "Live: soft focus",
        "A stream's frames blurred: LoadTensor -> ImageBlur -> SaveTensor",
        (SOURCE, Step("ImageBlur", [7, 3.0], size=(270, 82)), SINK),
        lambda im: im.filter(ImageFilter.GaussianBlur(5)),
    ),
    Template(
        "comfystream_live_posterize",
        "Live: posterize",
        "A stream's frames in 6 colours: LoadTensor -> ImageQuantize -> SaveTensor",
        (SOURCE, Step("ImageQuantize", [6, "none"], size=(270, 82)), SINK),
        lambda im: im.quantize(6).convert("RGB"),
    ),
    Template(
        "comfystream_live_mirror",
        "Live: mirror",
        "A stream's frames flipped left to right, then sharpened: LoadTensor -> ImageFlip -> "
        "ImageSharpen -> SaveTensor",
        (
            SOURCE,
            Step("ImageFlip", ["y-axis: horizontally"], size=(270, 58)),
            Step("ImageSharpen", [1, 1.0, 0.5], size=(270, 106)),
            SINK,
        ),
        lambda im: ImageOps.mirror(im).filter(ImageFilter.SHARPEN),
    ),
    Template(
        "comfystream_image_invert",
        "Image: invert (Run gives a picture)",
        "The sample image inverted and previewed: LoadImage -> ImageInvert -> PreviewImage. "
        "'Run this workflow on it' (Streams tab) runs it on a stream, its image as the frames",
        (
            Step("LoadImage", ["example.png", "image"], takes=None, gives=("IMAGE", "MASK"), size=(300, 330)),
            INVERT,
            Step("PreviewImage", takes="images", gives=(), size=(300, 300)),
        ),
        ImageOps.invert,
    ),
)
BY_NAME = {t.name: t for t in TEMPLATES}
# What a first visit opens with the built-in engine: Run gives an image at once.
DEFAULT_TEMPLATE = "comfystream_image_invert"


def ui_workflow(steps: tuple[Step, ...] | list[Step]) -> dict[str, Any]:
    """The chain as the editor saves a workflow (version 0.4), laid out left to right."""
    nodes: list[dict[str, Any]] = []
    links: list[list[Any]] = []
    x = 40
    for index, step in enumerate(steps):
        node_id = index + 1
        node: dict[str, Any] = {
            "id": node_id,
            "type": step.type,
            "pos": [x, 120],
            "size": list(step.size),
            "flags": {},
            "order": index,
            "mode": 0,
            "inputs": [],
            "outputs": [
                {"name": kind, "type": kind, "links": [], "slot_index": slot}
                for slot, kind in enumerate(step.gives)
            ],
            "properties": {"Node name for S&R": step.type},
            "widgets_values": list(step.widgets),
        }
        if step.takes is not None and nodes:
            link_id = len(links) + 1
            node["inputs"].append({"name": step.takes, "type": "IMAGE", "link": link_id})
            nodes[-1]["outputs"][0]["links"].append(link_id)
            links.append([link_id, node_id - 1, 0, node_id, 0, "IMAGE"])
        nodes.append(node)
        x += step.size[0] + 60
    return {
        "last_node_id": len(nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [90, 60]}},
        "version": 0.4,
    }


def template_index() -> list[dict[str, Any]]:
    """The template browser's index (the shape of comfyui-workflow-templates' index.json)."""
    return [
        {
            "moduleName": "default",
            "category": "comfystream",
            "title": CATEGORY_TITLE,
            "type": "image",
            "isEssential": True,
            "templates": [
                {
                    "name": t.name,
                    "title": t.title,
                    "description": t.description,
                    "mediaType": "image",
                    "mediaSubtype": "png",
                    "tags": ["Live video"] if t.steps[0].type == "LoadTensor" else ["Image"],
                    "openSource": True,
                }
                for t in TEMPLATES
            ],
        }
    ]


@functools.lru_cache(maxsize=len(TEMPLATES))
def thumbnail_png(name: str) -> bytes:
    """The sample image through the template's effect, 256 px, as PNG."""
    with Image.open(SAMPLE_IMAGE) as image:
        small = image.convert("RGB").resize((256, 256))
    out = io.BytesIO()
    BY_NAME[name].effect(small).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _with_image(steps: tuple[Step, ...], request: web.Request) -> tuple[Step, ...]:
    """The chain's LoadImage on an image the input folder has: the sample when it is there (the
    server puts it into an empty folder), else the first image (a folder of the user's own)."""
    with job_folders(request.app[JOB_SETTINGS_KEY]):
        names = list_input_images()
    if not names or SAMPLE_IMAGE.name in names:
        return steps
    return tuple(
        Step(s.type, [names[0], *s.widgets[1:]], s.takes, s.gives, s.size) if s.type == "LoadImage" else s
        for s in steps
    )


async def editor_defaults(request: web.Request) -> web.Response:
    """What comfystream's editor extension opens a first visit with: with the built-in engine, a
    workflow it can run (ComfyUI's default needs checkpoint and sampler nodes it does not have);
    with a `--workspace`, ComfyUI's own default (`default_workflow` null)."""
    workspace = request.app[CONFIG_KEY].workspace is not None
    default = None if workspace else ui_workflow(_with_image(BY_NAME[DEFAULT_TEMPLATE].steps, request))
    return web.json_response(
        {"engine": "workspace" if workspace else "built-in", "default_workflow": default},
        headers={"Cache-Control": "no-store"},
    )


ROUTES: tuple[Route, ...] = (
    Route(
        "GET", "/comfystream/editor", editor_defaults, "The editor's first workflow for this server's engine"
    ),
)
