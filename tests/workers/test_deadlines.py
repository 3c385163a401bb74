"""The grace/kill decision: which work has run past its deadline, on a simulated clock."""

from __future__ import annotations

from workers.deadlines import Deadlines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_interrupted_job_is_overdue_after_its_grace_unless_it_ended():
    clock = Clock()
    deadlines = Deadlines(clock)
    assert deadlines.next_in() is None and deadlines.overdue() == []
    deadlines.set(("interrupt", "a"), 2.0)
    deadlines.set(("interrupt", "b"), 2.0)
    clock.now += 1.5
    assert deadlines.overdue() == [] and deadlines.next_in() == 0.5
    deadlines.set(("interrupt", "a"), 2.0)  # interrupted again: the first deadline stands
    deadlines.clear(("interrupt", "b"))  # b stopped by itself within its grace
    clock.now += 0.5
    assert deadlines.overdue() == [("interrupt", "a")]
    assert deadlines.overdue() == [] and ("interrupt", "a") not in deadlines  # reported once


def test_frames_are_reported_oldest_first_and_a_restart_forgets_them():
    clock = Clock()
    deadlines = Deadlines(clock)
    for frame_id in (3, 1, 2):
        deadlines.set(("frame", "c", frame_id), 10.0)
        clock.now += 1.0
    clock.now += 8.5
    assert deadlines.overdue() == [("frame", "c", 3), ("frame", "c", 1)]
    assert deadlines.next_in() == 0.5
    deadlines.clear_all()
    assert deadlines.next_in() is None
