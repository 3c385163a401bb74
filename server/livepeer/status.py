"""ai-runner's per-stream status: its states, its `status` event, and the rules that choose the
state (ai-runner `live/process/process_guardian.py`, `_compute_current_state`).

The gateway keeps only `status` events for its stream-status endpoint; one goes out on the
events channel every 10 s (`STATUS_INTERVAL_S`) and `GET /stream/{id}` carries the same body.

`compute_state` is a pure function of what the stream measured and when (the caller passes the
clock); `StreamStatusTracker` turns the stream's stats and events into those measurements;
`StreamStatusMonitor` runs it beside a stream: it polls once a second, reports every 10 s, and
stops a stream whose input has been silent for 60 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LOADING = "LOADING"
OFFLINE = "OFFLINE"
ONLINE = "ONLINE"
DEGRADED_INPUT = "DEGRADED_INPUT"
DEGRADED_INFERENCE = "DEGRADED_INFERENCE"
ERROR = "ERROR"
STATES = (LOADING, OFFLINE, ONLINE, DEGRADED_INPUT, DEGRADED_INFERENCE, ERROR)

STATUS_INTERVAL_S = 10.0
IDLE_STOP_S = 60.0  # no input for this long: the stream is stopped
# Below this the input stutters (ai-runner says 15; but a 10 or 15 fps camera is a normal input).
MIN_INPUT_FPS = 5.0
ERROR_WINDOW_S = 15.0  # an error this recent degrades the inference state
RESTART_WINDOW_S = 60.0  # and a worker restart this recent
STALL_S = 2.0  # no input (output) for this long degrades the input (inference) state
LOAD_GRACE_S = 2.0  # after a (re)load, the first output may take this long before it counts
LOAD_ERROR_S = 30.0  # no output this long after a (re)load: ERROR (ai-runner's comfyui threshold)
OUTPUT_STALL_ERROR_S = 5.0  # no output this long while input flows: ERROR
# With a slow model the load and error windows above are at least this many of its own frame
# times: a model taking 3 s a frame, steadily, is ONLINE.
FRAME_TIMES = 3.0

# Stream events that mean "an error in the inference" and "a worker restart".
ERROR_EVENTS = frozenset({"error", "frame_error", "worker_lost", "worker_failed"})
RESTART_EVENTS = frozenset({"worker_restarted"})


@dataclass
class Measurements:
    """What the state rule looks at; times on one clock (seconds), None = never."""

    now: float
    started_at: float  # the stream's start
    ready_at: float | None  # its worker came up (None: still loading)
    ended: bool = False  # stopped (or stopping): OFFLINE
    failed: bool = False  # ended with an error
    has_input: bool = True  # it has an input channel (a data-only stream has none)
    last_input: float | None = None
    last_output: float | None = None
    input_fps: float | None = None  # None: unknown
    output_fps: float | None = None
    last_params_update: float | None = None
    last_error: float | None = None
    last_restart: float | None = None
    frame_s: float | None = None  # the worker's own time per frame (median); None: unknown


def compute_state(m: Measurements) -> str:
    """ai-runner's rules, for one stream:
    - ended with an error: ERROR; ended: OFFLINE; worker not up yet: LOADING;
    - no input for 60 s: DEGRADED_INPUT (and the stream is stopped, see `idle_too_long`);
    - after a (re)load (worker up, params update) and before its first output: ONLINE for 2 s,
      then DEGRADED_INPUT when no input came either, DEGRADED_INFERENCE, ERROR after 30 s;
    - an output stall while input flows (no output for 5 s and 1 s longer than the input): ERROR;
    - an error in the last 15 s or a restart in the last 60 s: DEGRADED_INFERENCE;
    - input stalled for 2 s or below 5 fps: DEGRADED_INPUT;
    - output stalled for 2 s or below min(10, 0.8 x input fps): DEGRADED_INFERENCE;
    - else ONLINE.
    Output windows are at least the worker's own frame times (2 for the load grace and a stall, 3
    for the load error and the stall error), and the output floor at most 0.8 x its own rate: slow and
    steady is ONLINE."""
    if m.failed:
        return ERROR
    if m.ended:
        return OFFLINE
    if m.ready_at is None:
        return LOADING
    now = m.now
    since_input = now - (m.last_input if m.last_input is not None else m.started_at)
    since_output = now - (m.last_output if m.last_output is not None else float("-inf"))
    load_time = max(m.last_params_update or 0.0, m.ready_at, m.started_at)
    since_load = max(0.0, now - load_time)
    frame_s = m.frame_s or 0.0
    frames = FRAME_TIMES * frame_s
    # Degraded two frame times late, an error three.
    load_grace, load_error = max(LOAD_GRACE_S, 2 * frame_s), max(LOAD_ERROR_S, frames)
    output_stall, output_stall_error = max(STALL_S, 2 * frame_s), max(OUTPUT_STALL_ERROR_S, frames)
    if m.has_input and since_input > IDLE_STOP_S:
        return DEGRADED_INPUT
    if m.last_output is None or m.last_output < load_time:
        if since_load < load_grace:
            return ONLINE
        if m.has_input and (m.last_input is None or m.last_input < load_time):
            return DEGRADED_INPUT
        return DEGRADED_INFERENCE if since_load < load_error else ERROR
    if m.has_input and since_output > since_input + 1 and since_output > output_stall_error:
        return ERROR
    if (m.last_error is not None and now - m.last_error < ERROR_WINDOW_S) or (
        m.last_restart is not None and now - m.last_restart < RESTART_WINDOW_S
    ):
        return DEGRADED_INFERENCE
    if m.has_input and (since_input > STALL_S or (m.input_fps is not None and m.input_fps < MIN_INPUT_FPS)):
        return DEGRADED_INPUT
    if since_output > output_stall:
        return DEGRADED_INFERENCE
    if m.output_fps is not None:
        floor = min(10.0, 0.8 * m.input_fps) if m.input_fps is not None else 10.0
        if m.frame_s:
            floor = min(floor, 0.8 / m.frame_s)
        if m.output_fps < floor:
            return DEGRADED_INFERENCE
    return ONLINE


def idle_too_long(m: Measurements) -> bool:
    """The stream has had no input for `IDLE_STOP_S` (ai-runner stops it)."""
    if not m.has_input or m.ended or m.ready_at is None:
        return False
    last = m.last_input if m.last_input is not None else m.started_at
    return m.now - last > IDLE_STOP_S


def _first(stats: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = stats.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _ms(wall: float | None) -> int | None:
    return int(wall * 1000) if wall is not None else None


class StreamStatusTracker:
    """A stream's measurements, from its stats (polled) and its events (pushed).

    Input and output times come from the stats' `received` and `processed` counters moving; the
    fps from the stream's own meters (`input_fps` / `worker_fps`, else `fps_in` / `fps_out`).
    Times are kept on the monotonic clock (`now`) and reported as wall-clock ms."""

    def __init__(
        self,
        pipeline: str,
        has_input: bool,
        params: dict[str, Any] | None,
        now: float,
        wall: float,
        stream_id: str = "",
    ):
        self.pipeline = pipeline
        self.stream_id = stream_id
        self.has_input = has_input
        self._mono0, self._wall0 = now, wall  # to report monotonic times as wall-clock ms
        self.started_at = now
        self.ready_at: float | None = None
        self.ended = False
        self.failed = False
        self.state = LOADING
        self.last_state_update: float | None = now
        self.last_input: float | None = None
        self.last_output: float | None = None
        self.input_fps: float | None = None
        self.output_fps: float | None = None
        self.last_params: dict[str, Any] | None = params
        self.last_params_update: float | None = None
        self.last_error: float | None = None
        self.last_error_message: str | None = None
        self.last_restart: float | None = None
        self.restart_count = 0
        self._received: int | None = None
        self._processed: int | None = None
        self.frame_s: float | None = None

    # ---- inputs ------------------------------------------------------------------------------

    def observe(self, stats: dict[str, Any], stream_state: str, now: float) -> None:
        received = stats.get("received")
        processed = stats.get("processed")
        if isinstance(received, int) and received != (self._received or 0):
            self.last_input = now
        if isinstance(processed, int) and processed != (self._processed or 0):
            self.last_output = now
        self._received = received if isinstance(received, int) else self._received
        self._processed = processed if isinstance(processed, int) else self._processed
        self.input_fps = _first(stats, "input_fps", "fps_in")
        self.output_fps = _first(stats, "worker_fps", "fps_out")
        worker_ms = _first(stats, "worker_ms_p50")
        self.frame_s = worker_ms / 1000.0 if worker_ms else self.frame_s
        if stream_state == "running" and self.ready_at is None:
            self.ready_at = now
        if stream_state in ("stopping", "stopped", "error"):
            self.ended = True
        if stream_state == "error":
            self.failed = True

    def on_event(self, event_type: str, data: dict[str, Any], now: float) -> None:
        if event_type in ERROR_EVENTS:
            self.last_error = now
            self.last_error_message = str(
                data.get("message") or data.get("error") or data.get("reason") or event_type
            )
        elif event_type in RESTART_EVENTS:
            self.last_restart = now
            self.restart_count += 1

    def params_updated(self, params: dict[str, Any], now: float) -> None:
        self.last_params = params
        self.last_params_update = now

    # ---- outputs -----------------------------------------------------------------------------

    def measurements(self, now: float) -> Measurements:
        return Measurements(
            now=now,
            started_at=self.started_at,
            ready_at=self.ready_at,
            ended=self.ended,
            failed=self.failed,
            has_input=self.has_input,
            last_input=self.last_input,
            last_output=self.last_output,
            input_fps=self.input_fps,
            output_fps=self.output_fps,
            last_params_update=self.last_params_update,
            last_error=self.last_error,
            last_restart=self.last_restart,
            frame_s=self.frame_s,
        )

    def update_state(self, now: float) -> str:
        state = compute_state(self.measurements(now))
        if state != self.state:
            # The normal path (LOADING -> ONLINE -> OFFLINE) is said by the stream's start and stop
            # lines; a stream that turns ERROR or DEGRADED is worth a line of its own.
            level = logging.INFO if state in ("ERROR", "DEGRADED") else logging.DEBUG
            logger.log(level, "stream %s: status %s -> %s", self.stream_id, self.state, state)
            self.state = state
            self.last_state_update = now
        return state

    def _wall(self, mono: float | None) -> int | None:
        return _ms(None if mono is None else self._wall0 + (mono - self._mono0))

    def event(self, now: float) -> dict[str, Any]:
        """ai-runner's `status` event (PipelineStatus.model_dump(), timestamps in ms)."""
        params = self.last_params
        params_hash = (
            hashlib.md5(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
            if params is not None
            else None
        )
        return {
            "type": "status",
            "pipeline": self.pipeline,
            "start_time": self._wall(self.started_at),
            "state": self.state,
            "last_state_update_time": self._wall(self.last_state_update),
            "input_status": {"last_input_time": self._wall(self.last_input), "fps": self.input_fps or 0.0},
            "inference_status": {
                "last_output_time": self._wall(self.last_output),
                "fps": self.output_fps or 0.0,
                "last_params_update_time": self._wall(self.last_params_update),
                "last_params": params,
                "last_params_hash": params_hash,
                "last_error_time": self._wall(self.last_error),
                "last_error": self.last_error_message,
                "last_restart_time": self._wall(self.last_restart),
                "last_restart_logs": None,
                "restart_count": self.restart_count,
            },
            "timestamp": self._wall(now),
        }


class StreamStatusMonitor:
    """Runs a tracker beside one stream: polls its stats every `poll_s`, sends a `status` event to
    the gateway every `interval_s` (through `send`), stops the stream after `IDLE_STOP_S` without
    input. Ends by itself when the stream has ended; `close()` ends it sooner."""

    def __init__(
        self,
        stream: Any,
        send: Callable[[dict[str, Any]], bool | None],
        *,
        pipeline: str = "comfyui",
        interval_s: float = STATUS_INTERVAL_S,
        poll_s: float = 1.0,
    ) -> None:
        self.stream = stream
        self._send = send
        self.interval_s = interval_s
        self.poll_s = poll_s
        spec = stream.spec
        self.tracker = StreamStatusTracker(
            pipeline,
            has_input=bool(getattr(spec, "subscribe_url", None)),
            params=spec.params() or None,
            now=time.monotonic(),
            wall=time.time(),
            stream_id=stream.stream_id,
        )
        self._task: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.stream.add_event_sink(self._on_event)
        self._task = asyncio.create_task(self._run(), name=f"stream-{self.stream.stream_id}-status")

    def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    def _on_event(self, event_type: str, data: dict[str, Any]) -> None:
        self.tracker.on_event(event_type, data, time.monotonic())

    def params_updated(self, params: dict[str, Any]) -> None:
        self.tracker.params_updated(params, time.monotonic())

    def status(self) -> dict[str, Any]:
        """The current `status` body (as the last event, brought up to date)."""
        now = time.monotonic()
        self._poll(now)
        return self.tracker.event(now)

    def _poll(self, now: float) -> None:
        with contextlib.suppress(Exception):  # a stream being torn down may not answer
            self.tracker.observe(self.stream.stats(), self.stream.state, now)
        self.tracker.update_state(now)

    async def _run(self) -> None:
        next_report = time.monotonic()
        while not self.tracker.ended:
            now = time.monotonic()
            self._poll(now)
            if idle_too_long(self.tracker.measurements(now)) and self._stop_task is None:
                logger.info("stream %s: no input for %.0f s: stopping it", self.stream.stream_id, IDLE_STOP_S)
                self._stop_task = asyncio.create_task(
                    self.stream.stop(f"no input for {IDLE_STOP_S:.0f} s", kind="input_idle"),
                    name=f"stream-{self.stream.stream_id}-idle-stop",
                )
            if now >= next_report and self._send(self.tracker.event(now)) is not False:
                next_report = now + self.interval_s  # (not sent: the channel is not open yet)
            await asyncio.sleep(self.poll_s)
