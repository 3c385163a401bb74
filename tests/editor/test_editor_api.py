"""The editor's storage and discovery endpoints over HTTP, as ComfyUI's server answers them (no job
workers): users in single-user mode; settings and userdata (a workflow saved from the editor) on disk
in the user's folder, still there after a restart; every path confined to that folder; the frontend
extensions list with comfystream's own and a custom node's WEB_DIRECTORY, each served; the same API
under the editor's own base path (/comfyui/api); the logs the editor's terminal panel reads."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import create_app
from server.config import ServerConfig
from server.editor import live_workflows

WORKFLOW = {"last_node_id": 1, "nodes": [{"id": 1, "type": "EmptyImage"}], "links": [], "version": 0.4}


def web_node_package(root: Path) -> Path:
    """A custom node package with frontend extensions (WEB_DIRECTORY) and no nodes."""
    package = root / "nodes" / "webpkg"
    (package / "js" / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('WEB_DIRECTORY = "./js"\nNODE_CLASS_MAPPINGS = {}\n')
    (package / "js" / "hello.js").write_text("export const hello = 1;\n")
    (package / "js" / "sub" / "more.js").write_text("export const more = 2;\n")
    (package / "locales" / "fr").mkdir(parents=True)
    (package / "locales" / "fr" / "main.json").write_text('{"webpkg": {"hello": "bonjour"}}')
    (package / "locales" / "fr" / "nodeDefs.json").write_text('{"Hello": {"display_name": "Salut"}}')
    (package / "example_workflows").mkdir()
    (package / "example_workflows" / "demo.json").write_text(json.dumps(WORKFLOW))
    return package.parent


async def serve(tmp_path: Path):
    config = ServerConfig(
        job_workers=0,
        user_dir=tmp_path / "user",
        input_dir=tmp_path / "input",
        output_dir=tmp_path / "output",
        custom_nodes=[web_node_package(tmp_path)]
        if not (tmp_path / "nodes").exists()
        else [tmp_path / "nodes"],
    )
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    return server


async def test_settings_and_workflows_on_disk_survive_a_restart(tmp_path: Path, no_leaks) -> None:
    server = await serve(tmp_path)
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/comfyui/api/users") as r:
            assert r.status == 200 and await r.json() == {"storage": "server", "migrated": True}
        async with http.post(f"{base}/comfyui/api/settings", json={"Comfy.Locale": "en", "Comfy.X": 1}) as r:
            assert r.status == 200
        async with http.post(f"{base}/comfyui/api/settings/Comfy.X", json=[2, 3]) as r:
            assert r.status == 200
        name = "workflows%2Fmine%2Fgraph.json"
        async with http.post(
            f"{base}/comfyui/api/userdata/{name}?overwrite=false&full_info=true", json=WORKFLOW
        ) as r:
            assert r.status == 200
            info = await r.json()
            assert info["path"] == "workflows/mine/graph.json" and info["size"] > 0
        async with http.post(f"{base}/comfyui/api/userdata/{name}?overwrite=false", json=WORKFLOW) as r:
            assert r.status == 409
    await server.close()

    user = tmp_path / "user" / "default"
    assert json.loads((user / "comfy.settings.json").read_text())["Comfy.X"] == [2, 3]
    assert json.loads((user / "workflows" / "mine" / "graph.json").read_text()) == WORKFLOW

    server = await serve(tmp_path)  # a new server on the same folder
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/settings/Comfy.X") as r:
            assert await r.json() == [2, 3]
        async with http.get(f"{base}/api/settings") as r:
            settings = await r.json()
            assert settings["Comfy.Locale"] == "en"
        async with http.get(
            f"{base}/api/userdata?dir=workflows&recurse=true&split=false&full_info=true"
        ) as r:
            assert [f["path"] for f in await r.json()] == ["mine/graph.json"]
        async with http.get(f"{base}/api/userdata?dir=workflows&recurse=true&split=true") as r:
            assert await r.json() == [["mine/graph.json", "mine", "graph.json"]]
        async with http.get(f"{base}/api/v2/userdata?path=workflows") as r:
            assert [(e["path"], e["type"]) for e in await r.json()] == [
                ("workflows/mine", "directory"),
                ("workflows/.index.json", "file"),  # the bookmarks (listed here, as ComfyUI's os.walk does)
                ("workflows/mine/graph.json", "file"),
            ]
        async with http.get(f"{base}/comfyui/api/userdata/workflows%2Fmine%2Fgraph.json") as r:
            assert r.status == 200 and json.loads(await r.read()) == WORKFLOW
        async with http.post(
            f"{base}/api/userdata/workflows%2Fmine%2Fgraph.json/move/workflows%2Frenamed.json"
        ) as r:
            assert r.status == 200 and await r.json() == "workflows/renamed.json"
        async with http.delete(f"{base}/api/userdata/workflows%2Frenamed.json") as r:
            assert r.status == 204
        async with http.get(f"{base}/api/userdata/workflows%2Frenamed.json") as r:
            assert r.status == 404
    await server.close()


async def test_every_userdata_path_stays_in_the_user_folder(tmp_path: Path, no_leaks) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    server = await serve(tmp_path)
    base = str(server.make_url("")).rstrip("/")
    user = tmp_path / "user" / "default"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/users") as r:  # the editor's first request makes the folder
            assert r.status == 200 and (user / "workflows").is_dir()
        os.symlink(tmp_path, user / "workflows" / "link")  # a link inside that leads out
        for name in (
            "..%2F..%2Fsecret.txt",
            "%2E%2E%2F%2E%2E%2Fsecret.txt",
            "%252E%252E%252F%252E%252E%252Fsecret.txt",  # encoded twice: decoded once more, as ComfyUI does
            f"{str(secret).replace('/', '%2F')}",
            "workflows%2Flink%2Fsecret.txt",
        ):
            async with http.get(f"{base}/api/userdata/{name}") as r:
                assert r.status == 403, name
            async with http.post(f"{base}/api/userdata/{name}", data=b"x") as r:
                assert r.status == 403, name
            async with http.post(f"{base}/api/userdata/workflows%2Fa.json/move/{name}") as r:
                assert r.status in (403, 404), name
        async with http.get(f"{base}/api/userdata?dir=..") as r:
            assert r.status == 403
        async with http.get(f"{base}/api/v2/userdata?path=..%2F..") as r:
            assert r.status == 400
    assert secret.read_text() == "not yours"
    await server.close()


async def test_extensions_frontend_and_logs(tmp_path: Path, no_leaks) -> None:
    server = await serve(tmp_path)
    base = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/comfyui") as r:  # redirected to the page
            assert (
                r.status == 200
                and str(r.url).endswith("/comfyui/")
                and "<title>ComfyUI</title>" in await r.text()
            )
        async with http.get(f"{base}/dashboard/main.js") as r:  # the dashboard links to the editor
            assert 'href="/comfyui/"' in await r.text()
        async with http.get(f"{base}/comfyui/api/extensions") as r:
            scripts = await r.json()
        assert "/extensions/comfystream/comfystream.js" in scripts
        assert {"/extensions/webpkg/hello.js", "/extensions/webpkg/sub/more.js"} <= set(scripts)
        assert any(s.startswith("/extensions/core/") for s in scripts)  # the frontend's own (it skips them)
        for script in ("/extensions/webpkg/sub/more.js", "/extensions/comfystream/comfystream.js"):
            async with http.get(f"{base}/comfyui{script}") as r:
                assert r.status == 200 and "javascript" in r.headers["Content-Type"], script
        for path, expected in (
            ("/api/embeddings", []),
            ("/api/models", []),
            ("/api/experiment/models", []),
            ("/api/workflow_templates", {"webpkg": ["demo"]}),
            ("/api/workflow_templates/webpkg/demo.json", WORKFLOW),
            (
                "/comfyui/api/i18n",
                {"fr": {"webpkg": {"hello": "bonjour"}, "nodeDefs": {"Hello": {"display_name": "Salut"}}}},
            ),
            ("/api/global_subgraphs", {}),
            ("/comfyui/templates/index.json", live_workflows.template_index()),  # comfystream's own
            ("/embeddings", []),  # also without the /api prefix, as ComfyUI serves it
        ):
            async with http.get(f"{base}{path}") as r:
                assert r.status == 200 and await r.json() == expected, path
        async with http.get(f"{base}/comfyui/api/features") as r:
            assert (await r.json())["supports_preview_metadata"] is True
        async with http.post(f"{base}/comfyui/api/free", json={"unload_models": True}) as r:
            assert r.status == 200
        logging.getLogger("server.test").warning("a line for the editor's terminal")
        async with http.get(f"{base}/comfyui/internal/logs/raw") as r:
            raw = await r.json()
        lines = [e["m"] for e in raw["entries"]]
        assert any("a line for the editor's terminal" in m for m in lines), lines[-5:]
        assert set(raw["size"]) == {"cols", "rows"}
        async with http.get(f"{base}/internal/logs") as r:
            assert isinstance(await r.json(), str)
    await server.close()


async def test_with_a_workspace_the_editor_keeps_comfyuis_default_and_version(tmp_path: Path) -> None:
    """With --workspace: the editor opens ComfyUI's own default workflow (the server gives none in
    its place), and /system_stats reports the workspace's ComfyUI version."""
    from server.http.keys import CONFIG_KEY
    from server.jobs.comfy_routes import COMFYUI_API_VERSION, served_comfyui_version

    (tmp_path / "comfyui_version.py").write_text('__version__ = "0.9.1"\n')
    assert served_comfyui_version(tmp_path) == "0.9.1"
    assert served_comfyui_version(None) == served_comfyui_version(tmp_path / "missing") == COMFYUI_API_VERSION
    app = web.Application()
    app[CONFIG_KEY] = ServerConfig(workspace=tmp_path)
    app.router.add_get("/api/comfystream/editor", live_workflows.editor_defaults)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http, http.get(server.make_url("/api/comfystream/editor")) as r:
            assert r.status == 200 and await r.json() == {"engine": "workspace", "default_workflow": None}
    finally:
        await server.close()
