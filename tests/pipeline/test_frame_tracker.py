"""The correspondence bookkeeping on its own: ids, skips, in-order output, mismatches, stats."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from comfystream.media.convert import ndarray_to_frame
from comfystream.pipeline.frames import FrameTracker
from comfystream.pipeline.scheduling import DEFAULT_MAX_LATENCY_MS


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _tracker(max_queued: int | None = None, **kw) -> tuple[FrameTracker, list]:
    out: list = []
    kw.setdefault("max_latency_ms", DEFAULT_MAX_LATENCY_MS)
    return FrameTracker(out.append, max_queued=max_queued, stream_id="t", **kw), out


def _start_all(tracker: FrameTracker) -> list:
    started = []
    while (entry := tracker.schedule(True)[0]) is not None:
        started.append(entry)
    return started


def test_a_late_frame_is_skipped_unsent_and_the_next_ones_still_leave():
    clock = Clock()
    tracker, out = _tracker(max_inflight=1, max_latency_ms=150, clock=clock)
    first = tracker.add("first", 0.0)
    _start_all(tracker)
    clock.now += 0.01
    tracker.complete(first.frame_id, "FIRST")  # the worker takes 10 ms a frame
    a = tracker.add("a", 1 / 30)
    assert _start_all(tracker) == [a]
    tracker.add("b", 2 / 30)
    clock.now += 0.2  # a stalls the worker for 200 ms: b can no longer make 150 ms
    tracker.complete(a.frame_id, "A")
    c = tracker.add("c", 3 / 30)
    assert _start_all(tracker) == [c], "c can: it goes in"
    tracker.complete(c.frame_id, "C")
    assert out == ["FIRST", "A", "C"], "b is skipped, not sent"
    stats = tracker.stats()
    assert stats["skipped_late"] == 1 and stats["dropped"] == 1 and stats["skipped_overload"] == 0
    assert stats["received"] == 4 and stats["processed"] == 3 and stats["queued"] == 0


def test_max_queued_skips_the_oldest_as_overload():
    tracker, out = _tracker(max_queued=1, max_inflight=1)
    a = tracker.add("a")
    assert _start_all(tracker) == [a]
    tracker.add("b")
    tracker.add("c")  # b was waiting: skipped, c waits now
    assert tracker.counts["skipped_overload"] == 1
    assert [e.frame for e in tracker.waiting.values()] == ["c"]
    tracker.complete(a.frame_id, "A")
    assert out == ["A"]


def test_after_the_first_processed_frame_a_failed_one_is_skipped_not_sent_raw():
    tracker, out = _tracker()
    a, b, c = (tracker.add(x) for x in "abc")
    _start_all(tracker)
    tracker.fail(a.frame_id, "a-raw", error=True)  # before any processed frame: passed through
    tracker.complete(b.frame_id, "B")
    _start_all(tracker)
    tracker.fail(c.frame_id, "c-raw", error=True)  # after one: skipped
    assert out == ["a-raw", "B"]
    assert tracker.counts["skipped_error"] == 1 and tracker.counts["errors"] == 2
    d = tracker.add("d")
    _start_all(tracker)
    tracker.fail(d.frame_id, "d-raw")  # its worker went away (a restart): passed through, counted
    assert out[-1] == "d-raw"
    assert tracker.counts["passed_through"] == 2 and tracker.counts["passed_through_after_start"] == 1


def test_stats_have_the_documented_keys():
    clock = Clock()
    tracker, _ = _tracker(clock=clock)
    for i in range(10):
        e = tracker.add(i, i / 30)
        _start_all(tracker)
        clock.now += 0.01
        tracker.complete(e.frame_id, i)
        tracker.published(e.received)
        clock.now += 1 / 30 - 0.01
    stats = tracker.stats()
    for key in (
        "input_fps",
        "worker_fps",
        "output_fps",
        "skipped_late",
        "skipped_overload",
        "passed_through",
        "skip_ratio",
    ):
        assert key in stats, key
    assert set(stats["latency_ms"]) == {"p50", "p95", "p99"}
    assert abs(stats["latency_ms"]["p50"] - 10.0) < 1e-6
    assert abs(stats["worker_fps"] - 100.0) < 1e-6 and 25 < stats["input_fps"] <= 30
    assert stats["skip_ratio"] == 0.0


def test_outputs_leave_in_input_order_whatever_the_completion_order():
    tracker, out = _tracker(max_inflight=3)
    entries = [tracker.add(i) for i in range(3)]
    assert _start_all(tracker) == entries
    tracker.complete(entries[2].frame_id, "out2")
    tracker.fail(entries[1].frame_id, "in1")  # passed through
    assert out == [], "frame 0 is still in flight: nothing may overtake it"
    tracker.complete(entries[0].frame_id, "out0")
    assert out == ["out0", "in1", "out2"]
    assert tracker.counts["processed"] == 2 and tracker.counts["passed_through"] == 1


def test_a_result_without_a_live_frame_is_a_counted_mismatch():
    tracker, out = _tracker()
    e = tracker.add("x")
    _start_all(tracker)
    assert tracker.complete(e.frame_id + 7, "ghost") is False
    assert tracker.complete(e.frame_id, "X") is True
    assert tracker.complete(e.frame_id, "again") is False
    assert tracker.counts["mismatched"] == 2 and out == ["X"]


def test_waiting_frames_pass_through_when_no_worker_can_take_them():
    tracker, out = _tracker()
    for i in range(3):
        tracker.add(i)
    assert tracker.pass_waiting(lambda f: f * 10) == 3
    assert out == [0, 10, 20] and tracker.counts["passed_through"] == 3
    stats = tracker.stats()
    assert stats["received"] == 3 and stats["queued"] == 0 and stats["inflight"] == 0


def test_ndarray_to_frame_copies_pixels_and_timing():
    template = av.VideoFrame(8, 8, "rgb24")
    template.pts, template.time_base = 42, Fraction(1, 90000)
    for width, height in ((512, 512), (130, 96), (17, 5)):  # padded and unpadded line sizes
        rgb = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = rgb.copy()
        frame = ndarray_to_frame(rgb, template)
        rgb[...] = 0  # the frame holds its own copy
        np.testing.assert_array_equal(frame.to_ndarray(), expected)
        assert (frame.pts, frame.time_base) == (42, Fraction(1, 90000))
