"""The index test pattern survives H.264 at small sizes and an invert; junk is refused."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from comfystream.media import (
    PatternError,
    SegmentDecoder,
    SegmentEncoder,
    frame_to_ndarray,
    make_index_frame,
    ndarray_to_frame,
    read_index,
)
from comfystream.media.testpattern import MAX_INDEX


@pytest.mark.parametrize("index", [0, 1, 2, 255, 256, 4097, 123456, MAX_INDEX])
def test_exact_round_trip(index):
    img = make_index_frame(index, 64, 40)
    assert img.shape == (40, 64, 3) and img.dtype == np.uint8
    assert read_index(img) == index
    assert read_index(255 - img, inverted=True) == index
    assert read_index(img.astype(np.float32) / 255.0) == index  # a 0..1 IMAGE works too
    assert read_index((img.astype(np.float32) / 255.0)[None]) == index  # and [1,H,W,3]


def test_wrong_inversion_and_junk_are_refused():
    img = make_index_frame(77, 128, 80)
    with pytest.raises(PatternError):
        read_index(255 - img)  # inverted, read as if not
    with pytest.raises(PatternError):
        read_index(img, inverted=True)
    with pytest.raises(PatternError):
        read_index(np.full((80, 128, 3), 128, np.uint8))
    rng = np.random.default_rng(0)
    with pytest.raises(PatternError):
        read_index(rng.integers(0, 256, (80, 128, 3), dtype=np.uint8))
    with pytest.raises(PatternError):
        read_index(np.zeros((80, 128), np.uint8))


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_index_frame(-1, 64, 64)
    with pytest.raises(ValueError):
        make_index_frame(MAX_INDEX + 1, 64, 64)
    with pytest.raises(ValueError):
        make_index_frame(1, 8, 8)


def test_survives_h264_scaling_and_invert():
    width, height = 96, 64  # small frames: the hardest case for a codec
    indices = [0, 1, 2, 3, 1000, 65535, 300000, MAX_INDEX]
    frames = []
    for pts, index in enumerate(indices):
        frame = ndarray_to_frame(make_index_frame(index, width, height))
        frame.pts, frame.time_base = pts, Fraction(1, 30)
        frames.append(frame)
    segments = SegmentEncoder(width, height, crf=35).encode_all(frames)  # low quality on purpose
    decoded = [f for s in segments for f in SegmentDecoder().decode_segment(s)]
    assert [read_index(frame_to_ndarray(f)) for f in decoded] == indices
    assert [read_index(frame_to_ndarray(f, 48, 32)) for f in decoded] == indices  # scaled down
    assert [read_index(255 - frame_to_ndarray(f), inverted=True) for f in decoded] == indices
