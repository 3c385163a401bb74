"""The correspondence bookkeeping on its own: ids, drops, in-order output, mismatches."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from comfystream.media.convert import ndarray_to_frame
from comfystream.pipeline.frames import FrameTracker


def _tracker(max_queued: int = 1) -> tuple[FrameTracker, list]:
    out: list = []
    return FrameTracker(out.append, max_queued=max_queued, stream_id="t"), out


def test_oldest_waiting_frame_is_dropped_and_counted():
    tracker, out = _tracker(max_queued=1)
    a = tracker.add("a")
    tracker.start(a)  # in the worker
    tracker.add("b")
    tracker.add("c")  # b was waiting: dropped, c waits now
    assert tracker.counts["dropped"] == 1
    assert tracker.next_waiting().frame == "c"
    assert [e.frame for e in tracker.waiting] == ["c"]
    tracker.complete(a.frame_id, "A")
    assert out == ["A"]


def test_outputs_leave_in_input_order_whatever_the_completion_order():
    tracker, out = _tracker(max_queued=10)
    entries = [tracker.add(i) for i in range(3)]
    for e in entries:
        tracker.start(e)
    tracker.complete(entries[2].frame_id, "out2")
    tracker.fail(entries[1].frame_id, "in1")  # passed through
    assert out == [], "frame 0 is still in flight: nothing may overtake it"
    tracker.complete(entries[0].frame_id, "out0")
    assert out == ["out0", "in1", "out2"]
    assert tracker.counts["processed"] == 2 and tracker.counts["passed_through"] == 1


def test_a_result_without_a_live_frame_is_a_counted_mismatch():
    tracker, out = _tracker()
    e = tracker.add("x")
    tracker.start(e)
    assert tracker.complete(e.frame_id + 7, "ghost") is False
    assert tracker.complete(e.frame_id, "X") is True
    assert tracker.complete(e.frame_id, "again") is False
    assert tracker.counts["mismatched"] == 2 and out == ["X"]


def test_waiting_frames_pass_through_when_no_worker_can_take_them():
    tracker, out = _tracker(max_queued=5)
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
