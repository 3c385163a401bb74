"""pytrickle's `max_framerate` and `detect_out_resolution` params, for a trickle stream.

`FrameRateLimiter` admits at most `max_fps` frames per second of the input's own time (its pts),
spread evenly: 30 fps in, 15 fps out is every other frame, never a burst followed by a gap.
"""

from __future__ import annotations

import time

import av

from comfystream.media.convert import SWS_THREADS


class FrameRateLimiter:
    """A pure rule over frame times (seconds); `admit(t)` says whether the frame at `t` goes on."""

    def __init__(self, max_fps: float) -> None:
        if max_fps <= 0:
            raise ValueError("max_fps must be positive")
        self.max_fps = max_fps
        self.interval = 1.0 / max_fps
        self._slack = self.interval / 4  # pts jitter must not drop a frame that is on time
        self._next: float | None = None

    def admit(self, t: float) -> bool:
        nxt = self._next
        if nxt is not None and t < nxt - self._slack and nxt - t <= 1.0 + self.interval:
            return False  # too soon (a time far behind is a new clock: it starts a new grid)
        # keep the grid (even spacing) unless the input jumped ahead or back
        on_grid = nxt is not None and 0 <= t - nxt + self._slack <= self.interval
        self._next = (nxt if on_grid and nxt is not None else t) + self.interval
        return True


def frame_time(frame: av.VideoFrame) -> float:
    """The frame's time in seconds from its pts, or the wall clock when it has none."""
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return time.monotonic()


def fixed_size(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    """`frame` at `width` x `height` (its pts and time base kept); the frame itself when it is."""
    if (frame.width, frame.height) == (width, height):
        return frame
    out = frame.reformat(width=width, height=height, threads=SWS_THREADS)
    out.pts, out.time_base = frame.pts, frame.time_base
    return out
