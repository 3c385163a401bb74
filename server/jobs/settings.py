"""The jobs feature's settings, and their key on the application."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from server.config import ServerConfig


@dataclass(frozen=True)
class JobSettings:
    job_workers: int = 1
    input_dir: Path = Path("input")
    output_dir: Path = Path("output")
    sse_heartbeat_s: float = 30.0  # `: heartbeat` comment on every SSE stream this often
    task_ttl_s: float = 300.0  # a finished task answers GET /progress/{taskId} this long, then 404
    task_events_kept: int = 256  # per task, for Last-Event-ID resumes
    history_max: int = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE
    ws_queue_size: int = 10000  # messages waiting for one slow WebSocket client (the oldest go first)
    # Spawn the job workers when the server starts; False: when the first prompt is queued (an app
    # that serves only streams, a test of another feature, never pays for them).
    spawn_at_startup: bool = False
    # An input folder that holds no file (a fresh clone's ./input) gets a sample image, the
    # `example.png` the editor's first workflow and the dashboard's placeholder name.
    sample_image: bool = True

    @property
    def temp_dir(self) -> Path:
        # Where PreviewImage writes when the execution names an output folder (comfystream.nodes.folders).
        return self.output_dir / "temp"

    @classmethod
    def from_config(cls, config: ServerConfig, **overrides: Any) -> JobSettings:
        """Folders: the flags, else the workspace's input/ and output/, else ./input and ./output."""
        base = config.workspace if config.workspace is not None else Path.cwd()
        input_dir = getattr(config, "input_dir", None) or base / "input"
        output_dir = getattr(config, "output_dir", None) or base / "output"
        values: dict[str, Any] = {
            "job_workers": int(getattr(config, "job_workers", 1)),
            "spawn_at_startup": bool(getattr(config, "job_workers_at_startup", False)),
            "input_dir": Path(input_dir).resolve(),
            "output_dir": Path(output_dir).resolve(),
        }
        values.update(overrides)
        return cls(**values)


JOB_SETTINGS_KEY = web.AppKey("job_settings", JobSettings)
# The worker backend job workers are spawned from (a comfystream.pipeline.backend.WorkerBackend);
# default: the app's own, the one its streams' workers come from, so they share GPU placement.
JOB_BACKEND_KEY: web.AppKey[Any] = web.AppKey("job_backend", object)
