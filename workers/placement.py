"""GPU placement: which GPU a new worker is pinned to, by free memory.

The server never imports torch (that would also risk initialising CUDA in the server), so the
GPUs and their memory come from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`; no
`nvidia-smi` means no GPU, and workers run on the CPU.

A new worker goes to the GPU with the most free memory. nvidia-smi only sees memory once a worker
has allocated it, and a worker allocates seconds after it is placed (spawn, import torch, load the
models), so each placement counts as `min_free_mib` held on its GPU for `settle_s`: two workers
placed back to back do not both land on the GPU that looked emptiest. A GPU has room for another
worker when it runs fewer than `streams_per_gpu` workers (when set) and has at least `min_free_mib`
free beyond those not-yet-visible placements; when no GPU has room, `acquire` raises `NoGpuRoom`
with the reason for each GPU (the server answers 503 with it).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from comfystream.pipeline.backend import NoGpuRoom

logger = logging.getLogger(__name__)

# The name goes last: it is the one field that may hold a comma, and the split keeps it whole.
QUERY_FIELDS = ("index", "uuid", "memory.total", "memory.free", "utilization.gpu", "name")
DEFAULT_MIN_FREE_MIB = 1024
DEFAULT_SETTLE_S = 30.0


class GpuQueryError(RuntimeError):
    """nvidia-smi is there but did not answer the query (its message is the error's text)."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi reports it. Memory in MiB; None where nvidia-smi says [N/A]."""

    index: str  # as CUDA_VISIBLE_DEVICES takes it (with CUDA_DEVICE_ORDER=PCI_BUS_ID, nvidia-smi's order)
    uuid: str
    name: str
    memory_total_mib: int | None
    memory_free_mib: int | None
    utilization_pct: int | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _number(text: str) -> int | None:
    """A nounits value: "81559" or "81559.0"; "[N/A]", "[Not Supported]" and the like are None."""
    try:
        return int(float(text))
    except ValueError:
        return None


def parse_query_output(text: str) -> list[GpuInfo]:
    """The rows of `--query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",", len(QUERY_FIELDS) - 1)]
        if len(parts) != len(QUERY_FIELDS):
            raise GpuQueryError(f"unexpected nvidia-smi line: {line!r}")
        index, uuid, total, free, util, name = parts
        if not index.isdigit():
            raise GpuQueryError(f"unexpected nvidia-smi line: {line!r}")
        gpus.append(GpuInfo(index, uuid, name, _number(total), _number(free), _number(util)))
    return gpus


def query_gpus(timeout: float = 5.0) -> list[GpuInfo]:
    """Every GPU nvidia-smi sees, with its memory now; [] when there is no nvidia-smi.

    Raises GpuQueryError when nvidia-smi is there but fails (no driver, a bad query...)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    cmd = [exe, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GpuQueryError(f"nvidia-smi: {exc}") from exc
    if done.returncode != 0:
        # nvidia-smi prints its errors on stdout ('Field "x" is not a valid field to query.').
        message = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()[0]
        raise GpuQueryError(f"nvidia-smi exited with {done.returncode}: {message}")
    return parse_query_output(done.stdout)


def list_gpus(timeout: float = 5.0) -> list[GpuInfo]:
    """query_gpus for callers that only report: a failing nvidia-smi is logged and lists nothing."""
    try:
        return query_gpus(timeout)
    except GpuQueryError as exc:
        logger.warning("listing GPUs failed: %s", exc)
        return []


def detect_gpus(timeout: float = 5.0) -> list[str]:
    """The GPU indexes nvidia-smi lists, as strings for CUDA_VISIBLE_DEVICES; [] without one."""
    gpus = list_gpus(timeout)
    if not gpus and shutil.which("nvidia-smi") is not None:
        logger.warning("nvidia-smi lists no GPU: workers will run on the CPU")
    return [g.index for g in gpus]


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
    """Hands each new worker the GPU with the most free memory; None = CPU (no GPU at all).

    Ties go to the GPU running fewest workers, then to the first listed. Without a memory figure
    for every candidate (nvidia-smi absent with `--gpus` given, or [N/A] as under MIG), memory
    cannot be compared: the GPU running fewest workers wins (then the most free, then the first). `query` and `clock` are nvidia-smi and
    time.monotonic unless a test gives its own."""

    def __init__(
        self,
        gpus: Iterable[str | int] | str | None = None,
        streams_per_gpu: int | None = None,
        min_free_mib: int = DEFAULT_MIN_FREE_MIB,
        settle_s: float = DEFAULT_SETTLE_S,
        query: Callable[[], list[GpuInfo]] = query_gpus,
        clock: Callable[[], float] = time.monotonic,
    ):
        if streams_per_gpu is not None and streams_per_gpu < 1:
            raise ValueError("streams_per_gpu must be at least 1")
        self._query = query
        self._clock = clock
        self.streams_per_gpu = streams_per_gpu
        self.min_free_mib = min_free_mib
        self.settle_s = settle_s
        parsed = parse_gpus(gpus)
        if parsed is None:
            try:
                parsed = [g.index for g in query()]
            except GpuQueryError as exc:
                logger.warning("%s: workers will run on the CPU", exc)
                parsed = []
        self.gpus: list[str] = parsed
        self._load: dict[str, int] = {g: 0 for g in self.gpus}
        self._recent: dict[str, list[float]] = {g: [] for g in self.gpus}  # placement times, not yet settled
        self._lock = threading.Lock()

    # -- choice ----------------------------------------------------------------------------------

    def _readings(self) -> dict[str, GpuInfo]:
        try:
            return {g.index: g for g in self._query()}
        except GpuQueryError as exc:
            logger.warning("%s: placing by worker count alone", exc)
            return {}

    def _unseen_mib(self, gpu: str, now: float) -> int:
        """Memory the workers placed on `gpu` lately will take, which nvidia-smi may not show yet."""
        recent = self._recent[gpu] = [t for t in self._recent[gpu] if now - t < self.settle_s]
        return len(recent) * self.min_free_mib

    def _choose(self) -> tuple[str | None, list[str]]:
        """(the GPU for a new worker or None, the reason each other GPU was refused)."""
        readings = self._readings()
        now = self._clock()
        candidates: list[tuple[str, int | None, int, int]] = []  # (gpu, free, load, order)
        refused: list[str] = []
        for order, gpu in enumerate(self.gpus):
            load = self._load[gpu]
            if self.streams_per_gpu is not None and load >= self.streams_per_gpu:
                refused.append(f"GPU {gpu} runs {load} of {self.streams_per_gpu} workers (--streams-per-gpu)")
                continue
            info = readings.get(gpu)
            free = info.memory_free_mib if info is not None else None
            if free is not None:
                free -= self._unseen_mib(gpu, now)
                if free < self.min_free_mib:
                    total = info.memory_total_mib if info is not None else None
                    refused.append(
                        f"GPU {gpu} has {max(free, 0)} MiB free of {total} MiB"
                        f" (counting workers still loading), a worker needs {self.min_free_mib} MiB"
                    )
                    continue
            candidates.append((gpu, free, load, order))
        if not candidates:
            return None, refused
        if all(free is not None for _, free, _, _ in candidates):
            best = max(candidates, key=lambda c: (c[1], -c[2], -c[3]))
        else:
            best = max(candidates, key=lambda c: (-c[2], c[1] is not None, c[1] or 0, -c[3]))
        return best[0], refused

    # -- public ----------------------------------------------------------------------------------

    def acquire(self) -> str | None:
        """The GPU for a new worker, counted as placed; None: no GPU (CPU). Raises NoGpuRoom.

        Runs nvidia-smi: call it off the event loop (asyncio.to_thread)."""
        with self._lock:
            if not self.gpus:
                return None
            gpu, refused = self._choose()
            if gpu is None:
                raise NoGpuRoom("no GPU has room for another worker: " + "; ".join(refused))
            self._load[gpu] += 1
            self._recent[gpu].append(self._clock())
            return gpu

    def check_room(self) -> None:
        """Raises NoGpuRoom (with the reasons) unless `acquire` would place a worker now."""
        with self._lock:
            if not self.gpus:
                return
            gpu, refused = self._choose()
            if gpu is None:
                raise NoGpuRoom("no GPU has room for another worker: " + "; ".join(refused))

    def release(self, gpu: str | None) -> None:
        if gpu is None:
            return
        with self._lock:
            if self._load.get(gpu, 0) <= 0:
                logger.warning("GPU %s released more often than acquired", gpu)
                return
            self._load[gpu] -= 1
            if self._recent[gpu]:
                self._recent[gpu].pop()  # a worker gone before it settled holds nothing any more

    def load(self) -> dict[str, int]:
        with self._lock:
            return dict(self._load)
