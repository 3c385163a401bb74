"""GPU placement: which GPU a new worker is pinned to.

The server never imports torch (that would also risk initialising CUDA in the server), so the
GPUs are found with `nvidia-smi -L` when it is there; none found means workers run on the CPU.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable

logger = logging.getLogger(__name__)

_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def detect_gpus(timeout: float = 5.0) -> list[str]:
    """The GPU indexes `nvidia-smi -L` lists, as strings for CUDA_VISIBLE_DEVICES; [] without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("nvidia-smi -L failed (%s): workers will run on the CPU", exc)
        return []
    return _GPU_LINE.findall(out)


def parse_gpus(value: str | Iterable[str | int] | None) -> list[str] | None:
    """`--gpus` as given: "0,1", ["0", 1], "" or "none" (CPU only); None means detect."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in ("", "none", "cpu"):
            return []
        if value.lower() == "auto":
            return None
        items: list[str | int] = [v for v in value.split(",")]
    else:
        items = list(value)
    gpus = [str(v).strip() for v in items if str(v).strip()]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"gpus: duplicate entries in {gpus}")
    return gpus


class GpuPlacer:
    """Hands each new worker the least-loaded GPU (ties go to the first listed); None = CPU."""

    def __init__(self, gpus: Iterable[str | int] | str | None = None):
        parsed = parse_gpus(gpus)
        self.gpus: list[str] = detect_gpus() if parsed is None else parsed
        self._load: dict[str, int] = {g: 0 for g in self.gpus}
        self._lock = threading.Lock()

    def acquire(self) -> str | None:
        with self._lock:
            if not self.gpus:
                return None
            gpu = min(self.gpus, key=lambda g: (self._load[g], self.gpus.index(g)))
            self._load[gpu] += 1
            return gpu

    def release(self, gpu: str | None) -> None:
        if gpu is None:
            return
        with self._lock:
            if self._load.get(gpu, 0) <= 0:
                logger.warning("GPU %s released more often than acquired", gpu)
                return
            self._load[gpu] -= 1

    def load(self) -> dict[str, int]:
        with self._lock:
            return dict(self._load)
