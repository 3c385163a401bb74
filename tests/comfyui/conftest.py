"""Fixtures for the ComfyUI workspace tests.

The tests that need a real ComfyUI run when COMFYUI_PATH points at a checkout and are skipped
otherwise. ComfyUI is loaded in child processes only (a worker, or `comfyui_probe.py`): its
modules are process-global and must not leak into pytest's own process.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.comfyui.torchvision_standin import write_standin

HERE = Path(__file__).resolve().parent
NODE_PACKAGES = HERE / "node_packages"


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        pytest.skip("COMFYUI_PATH is not set (point it at a ComfyUI checkout to run these tests)")
    from comfystream.comfyui import check_workspace

    return check_workspace(value)  # a wrong path fails loudly rather than skipping


@pytest.fixture(scope="session")
def standin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A folder with a stand-in torchvision when the real one is missing (None otherwise)."""
    if importlib.util.find_spec("torchvision") is not None:
        return None
    return write_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="session")
def comfyui_env(comfyui_path: Path, standin_dir: Path | None) -> dict[str, str]:
    """Environment for a child process that imports ComfyUI."""
    env = dict(os.environ)
    if standin_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(standin_dir), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def standin_on_path(standin_dir: Path | None):
    """For spawned workers: multiprocessing's spawn gives the child this process's sys.path."""
    if standin_dir is None:
        yield
        return
    sys.path.insert(0, str(standin_dir))
    try:
        yield
    finally:
        sys.path.remove(str(standin_dir))


@pytest.fixture(scope="session")
def custom_nodes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A custom_nodes folder with the test packages (working, V3, broken, clashing)."""
    root = tmp_path_factory.mktemp("custom_nodes")
    for package in NODE_PACKAGES.iterdir():
        if package.is_dir() and (package / "__init__.py").is_file():
            shutil.copytree(package, root / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    # comfystream's own package, as setup-workspace installs it: a worker must skip it.
    from comfystream.comfyui.installer import NODE_PACKAGE_NAME, node_package_source

    shutil.copytree(
        node_package_source(), root / NODE_PACKAGE_NAME, ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def worker_uint8(image: Any) -> Any:
    """A float image as a worker writes a stream's output frame (workers/tensors.py)."""
    import numpy as np
    import torch

    from workers.tensors import image_into_rgb

    out = np.empty(image.shape, dtype=np.uint8)
    image_into_rgb(torch, torch.from_numpy(np.ascontiguousarray(image)), out)
    return out


def make_fake_workspace(root: Path) -> Path:
    """The files that make a folder look like a ComfyUI checkout (nothing in them runs)."""
    (root / "comfy").mkdir(parents=True)
    (root / "comfy_extras").mkdir()
    (root / "nodes.py").write_text("")
    (root / "folder_paths.py").write_text("")
    return root


# The suite's SD 1.5 checkpoint (seeded random weights, about 2.3 GB): built once per machine by
# `comfystream make-test-checkpoint` and kept in a cache folder between runs.
CHECKPOINT_NAME = "sd15-random.safetensors"


def checkpoint_cache_dir() -> Path:
    return Path(os.environ.get("COMFYSTREAM_TEST_CACHE") or Path.home() / ".cache" / "comfystream-tests")


@pytest.fixture(scope="session")
def sd15_checkpoint(comfyui_path: Path, comfyui_env: dict[str, str]) -> Path:
    out = checkpoint_cache_dir() / CHECKPOINT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time (pytest-xdist workers, or runs side by side): the others wait and find
    # it made. The command itself writes a temp file and renames it, so a killed build leaves none.
    with open(out.parent / f".{CHECKPOINT_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = _make_checkpoint(comfyui_path, comfyui_env, out)
    assert proc.returncode == 0, f"make-test-checkpoint failed:\n{proc.stderr[-3000:]}"
    return out


def _make_checkpoint(comfyui_path: Path, comfyui_env: dict[str, str], out: Path):
    import subprocess

    return subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "make-test-checkpoint",
            "--comfyui",
            str(comfyui_path),
            str(out),
        ],
        env=comfyui_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def model_paths(sd15_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An extra_model_paths.yaml whose checkpoints folder holds the test checkpoint (the ComfyUI
    checkout itself may be read-only)."""
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / CHECKPOINT_NAME).symlink_to(sd15_checkpoint)
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text(f"comfystream_tests:\n  base_path: {root}\n  checkpoints: checkpoints\n")
    return yaml


@pytest.fixture(scope="session")
def frames():
    """The SD 1.5 tests' input frames (tests/comfyui/sd15.py)."""
    from tests.comfyui.sd15 import sd15_frames

    return sd15_frames()


@pytest.fixture(scope="session")
def reference_run(comfyui_path, comfyui_env, model_paths, sd15_checkpoint, tmp_path_factory):
    """ComfyUI's own outputs for the SD 1.5 tests' prompts and frames (tests/comfyui/sd15.py),
    begun in the background if no run kept them: a test asks for `reference_run` to have them made
    while it starts its own workers, and for its `outputs()` where it first compares."""
    from tests.comfyui.sd15 import Reference

    run = Reference(comfyui_path, comfyui_env, model_paths, sd15_checkpoint, tmp_path_factory)
    run.start()
    yield run
    run.close()


@pytest.fixture(scope="session")
def reference(reference_run):
    """The outputs themselves (waiting for them)."""
    return reference_run.outputs()
