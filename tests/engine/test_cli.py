"""`comfystream validate` and `comfystream execute`, run as real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "--log-level", "WARNING", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def workflow(tmp_path):
    def write(prompt) -> str:
        path = tmp_path / "wf.json"
        path.write_text(json.dumps(prompt))
        return str(path)

    return write


def test_validate_ok_and_failure(workflow, no_leaks):
    good = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }
    proc = cli("validate", workflow(good))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True}

    bad = dict(good)
    bad["2"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 99, "sigma": 1.0}}
    bad["3"] = {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}}
    proc = cli("validate", workflow(bad))
    assert proc.returncode == 1
    body = json.loads(proc.stdout)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    (err,) = body["node_errors"]["2"]["errors"]
    assert err["type"] == "value_bigger_than_max" and err["message"] == "Value 99 bigger than max of 31"

    # One output valid, another on an invalid branch: valid (as POST /prompt), with that branch's errors.
    branch = dict(good)
    branch["4"] = {"class_type": "ImageInvert", "inputs": {}}
    branch["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    proc = cli("validate", workflow(branch))
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert body["ok"] is True and set(body["node_errors"]) == {"4"}
    assert body["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    assert body["node_errors"]["4"]["dependent_outputs"] == ["5"]

    proc = cli("validate", workflow({"prompt": {}}))
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["type"] == "prompt_no_outputs"


def test_execute_writes_8bit_images_and_events(workflow, tmp_path, no_leaks):
    pixels = np.random.default_rng(7).integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
        },
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        "6": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
    }
    out = tmp_path / "out"
    proc = cli(
        "execute", workflow(prompt), "--input", str(tmp_path / "in.png"), "--output-dir", str(out), "--events"
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "execution_start"
    assert [e["type"] for e in events[-2:]] == ["execution_success", "executing"]
    assert len({e["data"]["prompt_id"] for e in events}) == 1
    assert sorted(p.name for p in out.iterdir()) == ["4_000.png", "5_000.png"]

    x = pixels.astype(np.float32) / 255.0
    inverted = np.clip(255.0 * (1.0 - x), 0, 255).astype(np.uint8)  # SaveImage's 8-bit conversion
    assert np.array_equal(np.asarray(Image.open(out / "4_000.png")), inverted)
    assert np.array_equal(np.asarray(Image.open(out / "5_000.png")), np.repeat(np.repeat(pixels, 2, 0), 2, 1))


def test_execute_reports_validation_and_node_errors(workflow, tmp_path, no_leaks):
    proc = cli("execute", workflow({"1": {"class_type": "Nope", "inputs": {}}}))
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["type"] == "missing_node_type"
    # LoadTensor without --input: the run fails with a clear message
    prompt = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
    }
    proc = cli("execute", workflow(prompt), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == 3
    assert "no input frame" in proc.stderr


def test_custom_nodes_flag(workflow, tmp_path, no_leaks):
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "solid.py").write_text(
        "import torch\n"
        "class Solid:\n"
        "    RETURN_TYPES = ('IMAGE',)\n"
        "    FUNCTION = 'run'\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {'level': ('FLOAT', {'default': 0.5, 'min': 0.0, 'max': 1.0})}}\n"
        "    def run(self, level):\n"
        "        return (torch.full((1, 2, 3, 3), level),)\n"
        "NODE_CLASS_MAPPINGS = {'Solid': Solid}\n"
    )
    (nodes / "broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    prompt = {
        "1": {"class_type": "Solid", "inputs": {"level": 0.5}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    out = tmp_path / "out"
    proc = cli("execute", workflow(prompt), "--custom-nodes", str(nodes), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "broken.py" in proc.stderr and "broken on purpose" in proc.stderr
    assert json.loads(proc.stdout)["files"] == [str(out / "2_000.png")]
    assert np.asarray(Image.open(out / "2_000.png")).tolist() == [[[127] * 3] * 3] * 2
