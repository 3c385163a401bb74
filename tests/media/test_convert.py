"""av.VideoFrame <-> IMAGE tensor: shape, range, crop/scale, timestamps, bad input."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from comfystream.media import frame_to_ndarray, frame_to_tensor, ndarray_to_frame, tensor_to_frame


def rgb_frame(arr: np.ndarray, pts: int = 7, time_base: Fraction = Fraction(1, 90000)) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
    frame.pts, frame.time_base = pts, time_base
    return frame


def test_tensor_shape_dtype_range_and_exact_values_without_scaling():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    t = frame_to_tensor(rgb_frame(arr), 64, 48)
    assert t.shape == (1, 48, 64, 3) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # same size and already rgb: no conversion happens, the values are exact
    assert np.array_equal((t[0] * 255).round().to(torch.uint8).numpy(), arr)


def test_tensor_back_to_frame_keeps_values_and_timestamps():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    template = rgb_frame(arr, pts=123456, time_base=Fraction(1, 30))
    frame = tensor_to_frame(frame_to_tensor(template), template)
    assert frame.format.name == "rgb24"
    assert (frame.pts, frame.time_base) == (123456, Fraction(1, 30))
    assert np.array_equal(frame.to_ndarray(), arr)
    assert tensor_to_frame(torch.zeros(32, 40, 3)).pts is None  # no template: no timestamp


def test_yuv_frame_is_converted_and_scaled_in_one_pass():
    arr = np.zeros((240, 320, 3), np.uint8)
    arr[:, :160] = (200, 30, 30)  # red left half, blue right half
    arr[:, 160:] = (30, 30, 200)
    yuv = rgb_frame(arr).reformat(format="yuv420p")
    out = frame_to_ndarray(yuv, 160, 120)
    assert out.shape == (120, 160, 3)
    assert out[:, :70, 0].mean() > 150 and out[:, :70, 2].mean() < 80
    assert out[:, 90:, 2].mean() > 150 and out[:, 90:, 0].mean() < 80


def test_other_aspect_ratio_is_center_cropped_not_squeezed():
    arr = np.zeros((100, 300, 3), np.uint8)  # 3:1, three vertical bands
    arr[:, :100] = 255
    arr[:, 100:200] = 128
    out = frame_to_ndarray(rgb_frame(arr), 100, 100)
    assert out.shape == (100, 100, 3)
    # only the middle band is left: the sides were cropped, nothing squeezed in
    assert abs(float(out.mean()) - 128) < 3
    tall = frame_to_ndarray(rgb_frame(np.zeros((300, 100, 3), np.uint8)), 64, 64)
    assert tall.shape == (64, 64, 3)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError):
        tensor_to_frame(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError):
        tensor_to_frame(torch.zeros(1, 8, 8, 4))
    with pytest.raises(ValueError):
        ndarray_to_frame(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError):
        frame_to_ndarray(rgb_frame(np.zeros((8, 8, 3), np.uint8)), -1, 8)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_conversions_start_no_thread_pool():
    """swscale would start a pool of threads for each frame's own scaler (and keep it while the
    frame lives): every conversion on the frame path runs on the calling thread instead."""
    from comfystream.media.encoder import SegmentEncoder
    from server.streams.frame_rate import fixed_size

    frame = av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24").reformat(
        format="yuv420p", threads=1
    )
    frame.pts, frame.time_base = 0, Fraction(1, 30)
    encoder = SegmentEncoder(64, 48)  # x264's own threads come with it, before the count
    before = _threads()
    rgb = frame_to_ndarray(frame, 96, 96)
    scaled = fixed_size(frame, 160, 120)
    encoder.encode(scaled)
    assert _threads() == before, "a conversion started threads"
    assert rgb.shape == (96, 96, 3) and (scaled.width, scaled.height) == (160, 120)
    encoder.flush()
    encoder.close()


def test_a_frame_resized_for_the_output_keeps_its_timestamps_and_ingest_mark():
    """`detect_out_resolution: false` resizes each output frame: its pts and the pipeline's ingest
    mark (`opaque`, read for the latency stats at publish) go with it."""
    from server.streams.frame_rate import fixed_size

    frame = av.VideoFrame(64, 48, "yuv420p")
    frame.pts, frame.time_base, frame.opaque = 7, Fraction(1, 30), {"ingest": 1.5}
    out = fixed_size(frame, 32, 24)
    assert (out.width, out.height) == (32, 24) and out is not frame
    assert (out.pts, out.time_base, out.opaque) == (7, Fraction(1, 30), {"ingest": 1.5})
