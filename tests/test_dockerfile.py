"""The GPU image's Dockerfile (no Docker engine here to build it): the facts `docker run --gpus all`
depends on, read from the file as Docker's parser would see its instructions."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_gpu_image_runs_as_a_user_with_cuda_torch_and_a_health_check():
    steps = _instructions()
    names = [n for n, _ in steps]
    users = [arg for n, arg in steps if n == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server does not run as root"
    assert names.index("USER") < names.index("ENTRYPOINT")
    env = " ".join(arg for n, arg in steps if n == "ENV")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env, "utility: nvidia-smi for placement"
    runs = " ".join(arg for n, arg in steps if n == "RUN")
    pin = (ROOT / "scripts" / "constraints.txt").read_text().split()[0]
    assert f'"{pin}"' in runs and "torch.version.cuda" in runs, "pinned torch, checked to be a CUDA build"
    assert '".[workspace]"' in runs
    health = next(arg for n, arg in steps if n == "HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    compile(command[-1], "<healthcheck>", "exec")  # the inline script is valid Python
    port = re.search(r"127\.0\.0\.1:(\d+)/health", command[-1]).group(1)
    cmd = json.loads(next(arg for n, arg in steps if n == "CMD"))
    assert cmd[:1] == ["serve"] and cmd[cmd.index("--port") + 1] == port
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert next(arg for n, arg in steps if n == "EXPOSE") == port
