"""The worker's conversions between shared-memory frames and IMAGE tensors, and its torch threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from comfystream.pipeline.backend import WorkerSpec
from workers import messages as m
from workers.backend import ProcessPoolBackend
from workers.tensors import FrameTransfer, image_into_rgb, rgb_to_image


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


def _frames(n: int, h: int = 8, w: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_frame_transfer_on_the_cpu_is_the_plain_conversions():
    transfer = FrameTransfer(torch, torch.device("cpu"))
    assert not transfer.staged and not transfer.pin
    rgb = _frames(1)[0]
    image = transfer.upload(rgb)
    assert torch.equal(image, rgb_to_image(torch, rgb))
    out = np.empty_like(rgb)
    transfer.download(image[0], out)
    np.testing.assert_array_equal(out, rgb)


def test_staged_transfer_reuses_its_buffers_but_never_hands_them_to_nodes():
    """The GPU path's logic (staging buffers, one copy each way) run on the CPU."""
    transfer = FrameTransfer(torch, torch.device("cpu"), staged=True, pin=False)
    first_rgb, second_rgb, third_rgb = _frames(3)
    first = transfer.upload(first_rgb)
    staging = (transfer._host_in.data_ptr(), transfer._dev_in.data_ptr())
    kept = first.clone()
    second = transfer.upload(second_rgb)
    assert (transfer._host_in.data_ptr(), transfer._dev_in.data_ptr()) == staging, "reused every frame"
    assert first.data_ptr() not in staging and second.data_ptr() != first.data_ptr()
    assert torch.equal(first, kept), "the next upload leaves the frame a node may have kept alone"
    assert torch.equal(second, rgb_to_image(torch, second_rgb))
    second.mul_(0.0)  # a node writing into its input touches no buffer of ours
    np.testing.assert_array_equal(transfer._host_in.numpy(), second_rgb)
    # Out: the same bytes as the CPU path, through the staging buffer, also for strided results.
    out, expected = np.empty_like(third_rgb), np.empty_like(third_rgb)
    values = torch.rand((3, 8, 6)).permute(1, 2, 0)  # not contiguous, as an interpolated result
    transfer.download(values, out)
    image_into_rgb(torch, values.contiguous(), expected)
    np.testing.assert_array_equal(out, expected)
    host_out = transfer._host_out.data_ptr()
    transfer.download(transfer.upload(third_rgb)[0], out)
    np.testing.assert_array_equal(out, third_rgb)
    assert transfer._host_out.data_ptr() == host_out
    bigger = np.zeros((10, 4, 3), np.uint8)
    assert transfer.upload(bigger).shape == (1, 10, 4, 3), "a new size gets new buffers"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_transfer_is_pinned_and_exact():
    transfer = FrameTransfer(torch, torch.device("cuda:0"))
    assert transfer.staged and transfer.pin
    for rgb in _frames(3, 64, 48):
        image = transfer.upload(rgb)
        assert image.is_cuda and transfer._host_in.is_pinned()
        out = np.empty_like(rgb)
        transfer.download(image[0], out)
        assert transfer._host_out.is_pinned()
        np.testing.assert_array_equal(out, rgb)
