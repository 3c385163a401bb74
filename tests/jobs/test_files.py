"""/view and /upload/image (no way out of the folders), LoadImage on an upload, and the flow of
ComfyUI's own websocket example client (script_examples/websockets_api_example.py), run as it is
written: websocket-client and urllib in a thread."""

from __future__ import annotations

import asyncio
import io
import json
import os
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest
import websocket
from PIL import Image

from .conftest import JobsServer, gated_prompt

pytestmark = pytest.mark.asyncio(loop_scope="package")


def _png(color: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


async def _upload(jobs: JobsServer, data: bytes, filename: str, **fields: str) -> tuple[int, object]:
    """A multipart body written out by hand: aiohttp's own writer would percent-encode a `/` in the
    filename, and the tests need the raw names a hostile client can send."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    ]
    for key, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return await jobs.call("POST", "/upload/image", data=body, headers=headers)


async def test_view_refuses_every_way_out_of_the_folders(jobs_server: JobsServer, no_leaks):
    secret = jobs_server.root / "secret.txt"
    secret.write_text("not for the web")
    jobs_server.output_dir.mkdir(parents=True, exist_ok=True)
    (jobs_server.output_dir / "inside.txt").write_text("fine")
    link = jobs_server.output_dir / "leak.txt"
    if not link.exists():
        os.symlink(secret, link)
    (jobs_server.output_dir / "sub").mkdir(exist_ok=True)
    if not (jobs_server.output_dir / "sub" / "up").exists():
        os.symlink(jobs_server.root, jobs_server.output_dir / "sub" / "up")

    refused = [
        ({"filename": "../secret.txt"}, 400),
        ({"filename": "..\\secret.txt"}, 400),
        ({"filename": str(secret)}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "secret.txt", "subfolder": ".."}, 403),
        ({"filename": "secret.txt", "subfolder": "../../.."}, 403),
        ({"filename": "secret.txt", "subfolder": str(jobs_server.root)}, 403),
        ({"filename": "secret.txt", "subfolder": "sub/up"}, 403),
        ({"filename": "leak.txt"}, 403),
        ({"filename": "inside.txt", "type": "nowhere"}, 400),
        ({"filename": ""}, 400),
    ]
    for prefix in ("", "/api"):
        for params, expected in refused:
            status, body = await jobs_server.call("GET", f"{prefix}/view", params=params)
            assert status == expected, (params, status)
            assert b"not for the web" not in body
    status, body = await jobs_server.call("GET", "/view", params={"filename": "inside.txt"})
    assert status == 200 and body == b"fine"
    status, _ = await jobs_server.call("GET", "/view", params={"filename": "missing.png"})
    assert status == 404


async def test_upload_then_load_image_uses_it(jobs_server: JobsServer, no_leaks):
    name = f"up-{uuid.uuid4().hex[:8]}.png"
    red = _png((200, 10, 10))
    status, body = await _upload(jobs_server, red, name)
    assert status == 200 and body == {"name": name, "subfolder": "", "type": "input"}
    assert (jobs_server.input_dir / name).read_bytes() == red
    status, again = await _upload(jobs_server, red, name)  # the same bytes: no second copy
    assert again == body
    status, other = await _upload(jobs_server, _png((1, 2, 3)), name)  # other bytes: a free name
    assert other["name"] == name.replace(".png", " (1).png")
    for bad in ("../escape.png", "a/b.png"):
        status, _ = await _upload(jobs_server, red, bad)
        assert status == 400
    status, _ = await _upload(jobs_server, red, "x.png", subfolder="../..")
    assert status == 400
    assert not (jobs_server.root / "escape.png").exists()

    status, info = await jobs_server.call("GET", "/object_info/LoadImage")
    assert name in info["LoadImage"]["input"]["required"]["image"][0]

    ws = await jobs_server.ws("client-upload")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "uploaded"}},
    }
    prompt_id = await jobs_server.queue_prompt(prompt, "client-upload")
    await ws.wait_done(prompt_id)
    (image,) = (await jobs_server.history(prompt_id))["outputs"]["2"]["images"]
    status, png = await jobs_server.call("GET", "/view", params=image)
    assert status == 200
    assert np.array_equal(np.array(Image.open(io.BytesIO(png))), np.array(Image.open(io.BytesIO(red))))
    status, preview = await jobs_server.call("GET", "/view", params={**image, "preview": "jpeg;80"})
    assert status == 200 and Image.open(io.BytesIO(preview)).format == "JPEG"
    await ws.close()


def _websockets_api_example(
    server_address: str, prompt: dict
) -> tuple[str, dict[str, list[bytes]], list[bytes]]:
    """ComfyUI's websockets_api_example.py, unchanged in substance."""
    client_id = str(uuid.uuid4())

    def queue_prompt(prompt, prompt_id):
        p = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        data = json.dumps(p).encode("utf-8")
        req = urllib.request.Request(f"http://{server_address}/prompt", data=data)
        urllib.request.urlopen(req).read()

    def get_image(filename, subfolder, folder_type):
        data = {"filename": filename, "subfolder": subfolder, "type": folder_type}
        url_values = urllib.parse.urlencode(data)
        with urllib.request.urlopen(f"http://{server_address}/view?{url_values}") as response:
            return response.read()

    def get_history(prompt_id):
        with urllib.request.urlopen(f"http://{server_address}/history/{prompt_id}") as response:
            return json.loads(response.read())

    def get_images(ws, prompt):
        prompt_id = str(uuid.uuid4())
        queue_prompt(prompt, prompt_id)
        output_images = {}
        previews = []
        while True:
            out = ws.recv()
            if isinstance(out, str):
                message = json.loads(out)
                if message["type"] == "executing":
                    data = message["data"]
                    if data["node"] is None and data["prompt_id"] == prompt_id:
                        break  # Execution is done
            else:
                previews.append(out[8:])  # the example's way to read a preview
                continue
        history = get_history(prompt_id)[prompt_id]
        for node_id in history["outputs"]:
            node_output = history["outputs"][node_id]
            images_output = []
            if "images" in node_output:
                for image in node_output["images"]:
                    images_output.append(get_image(image["filename"], image["subfolder"], image["type"]))
            output_images[node_id] = images_output
        return prompt_id, output_images, previews

    ws = websocket.WebSocket()
    ws.connect(f"ws://{server_address}/ws?clientId={client_id}", timeout=60)
    try:
        return get_images(ws, prompt)
    finally:
        ws.close()


async def test_comfyui_websocket_example_client_flow(jobs_server: JobsServer, no_leaks):
    gate = jobs_server.gate()
    gate.touch()
    address = jobs_server.base.removeprefix("http://")
    prompt_id, images, previews = await asyncio.to_thread(
        _websockets_api_example, address, gated_prompt(gate, "example", value=0.5)
    )
    assert list(images) == ["3"] and len(images["3"]) == 1
    saved = Image.open(io.BytesIO(images["3"][0]))
    assert saved.size == (8, 8) and saved.getpixel((0, 0)) == (127, 127, 127)
    # A client without feature flags gets ComfyUI's type-1 previews; the example decodes them as is.
    previews = [p for p in previews if p[:2] == b"\xff\xd8"]
    assert previews and Image.open(io.BytesIO(previews[0])).size == (8, 8)
    assert (await jobs_server.history(prompt_id))["status"]["status_str"] == "success"
