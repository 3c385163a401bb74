"""Which waiting frame goes into the worker next, and which are skipped: the scheduling policy of
one stream, as a pure state machine (no I/O, no clock: every call is given the time).

Two regimes, chosen from the worker's measured per-frame time `service_s` against the input's
frame interval `interval_s` (from the frames' pts, so a burst of frames that arrive together is
not mistaken for a faster input):

- The worker keeps up (`service_s` below the interval): frames go in oldest first, up to
  `max_inflight` at once so that transport overlaps compute. A frame is skipped only when it
  could not come out within the latency budget (`max_latency_ms`, from its arrival): a burst the
  worker can absorb within the budget loses nothing.
- Overload (`service_s` above the interval): frames are chosen evenly in media time, one per
  `service_s` of pts (a Bresenham walk: with a worker at 2/3 of the input rate, two of every
  three frames go in and never two in a row are skipped), and each is handed over just before the
  worker finishes the one it has, so that the chosen frame is the freshest and waits in no queue.
  A frame that has waited longer than a frame interval while a fresher one arrived is skipped
  too (the worker fell behind): latency stays near the worker's own time instead of growing to
  the budget. Overload is declared on a full window of measurements (one slow frame is not one).

In both regimes the worker is never left idle while a frame that can still be on time waits: when
the frame the walk wants has not arrived yet, the newest waiting frame goes in instead; and an idle
worker always gets a frame, even when the estimate says every waiting one is late (a stale
estimate must not starve the stream). Without a budget (`max_latency_ms` None) nothing is skipped.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

DEFAULT_MAX_LATENCY_MS = 500.0

_SERVICE_SAMPLES = 9  # the worker's time per frame is the median of its last 9 frames:
_MIN_SAMPLES_FOR_OVERLOAD = 9  # a few slow frames (a cold start, a hiccup) are not an overload
_INTERVAL_ALPHA = 0.1
_ENTER_OVERLOAD = 1.02  # service / interval above which frames are chosen by the walk...
_LEAVE_OVERLOAD = 0.95  # ...and below which they go in oldest first again (hysteresis)
_MIN_LEAD_S = 0.005  # under overload a frame is handed over this long before the worker needs it,
# or longer: twice the delay the round trip through the server has been adding (a busy loop
# answers late, and a worker left waiting for its next frame loses rate), up to half a frame time
_EPSILON_S = 1e-6  # a wake-up time this close counts as now (no endless wake-ups at float noise)


@dataclass(slots=True)
class Waiting:
    frame_id: int
    arrival: float  # when the frame reached the pipeline (the caller's clock)
    pts: float  # its media time in seconds (the arrival when the frame has none)


@dataclass(slots=True)
class Decision:
    """What to do now: `submit` (a frame id, or None) goes into the worker; the skipped frames are
    not sent; call `decide` again at `wake_at` (None: at the next arrival or completion)."""

    submit: int | None = None
    skipped_late: list[int] = field(default_factory=list)
    skipped_overload: list[int] = field(default_factory=list)
    wake_at: float | None = None


class FrameScheduler:
    def __init__(
        self,
        max_inflight: int,
        max_latency_ms: float | None,
        max_waiting: int | None = None,
    ):
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        if max_waiting is not None and max_waiting < 1:
            raise ValueError("max_waiting must be >= 1")
        self.max_inflight = max_inflight
        self.max_latency_ms = max_latency_ms  # None: no frame is ever skipped, however late
        self.max_waiting = max_waiting
        self.waiting: deque[Waiting] = deque()
        self.inflight: dict[int, float] = {}  # frame id -> when it went in (insertion = worker order)
        self.service_s: float | None = None  # the worker's time per frame, measured
        self._samples: deque[float] = deque(maxlen=_SERVICE_SAMPLES)
        self._delays: deque[float] = deque(maxlen=_SERVICE_SAMPLES)  # round trip beyond the work
        self.interval_s: float | None = None  # the input's frame interval (media time), measured
        self.overloaded = False
        self._last_done: float | None = None  # when the worker last finished a frame
        self._last_pts: float | None = None
        self._target: float | None = None  # the pts the walk wants next

    # -- events ----------------------------------------------------------------------------------

    def arrive(self, frame_id: int, now: float, pts: float | None = None) -> list[int]:
        """A new frame waits; returns the ids skipped because more than `max_waiting` wait.

        Without a `pts` the input's rate is unknown (arrival times would take a burst for a fast
        input): such frames go in oldest first, skipped only when late."""
        if pts is None:
            self.waiting.append(Waiting(frame_id, now, now))
            return self._bound_waiting()
        if self._last_pts is not None:
            delta = pts - self._last_pts
            if 0 < delta <= 1.0:  # (a jump in pts is a discontinuity, not an interval)
                self.interval_s = (
                    delta
                    if self.interval_s is None
                    else self.interval_s + _INTERVAL_ALPHA * (delta - self.interval_s)
                )
        self._last_pts = pts
        self.waiting.append(Waiting(frame_id, now, pts))
        self._update_regime()  # (a seeded worker time meets the input's rate at its first frames)
        return self._bound_waiting()

    def _bound_waiting(self) -> list[int]:
        dropped = []
        while self.max_waiting is not None and len(self.waiting) > self.max_waiting:
            dropped.append(self.waiting.popleft().frame_id)
        return dropped

    def seed(self, service_s: float) -> None:
        """The worker's time per frame as its warmup measured it, before any frame of the stream
        has gone through (or for a new prompt): taken as a full window of samples, so that the
        first frames are scheduled as the steady state will be (overload recognised from frame 0,
        no frames queued behind a worker that cannot keep up) and real samples replace it within
        a few frames."""
        if service_s <= 0:
            return
        self._samples.clear()
        self._samples.extend([service_s] * _SERVICE_SAMPLES)
        self.service_s = service_s
        self._update_regime()

    def submitted(self, frame_id: int, now: float) -> None:
        self.inflight[frame_id] = now

    def completed(self, frame_id: int, now: float, work_s: float | None = None) -> None:
        """The worker returned `frame_id` (processed or failed): one sample of its time per frame.
        `work_s`: what the worker itself spent on it, when known (the rest is the round trip)."""
        submitted = self.inflight.pop(frame_id, None)
        if submitted is None:
            return
        started = submitted if self._last_done is None else max(submitted, self._last_done)
        self._samples.append(max(now - started, 0.0))
        if work_s is not None and submitted >= (self._last_done or float("-inf")):
            self._delays.append(max(now - submitted - work_s, 0.0))
        self.service_s = statistics.median(self._samples)
        self._last_done = now
        self._update_regime()

    def lost(self, frame_id: int) -> None:
        """`frame_id` left the worker without a result (its process went): no time sample."""
        self.inflight.pop(frame_id, None)

    def take_waiting(self) -> list[int]:
        """Every waiting frame leaves (no worker to take them: the caller passes them through)."""
        ids = [w.frame_id for w in self.waiting]
        self.waiting.clear()
        return ids

    # -- the decision ----------------------------------------------------------------------------

    @property
    def worker_fps(self) -> float | None:
        return 1.0 / self.service_s if self.service_s else None

    def decide(self, now: float, room: bool) -> Decision:
        """`room`: the worker can take a frame now. At most one frame is submitted per call;
        call again after submitting it."""
        decision = Decision()
        service = self.service_s or 0.0
        busy_until = self._busy_until(now, service)
        # An idle worker always gets a frame: the estimate that makes every waiting frame late may
        # be stale (a cold start, a hiccup), and only frames that go in can correct it.
        keep = 1 if room and not self.inflight else 0
        self._skip_late(now, max(now, busy_until) + service, decision, keep)
        if not self.waiting:
            return decision
        if not self.overloaded or self.max_latency_ms is None:
            if room and len(self.inflight) < self.max_inflight:
                chosen = self.waiting.popleft()
                decision.submit = chosen.frame_id
                self._target = chosen.pts + service
            return decision
        # Overload: hand a frame over only as the worker is about to need it, so that it is the
        # freshest one and does not queue behind the frame being processed.
        lead = self._lead(service)
        if self.inflight and busy_until - lead > now + _EPSILON_S:
            decision.wake_at = busy_until - lead
            return decision
        if not room or len(self.inflight) >= self.max_inflight:
            return decision
        self._skip_stale(now, service, decision)
        interval = self.interval_s or service
        target = self._target
        waiting = list(self.waiting)
        if target is not None and waiting[-1].pts < target - 4 * service - 1.0:
            target = None  # the pts went back (a new publisher): start the walk afresh
        chosen_at = len(waiting) - 1  # the newest: the worker must not wait for a frame
        if target is not None:
            for i, w in enumerate(waiting):
                if w.pts >= target - interval / 2:
                    chosen_at = i
                    break
            else:
                if self.inflight and busy_until > now + _EPSILON_S:
                    # The frame the walk wants may still arrive before the worker is free.
                    decision.wake_at = busy_until
                    return decision
        for _ in range(chosen_at):
            decision.skipped_overload.append(self.waiting.popleft().frame_id)
        chosen = self.waiting.popleft()
        decision.submit = chosen.frame_id
        if target is None or chosen.pts > target + interval / 2:
            self._target = chosen.pts + service  # the walk restarts from the frame chosen
        else:
            self._target = target + service
        return decision

    # -- helpers ---------------------------------------------------------------------------------

    def _lead(self, service: float) -> float:
        delay = statistics.median(self._delays) if self._delays else 0.0
        return min(max(_MIN_LEAD_S, 2.0 * delay), service / 2.0)

    def _busy_until(self, now: float, service: float) -> float:
        """When the worker is expected to have finished every frame it holds."""
        end = self._last_done if self._last_done is not None else float("-inf")
        for submitted in self.inflight.values():
            end = max(submitted, end) + service
        return max(end, now) if self.inflight else now

    def _skip_late(self, now: float, done_at: float, decision: Decision, keep: int = 0) -> None:
        """Frames that could not come out within the budget even if they went in now (but the
        newest `keep`)."""
        if self.max_latency_ms is None:
            return
        while len(self.waiting) > keep and done_at - self.waiting[0].arrival > self.max_latency_ms / 1000.0:
            decision.skipped_late.append(self.waiting.popleft().frame_id)

    def _skip_stale(self, now: float, service: float, decision: Decision) -> None:
        """Under overload: a frame that has waited more than a worker period (and a frame
        interval) while a fresher one arrived is history: the worker fell behind it."""
        interval = self.interval_s or service
        newest = self.waiting[-1].arrival
        limit = interval
        while (
            len(self.waiting) > 1
            and now - self.waiting[0].arrival > limit
            and newest - self.waiting[0].arrival > interval / 2
        ):
            decision.skipped_overload.append(self.waiting.popleft().frame_id)

    def _update_regime(self) -> None:
        if self.service_s is None or not self.interval_s or self.max_latency_ms is None:
            return  # (without a budget nothing is ever skipped: frames wait their turn)
        if len(self._samples) < _MIN_SAMPLES_FOR_OVERLOAD:
            return
        ratio = self.service_s / self.interval_s
        if self.overloaded and ratio < _LEAVE_OVERLOAD:
            self.overloaded = False
        elif not self.overloaded and ratio > _ENTER_OVERLOAD:
            self.overloaded = True
