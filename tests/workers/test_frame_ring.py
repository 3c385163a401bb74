"""The shared-memory frame ring: geometry, slot ownership, data both ways, unlink on close."""

from __future__ import annotations

import os

import numpy as np
import pytest

from workers.ring import SEGMENT_PREFIX, FrameRing, RingError


def _segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX)}


def test_ring_carries_frames_both_ways_between_owner_and_attached_view(no_leaks):
    with FrameRing.create(slots=2, width=64, height=48) as ring:
        assert ring.name in _segments()
        peer = FrameRing.attach(ring.name, 2, 64, 48)  # what the worker does
        try:
            frame = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            slot = ring.acquire()
            ring.write_input(slot, frame)
            np.testing.assert_array_equal(peer.input(slot), frame)
            peer.output(slot)[...] = 255 - peer.input(slot)
            np.testing.assert_array_equal(ring.output(slot), 255 - frame)
            # A smaller output shares the slot's bytes.
            peer.output(slot, (10, 20, 3))[...] = 7
            assert ring.output(slot, (10, 20, 3)).shape == (10, 20, 3)
            assert (ring.output(slot, (10, 20, 3)) == 7).all()
        finally:
            peer.close()
        assert ring.name in _segments(), "only the owner unlinks"
    assert ring.name not in _segments()


def test_slot_ownership_is_enforced():
    with FrameRing.create(slots=2, width=16, height=16) as ring:
        a, b = ring.acquire(), ring.acquire()
        assert {a, b} == {0, 1}
        assert ring.acquire() is None and ring.free_slots() == 0
        ring.release(a)
        with pytest.raises(RingError):
            ring.release(a)
        with pytest.raises(RingError):
            ring.release(5)
        ring.release_all()
        assert ring.free_slots() == 2


def test_bad_frames_and_geometry_are_refused():
    with pytest.raises(RingError):
        FrameRing.create(slots=0, width=16, height=16)
    with FrameRing.create(slots=1, width=16, height=16) as ring:
        with pytest.raises(RingError):
            ring.write_input(0, np.zeros((8, 16, 3), np.uint8))
        with pytest.raises(RingError):
            ring.output(0, (32, 32, 3))
        with pytest.raises(RingError):  # attaching with a larger geometry than the segment holds
            FrameRing.attach(ring.name, 4, 16, 16)
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(ring.name, 1, 16, 16)
