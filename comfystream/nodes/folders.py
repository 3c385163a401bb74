"""Where LoadImage reads and SaveImage / PreviewImage write (ComfyUI's input, output and temp folders).

The running execution's context decides (`ctx.input_dir`, `ctx.output_dir`); otherwise the
environment (COMFYSTREAM_INPUT_DIR / _OUTPUT_DIR / _TEMP_DIR); otherwise `input/`, `output/`,
`temp/` under the working directory.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import tempfile
import time
from collections.abc import Iterator

from comfystream.engine.context import current_context

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def get_input_directory() -> str:
    ctx = current_context()
    if ctx is not None and ctx.input_dir:
        return os.path.abspath(ctx.input_dir)
    return os.path.abspath(os.environ.get("COMFYSTREAM_INPUT_DIR") or os.path.join(os.getcwd(), "input"))


def get_output_directory() -> str:
    ctx = current_context()
    if ctx is not None and ctx.output_dir:
        return os.path.abspath(ctx.output_dir)
    return os.path.abspath(os.environ.get("COMFYSTREAM_OUTPUT_DIR") or os.path.join(os.getcwd(), "output"))


def get_temp_directory() -> str:
    ctx = current_context()
    if ctx is not None and ctx.output_dir:
        return os.path.join(os.path.abspath(ctx.output_dir), "temp")
    default = os.path.join(tempfile.gettempdir(), "comfystream-temp")
    return os.path.abspath(os.environ.get("COMFYSTREAM_TEMP_DIR") or default)


def list_input_images() -> list[str]:
    directory = get_input_directory()
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(
        n
        for n in names
        if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(directory, n))
    )


_ANNOTATIONS = {
    "[input]": get_input_directory,
    "[output]": get_output_directory,
    "[temp]": get_temp_directory,
}


class PathOutsideFolders(ValueError):
    """A file name that leads out of the input, output and temp folders."""


# Off by default: a prompt names files inside the folders. The local CLI (`comfystream execute`)
# turns it on so that a workflow on the command line may name any file its user can read.
_outside_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "comfystream_outside_paths_allowed", default=False
)


@contextlib.contextmanager
def outside_paths_allowed() -> Iterator[None]:
    """Within this block, prompts may name files anywhere (absolute paths, `..`)."""
    token = _outside_allowed.set(True)
    try:
        yield
    finally:
        _outside_allowed.reset(token)


def inside(folder: str, name: str) -> str:
    """`folder/name`, or PathOutsideFolders when it leads out of `folder` (`..`, an absolute name, a
    symlink). Decided without asking whether the file exists, so the answer never tells."""
    base = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(base, name.replace("\0", "")))
    if "\0" in name or os.path.commonpath((base, path)) != base:
        raise PathOutsideFolders(f"{name!r} is outside the {os.path.basename(base) or base} folder")
    return path


def annotated_filepath(name: str) -> str:
    """`name` or `name [output]` (ComfyUI's annotations) resolved inside its folder; anything that
    leads out of the folders is PathOutsideFolders. With `outside_paths_allowed()`, also a path."""
    for suffix, folder in _ANNOTATIONS.items():
        if name.endswith(" " + suffix):
            stem = name[: -len(suffix) - 1]
            if _outside_allowed.get():
                return os.path.join(folder(), stem)
            return inside(folder(), stem)
    in_input = os.path.join(get_input_directory(), name)
    if _outside_allowed.get():
        if os.path.isabs(name) or (not os.path.exists(in_input) and os.path.exists(name)):
            return os.path.abspath(name)
        return in_input
    return inside(get_input_directory(), name)


def _expand_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "width": str(width),
        "height": str(height),
        "year": str(now.tm_year),
        "month": f"{now.tm_mon:02}",
        "day": f"{now.tm_mday:02}",
        "hour": f"{now.tm_hour:02}",
        "minute": f"{now.tm_min:02}",
        "second": f"{now.tm_sec:02}",
    }
    return re.sub(r"%(\w+)%", lambda m: values.get(m.group(1).lower(), m.group(0)), prefix)


def save_image_path(
    filename_prefix: str, output_dir: str, width: int = 0, height: int = 0
) -> tuple[str, str, int, str]:
    """(folder, file stem, next counter, subfolder) as ComfyUI's `get_save_image_path`."""
    filename_prefix = _expand_vars(filename_prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    output_dir = os.path.abspath(output_dir)
    folder = os.path.abspath(os.path.join(output_dir, subfolder))
    if os.path.commonpath((output_dir, folder)) != output_dir:
        raise ValueError("Saving image outside the output folder is not allowed.")
    os.makedirs(folder, exist_ok=True)
    pattern = re.compile(re.escape(filename) + r"_(\d+)_", re.IGNORECASE)
    counters = [int(m.group(1)) for n in os.listdir(folder) if (m := pattern.match(n))]
    return folder, filename, (max(counters) + 1 if counters else 1), subfolder
