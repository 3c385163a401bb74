"""The `comfystream` commands that run no workflow start without importing torch (a second or more
of CPU per process): --help, every command's argument parsing, and the workspace commands that
only look at a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from comfystream.comfyui.random_checkpoint import FORMAT

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
