"""Frame correspondence: ids, the frames in flight, drops, in-order output, and the stream's stats.

Every input frame gets a `frame_id` (monotonic per stream) and keeps its `pts`/`time_base`.
An output is paired with its input by id, never by queue position; outputs leave in id order
(a frame finished early waits for the ones before it), and a result with no live entry is
counted as `mismatched` (a bug) and dropped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

WAITING, INFLIGHT, DONE = 0, 1, 2


@dataclass(slots=True)
class FrameEntry:
    frame_id: int
    frame: Any  # the input av.VideoFrame (its pts / time_base, and the frame itself for pass-through)
    received: float
    state: int = WAITING
    output: Any = None
    owner: Any = None  # which worker holds it while in flight


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


class FrameTracker:
    """The frames of one stream between `put` and output."""

    def __init__(self, emit: Callable[[Any], None], max_queued: int = 1, stream_id: str = ""):
        if max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.emit = emit
        self.max_queued = max_queued
        self.stream_id = stream_id
        self.next_id = 0
        self.entries: OrderedDict[int, FrameEntry] = OrderedDict()  # not yet emitted, id order
        self.waiting: deque[FrameEntry] = deque()
        self.inflight: dict[int, FrameEntry] = {}
        self.counts = {
            "received": 0,
            "processed": 0,
            "dropped": 0,
            "passed_through": 0,
            "mismatched": 0,
            "errors": 0,
        }
        self.fps_in = RateMeter()
        self.fps_out = RateMeter()
        self.latencies_ms: deque[float] = deque(maxlen=1000)

    # -- input side ----------------------------------------------------------------------------

    def add(self, frame: Any) -> FrameEntry:
        now = time.monotonic()
        entry = FrameEntry(self.next_id, frame, now)
        self.next_id += 1
        self.counts["received"] += 1
        self.fps_in.tick(now)
        self.entries[entry.frame_id] = entry
        self.waiting.append(entry)
        while len(self.waiting) > self.max_queued:
            # The worker is behind: drop the oldest waiting frame, so latency stays bounded.
            old = self.waiting.popleft()
            del self.entries[old.frame_id]
            self.counts["dropped"] += 1
        self._flush()
        return entry

    def next_waiting(self) -> FrameEntry | None:
        return self.waiting[0] if self.waiting else None

    def start(self, entry: FrameEntry, owner: Any = None) -> None:
        """`entry` (the oldest waiting) goes into a worker."""
        if not self.waiting or self.waiting[0] is not entry:
            raise RuntimeError("only the oldest waiting frame can start")
        self.waiting.popleft()
        entry.state = INFLIGHT
        entry.owner = owner
        self.inflight[entry.frame_id] = entry

    # -- output side ---------------------------------------------------------------------------

    def complete(self, frame_id: int, output: Any) -> bool:
        """The processed frame for `frame_id`; False (and counted) when no such frame is in flight."""
        entry = self.inflight.pop(frame_id, None)
        if entry is None:
            self.counts["mismatched"] += 1
            logger.error("stream %s: output for frame %d, which is not in flight", self.stream_id, frame_id)
            return False
        entry.state = DONE
        entry.output = output
        self.counts["processed"] += 1
        self.latencies_ms.append((time.monotonic() - entry.received) * 1000.0)
        self._flush()
        return True

    def in_flight(self, frame_id: int) -> FrameEntry | None:
        return self.inflight.get(frame_id)

    def fail(self, frame_id: int, output: Any, error: bool = False) -> bool:
        """Frame `frame_id` leaves unprocessed (`output` is what goes out instead)."""
        entry = self.inflight.pop(frame_id, None)
        if entry is None:
            self.counts["mismatched"] += 1
            logger.error("stream %s: failure for frame %d, which is not in flight", self.stream_id, frame_id)
            return False
        self._pass(entry, output, error)
        return True

    def pass_waiting(self, convert: Callable[[Any], Any]) -> int:
        """Every waiting frame leaves unprocessed (no worker to take them)."""
        n = 0
        while self.waiting:
            entry = self.waiting.popleft()
            self._pass(entry, convert(entry.frame), False)
            n += 1
        return n

    def _pass(self, entry: FrameEntry, output: Any, error: bool) -> None:
        entry.state = DONE
        entry.output = output
        self.counts["passed_through"] += 1
        if error:
            self.counts["errors"] += 1
        self._flush()

    def _flush(self) -> None:
        """Emit finished frames from the head while the head is finished (id order)."""
        entries = self.entries
        while entries:
            frame_id, entry = next(iter(entries.items()))
            if entry.state != DONE:
                return
            del entries[frame_id]
            self.fps_out.tick(time.monotonic())
            self.emit(entry.output)

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        lat = np.fromiter(self.latencies_ms, dtype=np.float64)
        out: dict[str, Any] = dict(self.counts)
        out.update(
            {
                "inflight": len(self.inflight),
                "queued": len(self.waiting),
                "fps_in": round(self.fps_in.rate(now), 2),
                "fps_out": round(self.fps_out.rate(now), 2),
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 3) if lat.size else None,
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 3) if lat.size else None,
            }
        )
        return out
