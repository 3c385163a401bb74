"""Server configuration: what `comfystream serve` parses and `create_app` takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfystream.pipeline.scheduling import DEFAULT_MAX_LATENCY_MS


@dataclass
class ServerConfig:
    """Everything the app factory needs; the CLI fills it from its flags."""

    host: str = "127.0.0.1"
    port: int = 8000
    workspace: Path | None = None  # a ComfyUI workspace (its nodes and models); None: built-in nodes
    custom_nodes: list[Path] = field(default_factory=list)  # extra custom-node folders
    # --extra-model-paths: ComfyUI extra_model_paths.yaml files naming more model folders (with --workspace)
    extra_model_paths: list[Path] = field(default_factory=list)
    max_streams: int = 8  # concurrent trickle streams; a start beyond it gets 503
    # Spawned, engine-loaded, idle workers kept ready. `comfystream serve` keeps 1 by default (a
    # stream's first frames are then processed ones); 0 here, for apps built in code and tests.
    warm_workers: int = 0
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS  # a stream's latency budget unless it sets one
    gpus: list[int] | None = None  # GPU indices to place workers on; None: all visible, or CPU
    streams_per_gpu: int | None = None  # workers one GPU may run; None: as many as its memory holds
    interrupt_grace_s: float = 2.0  # a job still running this long after /interrupt: worker killed
    frame_timeout_s: float = 10.0  # a stream's worker holding a frame this long (and 5x its median): replaced
    worker_max_rss_mb: float | None = (
        None  # --worker-max-rss-mb: a worker above it is replaced between frames
    )
    # --torch-threads: each worker's torch intra-op threads; None: cores / --max-streams, at least 1.
    torch_threads: int | None = None
    # --preload-prompt / --preload-size: prompts every warm worker loads and warms up before a
    # stream takes it (empty: warm workers hold the engine only).
    preload_prompts: list[dict[str, Any]] = field(default_factory=list)
    preload_size: tuple[int, int] = (512, 512)
    gpu_min_free_mib: int = 1024  # free GPU memory a new worker needs (placement's room check)
    # Workers that load the same weights map one copy (workers/shared_weights.py); --no-shared-weights: each its own.
    shared_weights: bool = True
    # --shared-weights-gpu: workers on a GPU share through a holder process per GPU (CUDA IPC;
    # not yet measured on a GPU, so off by default).
    shared_weights_gpu: bool = False
    relay: bool = False  # mount a trickle relay under /trickle/ in the same server
    relay_max_segment_bytes: int = 64 * 1024 * 1024  # --relay-max-segment-mb: larger segments get 413
    relay_max_channel_bytes: int = 256 * 1024 * 1024  # --relay-max-channel-mb: what a channel holds
    log_level: str = "INFO"
    max_inflight: int = 2  # frames inside a worker at once (backpressure)
    # A stream whose input channel its relay does not have waits this long for it, then ends as an
    # error (server.streams.input_check).
    input_wait_s: float = 10.0
    drain_timeout_s: float = 10.0  # after the input ends, how long to wait for frames in flight
    stop_timeout_s: float = 15.0  # per stream, for stopping its tasks and worker
    finished_streams_kept: int = 64  # stopped streams GET /stream/{id} still reports
    ice_servers: list[str] = field(default_factory=list)  # --ice-server URLs (WebRTC); none: host only
    job_workers: int = 1  # --job-workers: spawned workers that run one-shot prompts in parallel
    input_dir: Path | None = None  # LoadImage / uploads; None: the workspace's input/, else ./input
    output_dir: Path | None = (
        None  # SaveImage (temp/ inside it); None: the workspace's output/, else ./output
    )
    job_workers_at_startup: bool = False  # spawn them with the server (serve); else with the first prompt
    # Livepeer worker (README "Running as a Livepeer worker")
    auth_token: str | None = field(default=None, repr=False)  # Bearer token the API requires; None: open
    registration: Any = None  # server.livepeer.registration.CapabilitySettings: register with an orchestrator
    pipeline_name: str = "comfystream"  # the capability's name: /version's model_id, status events' pipeline
    user_dir: Path | None = (
        None  # the editor's settings and saved workflows; None: the workspace's user/, else ./user
    )
    # --allow-origin: browser origins (scheme://host[:port], or *) that may change state besides the
    # server's own (server.http.origin_check).
    allowed_origins: list[str] = field(default_factory=list)
    # --allow-stream-host: hosts (host or host:port) stream URLs may name; empty: any.
    allowed_stream_hosts: list[str] = field(default_factory=list)

    @property
    def custom_node_dirs(self) -> list[Path]:
        """Every folder custom nodes load from: the workspace's `custom_nodes` and `--custom-nodes`."""
        dirs: list[Path] = []
        if self.workspace is not None and (self.workspace / "custom_nodes").is_dir():
            dirs.append(self.workspace / "custom_nodes")
        dirs.extend(self.custom_nodes)
        return dirs


def default_torch_threads(max_streams: int, cores: int | None = None) -> int:
    """Threads per worker when the operator does not say: the cores shared by the streams the
    server may run at once (OpenMP threads of several workers fighting for a core cost more than
    they gain), at least one."""
    import os

    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, max_streams))


def parse_gpus(value: str | None) -> list[int] | None:
    """`--gpus 0,1` -> [0, 1]; empty or None -> None (use what is visible)."""
    if value is None or not value.strip():
        return None
    try:
        gpus = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus: expected a comma-separated list of GPU indices, got {value!r}") from None
    if any(g < 0 for g in gpus):
        raise ValueError(f"--gpus: GPU indices are non-negative, got {value!r}")
    return gpus
