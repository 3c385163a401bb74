"""The input, output and temp folders as ComfyUI's `/view` and `/upload/image` see them, with no way
out of them: `..` or an absolute name is refused (400), a subfolder outside its folder too (403),
and so is a symlink that leads out."""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from server.jobs.settings import JobSettings

# Served as a download, never rendered: a file in the output folder must not run script in the page.
_UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}
_ANNOTATIONS = {"[input]": "input", "[output]": "output", "[temp]": "temp"}


class PathRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def folder_for(settings: JobSettings, kind: str | None) -> Path | None:
    kind = kind or "input"
    folders = {"input": settings.input_dir, "output": settings.output_dir, "temp": settings.temp_dir}
    return folders.get(kind)


def split_annotation(name: str) -> tuple[str, str | None]:
    """ComfyUI's `name [output]` annotation -> (name, "output")."""
    for suffix, kind in _ANNOTATIONS.items():
        if name.endswith(" " + suffix):
            return name[: -len(suffix) - 1], kind
    return name, None


def _inside(base: Path, path: Path) -> bool:
    base_abs, path_abs = os.path.abspath(base), os.path.abspath(path)
    if os.path.commonpath((base_abs, path_abs)) != base_abs:
        return False
    # The real paths too: a symlink inside the folder must not lead out of it.
    base_real, path_real = os.path.realpath(base), os.path.realpath(path)
    return os.path.commonpath((base_real, path_real)) == base_real


def resolve_view_path(settings: JobSettings, filename: str, kind: str | None, subfolder: str | None) -> Path:
    """The file `/view` serves, or PathRefused (400 bad name, 403 outside the folder)."""
    name, annotated = split_annotation(filename)
    if not name:
        raise PathRefused(400, "no filename")
    if name[0] in "/\\" or ".." in name or os.path.isabs(name) or "\0" in name:
        raise PathRefused(400, "the filename may not be absolute or contain '..'")
    base = folder_for(settings, annotated or kind or "output")
    if base is None:
        raise PathRefused(400, f"unknown type {kind!r}")
    folder = base
    if subfolder:
        if "\0" in subfolder:
            raise PathRefused(400, "bad subfolder")
        folder = base / subfolder
        if not _inside(base, folder):
            raise PathRefused(403, "the subfolder is outside the folder")
    path = folder / os.path.basename(name)
    if not _inside(base, path):
        raise PathRefused(403, "the file is outside the folder")
    return path


def view_response(path: Path, query: Any) -> web.StreamResponse:
    """ComfyUI's /view answer for an existing file: as is, or `preview=webp|jpeg;quality`, or one
    `channel` (rgb, a)."""
    filename = path.name
    disposition = {"Content-Disposition": f'filename="{filename}"'}
    channel = query.get("channel", "rgba")
    if "preview" in query or channel in ("rgb", "a"):
        from PIL import Image

        with Image.open(path) as img:
            if "preview" in query:
                info = query["preview"].split(";")
                fmt = (
                    info[0] if info[0] in ("webp", "jpeg") and "a" not in query.get("channel", "") else "webp"
                )
                quality = int(info[-1]) if info[-1].isdigit() else 90
                out = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
                content_type = f"image/{fmt}"
            elif channel == "rgb":
                out, fmt, quality, content_type = img.convert("RGB"), "png", 90, "image/png"
            else:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
                fmt, quality, content_type = "png", 90, "image/png"
            buf = io.BytesIO()
            out.save(buf, format=fmt, quality=quality)
        return web.Response(body=buf.getvalue(), content_type=content_type, headers=disposition)
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if content_type in _UNSAFE_TYPES:
        content_type = "application/octet-stream"
    return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})


def save_upload(
    settings: JobSettings,
    data: bytes,
    filename: str,
    kind: str | None = None,
    subfolder: str = "",
    overwrite: bool = False,
) -> dict[str, str]:
    """ComfyUI's image_upload: a free name (`name (1).png`, ...) unless `overwrite`, no duplicate
    of identical content. Returns `{"name", "subfolder", "type"}`; PathRefused(400) on a bad name."""
    kind = kind or "input"
    base = folder_for(settings, kind)
    if base is None:
        raise PathRefused(400, f"unknown type {kind!r}")
    if not filename or filename != os.path.basename(filename) or filename in (".", "..") or "\\" in filename:
        raise PathRefused(400, "the filename may not contain a path")
    folder = base / os.path.normpath(subfolder) if subfolder else base
    if not _inside(base, folder) or not _inside(base, folder / filename):
        raise PathRefused(400, "the upload would land outside the folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    stem, ext = os.path.splitext(filename)
    i = 1
    duplicate = False
    while not overwrite and path.exists():
        if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
            duplicate = True
            break
        filename = f"{stem} ({i}){ext}"
        path = folder / filename
        i += 1
    if not duplicate:
        path.write_bytes(data)
    return {"name": filename, "subfolder": subfolder, "type": kind}
