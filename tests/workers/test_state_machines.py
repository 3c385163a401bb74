"""The pure state machines of the worker runtime, on a simulated clock: the grace/kill decision
(which work has run past its deadline) and the restart policy (backoff, give-up, healthy-after)."""

from __future__ import annotations

from workers.deadlines import Deadlines
from workers.supervisor import RestartPolicy


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


def test_restart_policy_backs_off_gives_up_and_forgives_a_healthy_run():
    clock = Clock()
    policy = RestartPolicy(
        backoff_min_s=0.2, backoff_max_s=1.0, max_failures=4, healthy_after_s=30.0, clock=clock
    )
    policy.ready()
    clock.now += 100.0
    policy.lost()  # after a healthy run: at once (a warm worker takes over)
    assert policy.next_delay() == 0.0
    policy.ready()
    clock.now += 1.0
    policy.lost()  # a short run counts as a failure
    assert policy.next_delay() == 0.2
    policy.attempt_failed()
    assert policy.next_delay() == 0.4
    policy.attempt_failed()
    assert policy.next_delay() == 0.8
    policy.attempt_failed()
    assert policy.next_delay() is None  # 4 in a row: give up
    fresh = RestartPolicy(0.2, 1.0, 10, clock=clock)
    for _ in range(6):
        fresh.attempt_failed()
    assert fresh.next_delay() == 1.0  # capped
    fresh.ready()
    clock.now += 30.0
    fresh.lost()
    assert fresh.next_delay() == 0.0  # a healthy run clears the count


def test_restart_policy_without_a_cap_retries_for_ever_at_the_capped_delay():
    clock = Clock()
    policy = RestartPolicy(backoff_min_s=0.2, backoff_max_s=10.0, max_failures=None, clock=clock)
    delays = []
    for _ in range(50):
        policy.attempt_failed()
        delays.append(policy.next_delay())
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6]
    assert delays[-1] == 10.0 and None not in delays
