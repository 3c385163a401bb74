"""The worker's conversions between shared-memory frames and IMAGE tensors, and its torch threads."""

from __future__ import annotations

import numpy as np
import torch

from comfystream.pipeline.backend import WorkerSpec
from workers import messages as m
from workers.backend import ProcessPoolBackend
from workers.tensors import image_into_rgb, rgb_to_image


def test_uint8_survives_the_round_trip_and_rounding_is_to_nearest():
    rgb = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    image = rgb_to_image(torch, rgb)
    assert image.shape == (1, 16, 16, 3) and image.dtype == torch.float32
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0
    out = np.empty_like(rgb)
    scratch = image_into_rgb(torch, image[0], out)
    np.testing.assert_array_equal(out, rgb)
    # Values between two levels go to the nearer one; out of range values are clamped.
    values = torch.tensor([-1.0, 0.4 / 255, 0.6 / 255, 254.4 / 255, 254.6 / 255, 2.0]).reshape(1, 2, 3)
    small = np.empty((1, 2, 3), np.uint8)
    image_into_rgb(torch, values, small, scratch)  # a scratch of another shape is replaced
    assert small.ravel().tolist() == [0, 0, 1, 254, 255, 255]


def test_a_new_input_tensor_per_frame_and_one_scratch_buffer_reused():
    rgb = np.full((4, 4, 3), 51, np.uint8)
    first, second = rgb_to_image(torch, rgb), rgb_to_image(torch, rgb)
    assert first.data_ptr() != second.data_ptr()  # a node may keep its input
    out = np.empty_like(rgb)
    scratch = image_into_rgb(torch, first[0], out)
    assert image_into_rgb(torch, second[0], out, scratch) is scratch
    assert (out == 51).all()


async def test_workers_run_torch_with_the_configured_threads(no_leaks):
    for threads, expected in ((1, 1), (2, 2)):
        backend = ProcessPoolBackend(gpus=[], torch_threads=threads)
        proc = await backend.spawn_process(WorkerSpec(), f"threads-{threads}")
        try:
            reply = await proc.request(lambda rid: m.StatusRequest(rid), timeout=30.0)
        finally:
            await proc.stop()
        assert reply.ok and reply.data["torch_threads"] == expected
