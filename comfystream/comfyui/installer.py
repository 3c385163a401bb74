"""`comfystream setup-workspace DIR`: ComfyUI installed with comfy-cli, plus comfystream's nodes.

Steps:
1. Unless DIR already is a ComfyUI checkout: `comfy --workspace DIR install` (comfy-cli, the
   optional `workspace` extra). That clones ComfyUI from GitHub (network). By default comfy-cli
   leaves torch and ComfyUI's requirements alone, and comfystream installs those requirements
   itself, without torch/torchvision/torchaudio and pinned to the torch already installed, so
   that the workers keep the torch they were built for. `with_torch=True` lets comfy-cli do
   all of it instead.
2. comfystream's stream nodes (LoadTensor, SaveTensor, ...) go to DIR/custom_nodes/comfystream_nodes,
   so that streaming workflows can be built in ComfyUI's own UI.

Everything is installed into the Python that runs this command (comfy-cli is pointed at it
through VIRTUAL_ENV), because the workers import ComfyUI in that same Python.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from comfystream.comfyui.info import WorkspaceError
from comfystream.comfyui.node_loading import NODE_PACKAGE_MARKER
from comfystream.comfyui.workspace import check_workspace

logger = logging.getLogger(__name__)

NODE_PACKAGE_NAME = "comfystream_nodes"
GPU_CHOICES = ("nvidia", "amd", "cpu", "m-series")
# ComfyUI's requirements that would replace or extend the worker's torch.
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")


class ComfyCliMissingError(WorkspaceError):
    """comfy-cli is not installed in this environment."""


@dataclass
class SetupResult:
    workspace: Path
    installed_comfyui: bool
    node_package: Path
    commands: list[list[str]] = field(default_factory=list)


def node_package_source() -> Path:
    """The folder shipped inside comfystream that becomes DIR/custom_nodes/comfystream_nodes."""
    # By path: importing the package would import the nodes (and torch) for nothing.
    return Path(__file__).resolve().parent / "node_package"


def install_node_package(workspace: str | os.PathLike[str], link: bool = False) -> Path:
    """Copy (or symlink) comfystream's stream nodes into the workspace's custom_nodes folder.

    A previous install by comfystream is replaced; anything else at that path is left alone
    and reported.
    """
    root = check_workspace(workspace)
    custom_nodes = root / "custom_nodes"
    custom_nodes.mkdir(exist_ok=True)
    dest = custom_nodes / NODE_PACKAGE_NAME
    if dest.is_symlink() or dest.exists():
        if not (dest / NODE_PACKAGE_MARKER).is_file():
            raise WorkspaceError(f"{dest} exists and is not comfystream's node package; remove it first")
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        else:
            shutil.rmtree(dest)
    source = node_package_source()
    if link:
        dest.symlink_to(source, target_is_directory=True)
    else:
        shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    logger.info("installed comfystream's nodes at %s (%s)", dest, "link" if link else "copy")
    return dest


def comfy_cli_command() -> list[str]:
    """How to run comfy-cli from here, or `ComfyCliMissingError` saying how to get it."""
    if importlib.util.find_spec("comfy_cli") is not None:
        return [sys.executable, "-m", "comfy_cli"]
    executable = shutil.which("comfy")
    if executable:
        return [executable]
    raise ComfyCliMissingError(
        "comfy-cli is not installed: install it with `pip install 'comfystream[workspace]'` "
        "(or `pip install comfy-cli`), or point setup-workspace at an existing ComfyUI checkout"
    )


def _env_for_this_python() -> dict[str, str]:
    """comfy-cli installs into $VIRTUAL_ENV when set; otherwise it may create a venv of its own."""
    env = dict(os.environ)
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
    return env


def default_gpu() -> str:
    import torch

    return "nvidia" if torch.cuda.is_available() else "cpu"


def install_command(
    cli: list[str], workspace: Path, gpu: str, version: str | None, with_torch: bool, skip_manager: bool
) -> list[str]:
    if gpu not in GPU_CHOICES:
        raise WorkspaceError(f"gpu must be one of {', '.join(GPU_CHOICES)}, got {gpu!r}")
    cmd = [*cli, "--skip-prompt", "--workspace", str(workspace), "install", f"--{gpu}"]
    if version:
        cmd += ["--version", version]
    if not with_torch:
        cmd += ["--skip-torch-or-directml", "--skip-requirement"]
    if skip_manager:
        cmd.append("--skip-manager")
    return cmd


def _requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return match.group(0).lower().replace("_", "-") if match else None


def requirements_without_torch(requirements: str, pinned: frozenset[str] = frozenset()) -> str:
    """ComfyUI's requirements.txt less the torch packages (kept as the worker has them) and less
    the packages comfystream pins to one version (`pinned`: ComfyUI's own pin of, say,
    comfyui-frontend-package would replace the editor comfystream serves)."""
    drop = set(TORCH_PACKAGES) | set(pinned)
    kept = [line for line in requirements.splitlines() if _requirement_name(line) not in drop]
    return "\n".join(kept) + "\n"


def our_requirements() -> list[str]:
    """comfystream's own requirements (no extras), as installed: pip keeps them as constraints."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        found = requires("comfystream") or []
    except PackageNotFoundError:
        return []
    return [r.split(";", 1)[0].strip() for r in found if "extra ==" not in r]


def pinned_names(requirements: list[str]) -> frozenset[str]:
    """The packages `requirements` pin to one version (`name==x`)."""
    return frozenset(
        name for r in requirements if "==" in r and (name := _requirement_name(r)) is not None
    )


def _install_requirements(workspace: Path) -> list[str]:
    import torch

    requirements = workspace / "requirements.txt"
    if not requirements.is_file():
        raise WorkspaceError(f"{requirements} is missing: the ComfyUI install is incomplete")
    with tempfile.TemporaryDirectory(prefix="comfystream-setup-") as tmp:
        ours = our_requirements()
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements_without_torch(requirements.read_text(encoding="utf-8"), pinned_names(ours)))
        # Every requirement of comfystream's stays satisfied, torch as installed.
        constraints = Path(tmp) / "constraints.txt"
        pins = [r for r in ours if _requirement_name(r) != "torch"]
        constraints.write_text("\n".join([f"torch=={torch.__version__.split('+')[0]}", *pins]) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "-r", str(req), "-c", str(constraints)]
        _run(cmd, "installing ComfyUI's requirements")
    return cmd


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a descriptor (embedded)
        return None


def _run(cmd: list[str], what: str) -> None:
    logger.info("%s: %s", what, " ".join(cmd))
    try:
        # Their output goes to our stderr: stdout carries the command's JSON result only.
        result = subprocess.run(cmd, env=_env_for_this_python(), stdout=_stderr_fd(), check=False)
    except OSError as exc:
        raise WorkspaceError(f"{what} failed: cannot run {cmd[0]}: {exc}") from exc
    if result.returncode != 0:
        raise WorkspaceError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}")


def setup_workspace(
    workspace: str | os.PathLike[str],
    gpu: str | None = None,
    version: str | None = None,
    with_torch: bool = False,
    skip_manager: bool = False,
    link: bool = False,
    nodes_only: bool = False,
) -> SetupResult:
    """Install ComfyUI at `workspace` (unless it is one already) and comfystream's nodes into it."""
    root = Path(workspace).expanduser().resolve()
    commands: list[list[str]] = []
    try:
        check_workspace(root)
        installed = False
        logger.info("%s already holds ComfyUI: installing comfystream's nodes only", root)
    except WorkspaceError:
        if nodes_only:
            raise
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise WorkspaceError(
                f"{root} exists and is not a ComfyUI checkout: give an empty or new folder"
            ) from None
        cmd = install_command(comfy_cli_command(), root, gpu or default_gpu(), version, with_torch, skip_manager)
        _run(cmd, "installing ComfyUI with comfy-cli")
        commands.append(cmd)
        check_workspace(root)  # comfy-cli said yes: make sure the checkout is really there
        if not with_torch:
            commands.append(_install_requirements(root))
        installed = True
    package = install_node_package(root, link=link)
    return SetupResult(workspace=root, installed_comfyui=installed, node_package=package, commands=commands)
