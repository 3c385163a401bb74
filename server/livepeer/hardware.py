"""GPU facts for `/hardware/info` and `/hardware/stats`, in pytrickle's shapes (its
`utils/hardware.py`: `gpu_info` / `gpu_stats`, keyed by GPU index), with the number of this
server's workers on each GPU beside them.

Which GPUs count is the workers' placement's business (`workers.placement`, through the backend's
placer: `--gpus`, or every GPU `nvidia-smi` lists); this module only reads each one's name,
memory and utilization with `nvidia-smi --query-gpu`. Without nvidia-smi (a CPU machine) both
answers are empty. The server never imports torch or NVML for this.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Any

logger = logging.getLogger(__name__)

_FIELDS = ("index", "uuid", "name", "memory.total", "memory.free", "utilization.gpu", "utilization.memory")
_MIB = 1024 * 1024


def _number(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return 0


def query_gpus(timeout: float = 5.0) -> list[dict[str, Any]]:
    """One dict per GPU nvidia-smi sees (index, id, name, memory in bytes, utilization %, compute
    capability); [] without nvidia-smi or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    gpus = _run(exe, (*_FIELDS, "compute_cap"), timeout)
    if gpus is None:  # an older driver without compute_cap
        gpus = _run(exe, _FIELDS, timeout)
    return gpus or []


def _run(exe: str, fields: tuple[str, ...], timeout: float) -> list[dict[str, Any]] | None:
    cmd = [exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except subprocess.CalledProcessError:
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("nvidia-smi --query-gpu failed: %s", exc)
        return []
    gpus = []
    for line in out.strip().splitlines():
        values = dict(zip(fields, (v.strip() for v in line.split(",")), strict=False))
        if "index" not in values:
            continue
        major, _, minor = values.get("compute_cap", "").partition(".")
        gpus.append(
            {
                "index": values["index"],
                "id": values.get("uuid", ""),
                "name": values.get("name", ""),
                "memory_total": _number(values.get("memory.total", "0")) * _MIB,
                "memory_free": _number(values.get("memory.free", "0")) * _MIB,
                "utilization_compute": _number(values.get("utilization.gpu", "0")),
                "utilization_memory": _number(values.get("utilization.memory", "0")),
                "major": _number(major) if major else 0,
                "minor": _number(minor) if minor else 0,
            }
        )
    return gpus


def placed_gpus(
    gpus: list[dict[str, Any]], placed: list[str], load: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """The GPUs workers are placed on (`placed`: indexes or UUIDs, as --gpus gives them), keyed by
    index, each with `workers`: how many of this server's workers it holds now."""
    out: dict[str, dict[str, Any]] = {}
    for gpu in gpus:
        key = next((p for p in placed if p in (gpu["index"], gpu["id"])), None)
        if key is None:
            continue
        out[gpu["index"]] = {**gpu, "workers": int(load.get(key, 0))}
    return out


INFO_KEYS = ("id", "name", "memory_total", "memory_free", "major", "minor", "workers")
STATS_KEYS = (
    "id",
    "name",
    "memory_total",
    "memory_free",
    "utilization_compute",
    "utilization_memory",
    "workers",
)


def shaped(gpus: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    return {index: {k: gpu[k] for k in keys} for index, gpu in gpus.items()}
