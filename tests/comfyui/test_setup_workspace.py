"""`comfystream setup-workspace`, `workspace-info` and workspace checks: the parts that run without
network and without ComfyUI (a fake checkout stands in where only its layout matters)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comfystream.comfyui import WorkspaceError, WorkspaceSettings, WorkspaceSettingsError, check_workspace
from comfystream.comfyui.installer import (
    NODE_PACKAGE_NAME,
    install_command,
    install_node_package,
    node_package_source,
    our_requirements,
    pinned_names,
    requirements_without_torch,
)
from comfystream.comfyui.node_loading import NODE_PACKAGE_MARKER
from tests.comfyui.conftest import make_fake_workspace

HAS_COMFY_CLI = importlib.util.find_spec("comfy_cli") is not None
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--log-level", "WARNING", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def env_without_comfy(bin_dir: Path | None = None) -> dict[str, str]:
    """PATH holding no `comfy` executable (but `bin_dir`'s, when given)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(p for p in (str(bin_dir) if bin_dir else "", "/usr/bin", "/bin") if p)
    return env


def test_node_package_is_copied_into_custom_nodes(tmp_path):
    ws = make_fake_workspace(tmp_path / "ws")
    dest = install_node_package(ws)
    assert dest == ws / "custom_nodes" / NODE_PACKAGE_NAME
    assert not dest.is_symlink()
    source = node_package_source()
    for name in ("__init__.py", NODE_PACKAGE_MARKER):
        assert (dest / name).read_bytes() == (source / name).read_bytes()
    # A reinstall replaces comfystream's own earlier copy, stale files included.
    (dest / "stale.py").write_text("x = 1\n")
    assert install_node_package(ws) == dest
    assert not (dest / "stale.py").exists()
    assert (dest / "__init__.py").is_file()


def test_node_package_can_be_linked(tmp_path):
    ws = make_fake_workspace(tmp_path / "ws")
    dest = install_node_package(ws, link=True)
    assert dest.is_symlink() and dest.resolve() == node_package_source()
    copied = install_node_package(ws)  # and a copy may replace the link
    assert not copied.is_symlink() and (copied / NODE_PACKAGE_MARKER).is_file()


def test_a_folder_that_is_not_ours_is_left_alone(tmp_path):
    ws = make_fake_workspace(tmp_path / "ws")
    theirs = ws / "custom_nodes" / NODE_PACKAGE_NAME
    theirs.mkdir(parents=True)
    (theirs / "__init__.py").write_text("# someone else's\n")
    with pytest.raises(WorkspaceError, match="is not comfystream's node package"):
        install_node_package(ws)
    assert (theirs / "__init__.py").read_text() == "# someone else's\n"


def test_node_package_needs_a_comfyui_checkout(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(WorkspaceError, match="is not a ComfyUI workspace: it lacks nodes.py"):
        install_node_package(tmp_path / "plain")


def test_check_workspace_says_what_is_wrong(tmp_path):
    with pytest.raises(WorkspaceError, match="does not exist"):
        check_workspace(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(WorkspaceError, match="is not a directory"):
        check_workspace(tmp_path / "file")
    partial = tmp_path / "partial"
    (partial / "comfy").mkdir(parents=True)
    (partial / "nodes.py").write_text("")
    with pytest.raises(WorkspaceError, match="lacks folder_paths.py, comfy_extras"):
        check_workspace(partial)
    assert check_workspace(make_fake_workspace(tmp_path / "ok")) == (tmp_path / "ok").resolve()


@pytest.mark.skipif(HAS_COMFY_CLI, reason="comfy-cli is installed here: the missing case cannot happen")
def test_setup_without_comfy_cli_says_how_to_get_it(tmp_path):
    target = tmp_path / "new-workspace"
    proc = cli("setup-workspace", str(target), env=env_without_comfy())
    assert proc.returncode == 2
    assert "comfy-cli is not installed" in proc.stderr
    assert "pip install 'comfystream[workspace]'" in proc.stderr
    assert not target.exists()


def test_setup_on_an_existing_comfyui_installs_the_nodes_only(tmp_path):
    ws = make_fake_workspace(tmp_path / "ws")
    proc = cli("setup-workspace", str(ws), env=env_without_comfy())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {
        "ok": True,
        "workspace": str(ws.resolve()),
        "installed_comfyui": False,
        "node_package": str(ws.resolve() / "custom_nodes" / NODE_PACKAGE_NAME),
    }
    assert (ws / "custom_nodes" / NODE_PACKAGE_NAME / NODE_PACKAGE_MARKER).is_file()


def test_setup_refuses_a_non_empty_folder_that_is_not_comfyui(tmp_path):
    target = tmp_path / "stuff"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    proc = cli("setup-workspace", str(target), env=env_without_comfy())
    assert proc.returncode == 2
    assert "exists and is not a ComfyUI checkout" in proc.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


FAKE_COMFY = """\
#!{python}
# Stands in for comfy-cli: records how it was called and lays out a ComfyUI checkout.
import json, os, sys
from pathlib import Path

args = sys.argv[1:]
workspace = Path(args[args.index("--workspace") + 1])
for folder in ("comfy", "comfy_extras", "custom_nodes"):
    (workspace / folder).mkdir(parents=True, exist_ok=True)
(workspace / "nodes.py").write_text("")
(workspace / "folder_paths.py").write_text("")
(workspace / "requirements.txt").write_text("torch\\ntorchvision>=0.1  # pinned to torch\\nnumpy\\ntorchaudio\\n")
Path({record!r}).write_text(json.dumps({{"args": args, "virtual_env": os.environ.get("VIRTUAL_ENV")}}))
"""


@pytest.mark.skipif(HAS_COMFY_CLI, reason="comfy-cli is installed here and would be used instead")
def test_setup_runs_comfy_cli_then_installs_requirements_without_torch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "comfy-called.json"
    comfy = bin_dir / "comfy"
    comfy.write_text(FAKE_COMFY.format(python=sys.executable, record=str(record)))
    comfy.chmod(0o755)
    target = tmp_path / "ws"
    proc = cli(
        "setup-workspace", str(target), "--gpu", "cpu", "--skip-manager", env=env_without_comfy(bin_dir)
    )
    assert proc.returncode == 0, proc.stderr
    called = json.loads(record.read_text())
    assert called["args"] == [
        "--skip-prompt",
        "--workspace",
        str(target.resolve()),
        "install",
        "--cpu",
        "--skip-torch-or-directml",
        "--skip-requirement",
        "--skip-manager",
    ]
    # ComfyUI's requirements go into the Python the workers run, not a venv of comfy-cli's own.
    if sys.prefix != sys.base_prefix:
        assert called["virtual_env"] == sys.prefix
    result = json.loads(proc.stdout)
    assert result["installed_comfyui"] is True
    assert (target / "custom_nodes" / NODE_PACKAGE_NAME / "__init__.py").is_file()


def test_requirements_without_torch():
    text = textwrap.dedent(
        """\
        comfyui-frontend-package==1.27.10
        torch
        torchsde
        torchvision>=0.15 ; platform_system != "Darwin"
        Torch_Audio
        torchaudio # audio
        # a comment
        numpy>=1.25.0
        """
    )
    kept = requirements_without_torch(text).splitlines()
    assert kept == [
        "comfyui-frontend-package==1.27.10",
        "torchsde",
        "Torch_Audio",
        "# a comment",
        "numpy>=1.25.0",
    ]


def test_install_command_keeps_torch_unless_asked(tmp_path):
    keep = install_command(["comfy"], tmp_path, "nvidia", "latest", with_torch=False, skip_manager=False)
    assert keep == [
        "comfy", "--skip-prompt", "--workspace", str(tmp_path), "install", "--nvidia",
        "--version", "latest", "--skip-torch-or-directml", "--skip-requirement",
    ]  # fmt: skip
    full = install_command(["comfy"], tmp_path, "cpu", None, with_torch=True, skip_manager=True)
    assert full == [
        "comfy",
        "--skip-prompt",
        "--workspace",
        str(tmp_path),
        "install",
        "--cpu",
        "--skip-manager",
    ]
    with pytest.raises(WorkspaceError, match="gpu must be one of"):
        install_command(["comfy"], tmp_path, "tpu", None, with_torch=False, skip_manager=False)


def test_workspace_info_cli_reports_a_missing_workspace(tmp_path):
    proc = cli("workspace-info", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert f"ComfyUI workspace {tmp_path / 'nowhere'} does not exist" in proc.stderr


def test_settings_are_checked():
    with pytest.raises(WorkspaceSettingsError, match="preview_method must be one of"):
        WorkspaceSettings(preview_method="fast")
    with pytest.raises(WorkspaceSettingsError, match="exclude each other"):
        WorkspaceSettings(gpu_only=True, vram_mode="lowvram")
    with pytest.raises(WorkspaceSettingsError, match="gpu_only must be true or false"):
        WorkspaceSettings.from_mapping({"gpu_only": "yes"})
    # A stream's parameters carry other layers' keys too; only ComfyUI's are taken.
    settings = WorkspaceSettings.from_mapping(
        {
            "width": 512,
            "cwd": "/x",
            "gpu_only": True,
            "preview_method": "auto",
            "extra_custom_node_dirs": ["/a"],
        }
    )
    assert settings == WorkspaceSettings(gpu_only=True, preview_method="auto", extra_custom_node_dirs=("/a",))
    assert settings.effective_vram_mode(has_accelerator=True) == "gpu_only"
    assert settings.effective_vram_mode(has_accelerator=False) == "cpu"
    assert WorkspaceSettings(vram_mode="lowvram").effective_vram_mode(has_accelerator=True) == "lowvram"


def test_comfyuis_requirements_never_replace_a_pin_of_ours():
    """ComfyUI pins its own (older) editor; installing its requirements must keep the one
    comfystream serves, and every other requirement of comfystream's stays a constraint."""
    ours = our_requirements()
    assert "comfyui-frontend-package==1.58.1" in ours
    assert {"torch", "comfyui-frontend-package"} <= pinned_names(ours)
    comfyui = "comfyui-frontend-package==1.27.10\ncomfyui_frontend_package>=1.0\nnumpy>=1.25.0\ntorch\n"
    kept = requirements_without_torch(comfyui, pinned_names(ours)).splitlines()
    assert kept == ["numpy>=1.25.0"]
