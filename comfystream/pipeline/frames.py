"""Frame correspondence: ids, the frames in flight, skips, in-order output, and the stream's stats.

Every input frame gets a `frame_id` (monotonic per stream) and keeps its `pts`/`time_base`.
An output is paired with its input by id, never by queue position; outputs leave in id order
(a frame finished early waits for the ones before it), and a result with no live entry is
counted as `mismatched` (a bug) and dropped. Which waiting frame goes into the worker, and which
are skipped, is the scheduler's decision (`scheduling.FrameScheduler`); a skipped frame is never
sent. After the first processed frame, nothing unprocessed goes out but frames passed through
while no worker can take them (a worker restart).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from comfystream.pipeline.scheduling import Decision, FrameScheduler

logger = logging.getLogger(__name__)

WAITING, INFLIGHT, DONE = 0, 1, 2
# What `dropped` sums: every cause a frame of the input does not come out for.
DROP_CAUSES = ("skipped_late", "skipped_overload", "skipped_error", "lost_input", "lost_decode", "lost_output")


@dataclass(slots=True)
class FrameEntry:
    frame_id: int
    frame: Any  # the input av.VideoFrame (its pts / time_base, and the frame itself for pass-through)
    received: float
    state: int = WAITING
    output: Any = None
    owner: Any = None  # which worker holds it while in flight
    pts_s: float | None = None  # media time in seconds, when the frame has a pts and time base


class RateMeter:
    """Events per second over the last `window_s` seconds."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0


def _discard(_output: Any) -> None:
    pass


class FrameTracker:
    """The frames of one stream between `add` and output.

    `clock` is only read here, never in the scheduler: tests drive both with a simulated one."""

    def __init__(
        self,
        emit: Callable[[Any], None],
        *,
        max_inflight: int = 2,
        max_latency_ms: float | None,
        max_queued: int | None = None,
        stream_id: str = "",
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_queued is not None and max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.emit = emit
        self.stream_id = stream_id
        self.clock = clock
        self.scheduler = FrameScheduler(max_inflight, max_latency_ms, max_queued)
        self.next_id = 0
        self.entries: OrderedDict[int, FrameEntry] = OrderedDict()  # not yet emitted, id order
        self.waiting: dict[int, FrameEntry] = {}
        self.inflight: dict[int, FrameEntry] = {}
        self.first_processed_id: int | None = None  # from then on no unprocessed frame goes out...
        self.counts = {
            "received": 0,
            "processed": 0,
            "skipped_late": 0,
            "skipped_overload": 0,
            "skipped_error": 0,  # ...a frame the workflow failed on is skipped, not sent raw
            "passed_through": 0,  # ...but while no worker can take frames (a restart)
            "passed_through_after_start": 0,
            # frames that never reached the scheduler, or left it and were lost after (`lost`)
            "lost_input": 0,  # the input channel jumped ahead (segments gone before we read them)
            "lost_decode": 0,  # damaged or undecodable input
            "lost_output": 0,  # the output queue was full (nobody reading fast enough)
            "mismatched": 0,
            "errors": 0,
        }
        self._abandoned: set[int] = set()
        self.fps_in = RateMeter()
        self.fps_out = RateMeter()
        self.skips = RateMeter()
        self.latencies_ms: deque[float] = deque(maxlen=1000)  # ingest -> publish (see `published`)

    @property
    def max_latency_ms(self) -> float | None:
        return self.scheduler.max_latency_ms

    @max_latency_ms.setter
    def max_latency_ms(self, value: float | None) -> None:
        if value is not None and value <= 0:
            raise ValueError("max_latency_ms must be > 0")
        self.scheduler.max_latency_ms = None if value is None else float(value)

    # -- input side ----------------------------------------------------------------------------

    def add(self, frame: Any, pts_s: float | None = None) -> FrameEntry:
        now = self.clock()
        entry = FrameEntry(self.next_id, frame, now, pts_s=pts_s)
        self.next_id += 1
        self.counts["received"] += 1
        self.fps_in.tick(now)
        self.entries[entry.frame_id] = entry
        self.waiting[entry.frame_id] = entry
        self._skip(self.scheduler.arrive(entry.frame_id, now, pts_s), "skipped_overload", now)
        return entry

    def schedule(self, room: bool) -> tuple[FrameEntry | None, float | None]:
        """Apply the scheduler's decision now: skipped frames leave (unsent); returns the frame to
        submit (already marked in flight; None when none should go in now) and when to ask again."""
        now = self.clock()
        decision: Decision = self.scheduler.decide(now, room)
        self._skip(decision.skipped_late, "skipped_late", now)
        self._skip(decision.skipped_overload, "skipped_overload", now)
        if decision.submit is None:
            return None, decision.wake_at
        entry = self.waiting.pop(decision.submit)
        entry.state = INFLIGHT
        self.inflight[entry.frame_id] = entry
        self.scheduler.submitted(entry.frame_id, now)
        return entry, decision.wake_at

    def _skip(self, frame_ids: list[int], reason: str, now: float) -> None:
        for frame_id in frame_ids:
            self.waiting.pop(frame_id, None)
            self.entries.pop(frame_id, None)
            self.counts[reason] += 1
            self.skips.tick(now)
        if frame_ids:
            self._flush()  # the frames after a skipped one may be finished already

    # -- output side ---------------------------------------------------------------------------

    def complete(self, frame_id: int, output: Any, work_s: float | None = None) -> bool:
        """The processed frame for `frame_id`; False (and counted) when no such frame is in flight."""
        entry = self.inflight.pop(frame_id, None)
        if entry is None:
            self.counts["mismatched"] += 1
            logger.error("stream %s: output for frame %d, which is not in flight", self.stream_id, frame_id)
            return False
        self.scheduler.completed(frame_id, self.clock(), work_s)
        entry.state = DONE
        entry.output = output
        self.counts["processed"] += 1
        if self.first_processed_id is None:
            self.first_processed_id = frame_id
        self._flush()
        return True

    def in_flight(self, frame_id: int) -> FrameEntry | None:
        return self.inflight.get(frame_id)

    def abandon(self, convert: Callable[[Any], Any]) -> int:
        """The worker holds its frames far longer than it should (stalled): they leave now,
        passed through, so that the frames after them are not held back; their results, if they
        ever come, are let go (`was_abandoned`), not counted as mismatches."""
        n = 0
        for frame_id in list(self.inflight):
            entry = self.inflight.pop(frame_id)
            self.scheduler.lost(frame_id)
            self._abandoned.add(frame_id)
            self._pass(entry, convert(entry.frame))
            n += 1
        return n

    def was_abandoned(self, frame_id: int) -> bool:
        """Whether `frame_id` left by `abandon` (forgotten once asked: a result comes once)."""
        if frame_id in self._abandoned:
            self._abandoned.discard(frame_id)
            return True
        return False

    def fail(self, frame_id: int, output: Any, error: bool = False) -> bool:
        """Frame `frame_id` came back unprocessed. A workflow error (`error`) skips it once the
        stream has shown processed frames (a raw frame among processed ones is worse than a
        missing one); before that, and when its worker went away (`error` False: a restart), it
        leaves as `output`, passed through."""
        entry = self.inflight.pop(frame_id, None)
        if entry is None:
            self.counts["mismatched"] += 1
            logger.error("stream %s: failure for frame %d, which is not in flight", self.stream_id, frame_id)
            return False
        now = self.clock()
        if error:
            self.counts["errors"] += 1
            self.scheduler.completed(frame_id, now)
            if self.first_processed_id is not None:
                self.entries.pop(frame_id, None)
                self.counts["skipped_error"] += 1
                self.skips.tick(now)
                self._flush()
                return True
        else:
            self.scheduler.lost(frame_id)
        self._pass(entry, output)
        return True

    def lost(self, cause: str, frames: int = 1) -> None:
        """`frames` frames of the stream did not come out for `cause` ("input", "decode",
        "output"): counted in `dropped` and `skip_ratio` with the scheduler's skips."""
        key = f"lost_{cause}"
        if key not in self.counts or frames <= 0:
            raise ValueError(f"bad loss {cause!r} x {frames}")
        self.counts[key] += frames
        now = self.clock()
        for _ in range(frames):
            self.skips.tick(now)

    def pass_waiting(self, convert: Callable[[Any], Any]) -> int:
        """Every waiting frame leaves unprocessed (no worker to take them)."""
        n = 0
        for frame_id in self.scheduler.take_waiting():
            entry = self.waiting.pop(frame_id)
            self._pass(entry, convert(entry.frame))
            n += 1
        return n

    def _pass(self, entry: FrameEntry, output: Any) -> None:
        entry.state = DONE
        entry.output = output
        self.counts["passed_through"] += 1
        if self.first_processed_id is not None:
            self.counts["passed_through_after_start"] += 1
        self._flush()

    def _flush(self) -> None:
        """Emit finished frames from the head while the head is finished (id order)."""
        entries = self.entries
        while entries:
            frame_id, entry = next(iter(entries.items()))
            if entry.state != DONE:
                return
            del entries[frame_id]
            self.fps_out.tick(self.clock())
            self.emit(entry.output)

    def release(self) -> None:
        """The pipeline has stopped: every frame still held is let go now (decoded frames are large,
        and the pipeline that owns this tracker may wait for a garbage collection to be freed, as
        `emit` refers back to it). Counts and stats stay; nothing is emitted from here on."""
        self.entries.clear()
        self.waiting.clear()
        self.inflight.clear()
        self.emit = _discard

    def published(self, ingest_time: float) -> None:
        """A frame that entered at `ingest_time` (this tracker's clock) has been published."""
        self.latencies_ms.append((self.clock() - ingest_time) * 1000.0)

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        lat = np.fromiter(self.latencies_ms, dtype=np.float64)
        counts = self.counts
        out: dict[str, Any] = dict(counts)
        # `dropped`: every frame not sent, whatever the reason (the total the older API reported).
        out["dropped"] = sum(counts[k] for k in DROP_CAUSES)
        input_fps = self.fps_in.rate(now)
        worker_fps = self.scheduler.worker_fps
        quantiles = (
            {f"p{q}": round(float(v), 3) for q, v in zip((50, 95, 99), np.percentile(lat, (50, 95, 99)), strict=True)}
            if lat.size
            else {"p50": None, "p95": None, "p99": None}
        )
        out.update(
            {
                "inflight": len(self.inflight),
                "queued": len(self.waiting),
                "input_fps": round(input_fps, 2),
                "worker_fps": round(worker_fps, 2) if worker_fps is not None else None,
                "output_fps": round(self.fps_out.rate(now), 2),
                "skip_ratio": round(min(self.skips.rate(now) / input_fps, 1.0), 4) if input_fps else 0.0,
                "overloaded": self.scheduler.overloaded,
                "max_latency_ms": self.max_latency_ms,
                "latency_ms": quantiles,
                # the names earlier versions reported
                "fps_in": round(input_fps, 2),
                "fps_out": round(self.fps_out.rate(now), 2),
                "latency_ms_p50": quantiles["p50"],
                "latency_ms_p99": quantiles["p99"],
            }
        )
        return out
