"""Shared weights with ComfyUI's own code: its in-place weight patch copies a shared tensor before
it writes (workers/shared_weights_cuda.py). (Two SD 1.5 streams mapping one copy of the
checkpoint, each giving ComfyUI's own pixels: test_real_model.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.timeout(300)]

# ComfyUI's comfy.utils alone (a third of a whole workspace's import, its nodes): the function
# under test is one of its own.
GUARD_PROBE = """
import sys
import torch
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[2])
import comfy.utils
from workers.shared_weights_cuda import guard_in_place_patches

shared = torch.zeros(32)  # stands for a holder's allocation other workers read
model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False))
model[0].weight.data = shared[:16].view(4, 4)
model[1].weight.data = shared[16:].view(4, 4)
lo, hi = shared.data_ptr(), shared.data_ptr() + shared.nbytes
guard_in_place_patches(torch, lambda t: lo <= t.data_ptr() < hi)
comfy.utils.copy_to_param(model, "0.weight", torch.ones(4, 4))  # ModelPatcher's in-place patch
assert torch.equal(shared, torch.zeros(32)), "the shared allocation was written"
assert torch.equal(model[0].weight, torch.ones(4, 4)), "the patch did not reach the model"
assert model[1].weight.data_ptr() == shared.data_ptr() + 64, "an unpatched tensor left the shared copy"
print("ok")
"""


def test_comfyuis_in_place_patch_copies_a_shared_tensor_first(comfyui_path, comfyui_env):
    """On a GPU there is no copy-on-write: ComfyUI's in-place weight patch (`copy_to_param`, used
    by ModelPatcher with inplace_update) must give the worker its own copy before it writes."""
    import subprocess
    import sys

    repo = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", GUARD_PROBE, repo, str(comfyui_path)],
        env=comfyui_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
