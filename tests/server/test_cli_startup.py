"""The `comfystream` commands that run no workflow start without importing torch (a second or more
of CPU per process): --help, every command's argument parsing, the workspace commands that
only look at a folder, `validate`, and the server itself (its workers import torch, in their own
processes)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import numpy as np
from safetensors.numpy import save_file
from serve_process import serve_process

from comfystream.comfyui.random_checkpoint import FORMAT
from tests.processes import worker_pids

ROOT = Path(__file__).resolve().parents[2]

# Runs each argv through server.cli.main in one process, then says what each returned and
# whether torch was imported along the way.
SCRIPT = """
import contextlib, io, json, sys
from server.cli import main
runs = json.loads(sys.argv[1])
codes = []
for argv in runs:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code
    codes.append([code, out.getvalue()])
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
"""


def run_cli(*runs: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(runs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_help_and_argument_parsing_do_not_import_torch():
    commands = ["validate", "execute", "serve", "relay", "setup-workspace", "workspace-info", "make-test-checkpoint"]
    result = run_cli(["--help"], *([command, "--help"] for command in commands))
    assert [code for code, _ in result["codes"]] == [0] * (1 + len(commands))
    assert "setup-workspace" in result["codes"][0][1]
    assert result["torch"] is False


def test_workspace_commands_that_only_look_at_a_folder_do_not_import_torch(tmp_path):
    missing = str(tmp_path / "missing")
    workspace = tmp_path / "ComfyUI"  # what check_workspace asks of a ComfyUI checkout
    for name in ("comfy", "comfy_extras"):
        (workspace / name).mkdir(parents=True)
    for name in ("nodes.py", "folder_paths.py"):
        (workspace / name).write_text("")
    checkpoint = tmp_path / "ckpt.safetensors"  # as make-test-checkpoint leaves it (seed 0, float16)
    save_file(
        {"w": np.zeros(2, dtype=np.float16)},
        str(checkpoint),
        metadata={"format": FORMAT, "seed": "0", "dtype": "float16"},
    )
    result = run_cli(
        ["workspace-info", missing],
        ["setup-workspace", "--nodes-only", missing],
        ["setup-workspace", "--link", str(workspace)],
        ["make-test-checkpoint", str(checkpoint), "--comfyui", missing],
    )
    codes = [code for code, _ in result["codes"]]
    assert codes == [1, 2, 0, 0], result
    assert json.loads(result["codes"][2][1])["installed_comfyui"] is False
    assert json.loads(result["codes"][3][1]) == {"path": str(checkpoint), "kept": True}
    assert (workspace / "custom_nodes").is_dir()
    assert result["torch"] is False


# An app as `serve` makes it, and a prompt validated against its nodes as a stream start does.
APP_SCRIPT = """
import json, sys
from server.app import create_app
from server.config import ServerConfig
from server.nodes.validation import validate_prompts
from server.http.keys import NODE_REGISTRY_KEY
app = create_app(ServerConfig())
prompt = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
    "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
}
prompts, given = validate_prompts(prompt, app[NODE_REGISTRY_KEY], default_if_none=False)
print(json.dumps({"prompts": len(prompts), "given": given, "torch": "torch" in sys.modules}))
"""


def test_the_server_app_and_its_prompt_validation_do_not_import_torch():
    proc = subprocess.run(
        [sys.executable, "-c", APP_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"prompts": 1, "given": True, "torch": False}


def test_validate_does_not_import_torch(tmp_path):
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 1.0}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "5": {"class_type": "SaveTensor", "inputs": {"images": ["4", 0]}},
    }
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps(prompt))
    result = run_cli(["validate", str(workflow)])
    ((code, out),) = result["codes"]
    # Valid (output 5), with the invalid branch's errors: validation ran to the end.
    assert code == 0, out
    assert json.loads(out)["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"
    assert result["torch"] is False


async def test_a_running_server_has_not_imported_torch(no_leaks, free_port: int):
    """`serve` up, its warm worker started once (health IDLE): torch's libraries are mapped into
    the worker, not into the server."""
    async with serve_process(free_port, "--job-workers", "0") as (proc, health):
        async with aiohttp.ClientSession() as http:
            while health["status"] == "LOADING":  # the warm worker is coming up
                await asyncio.sleep(0.2)
                async with http.get(f"http://127.0.0.1:{free_port}/health") as resp:
                    health = await resp.json()
        assert health["status"] == "IDLE", health
        workers = worker_pids(proc.pid)
        assert len(workers) == 1, workers
        assert "libtorch" in Path(f"/proc/{workers.pop()}/maps").read_text()  # what the check sees
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
