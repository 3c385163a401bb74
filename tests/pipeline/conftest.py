"""Fixtures for pipeline tests: real spawned workers, a custom node package for slow / hanging /
failing nodes, and frames whose pixels carry their index (comfystream.media.testpattern)."""

from __future__ import annotations

import asyncio
import textwrap
from fractions import Fraction
from pathlib import Path

import av
import pytest

from comfystream.media.testpattern import PatternError, make_index_frame, read_index
from workers.backend import ProcessPoolBackend

TIME_BASE = Fraction(1, 90000)
PTS_STEP = 3000  # 30 fps in the MPEG-TS clock

IDENTITY_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "SaveTensor", "inputs": {"images": ["1", 0]}},
}

TEST_NODES = '''
import os
import signal
import time

import torch


class SlowInvert:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "delay": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0})}}

    def run(self, images, delay):
        time.sleep(delay)
        return (1.0 - images,)


class HangIfFile:
    """Passes images through, but hangs (ignoring SIGTERM too, with `stubborn`) while `path` exists."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "path": ("STRING", {"default": ""}),
                             "stubborn": ("BOOLEAN", {"default": False})}}

    def run(self, images, path, stubborn):
        if stubborn and os.path.exists(path):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while path and os.path.exists(path):
            time.sleep(0.02)
        return (images,)


class FailAlways:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    def run(self, images):
        raise RuntimeError("this node always fails")


class FailIfFile:
    """Passes images through, and fails while `path` exists (the dry run passes; frames fail)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "path": ("STRING", {"default": ""})}}

    def run(self, images, path):
        if os.path.exists(path):
            raise RuntimeError(f"{path} exists")
        return (images,)


class CrashIfFile:
    """Inverts, and ends the worker process at once while `path` exists (a crash at every start)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "test"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "path": ("STRING", {"default": ""})}}

    def run(self, images, path):
        if os.path.exists(path):
            os._exit(70)
        return (1.0 - images,)


NODE_CLASS_MAPPINGS = {
    "SlowInvert": SlowInvert, "HangIfFile": HangIfFile, "FailAlways": FailAlways, "FailIfFile": FailIfFile,
    "CrashIfFile": CrashIfFile,
}
'''


def slow_prompt(delay: float) -> dict:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "SlowInvert", "inputs": {"images": ["1", 0], "delay": delay}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


def hang_prompt(path: str, stubborn: bool = False) -> dict:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "HangIfFile", "inputs": {"images": ["1", 0], "path": path, "stubborn": stubborn}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveTensor", "inputs": {"images": ["3", 0]}},
    }


def crash_if_file_prompt(path: str) -> dict:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "CrashIfFile", "inputs": {"images": ["1", 0], "path": path}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


def fail_if_file_prompt(path: str) -> dict:
    return {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "FailIfFile", "inputs": {"images": ["1", 0], "path": path}},
        "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
    }


FAILING_PROMPT = {
    "1": {"class_type": "LoadTensor", "inputs": {}},
    "2": {"class_type": "FailAlways", "inputs": {"images": ["1", 0]}},
    "3": {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}},
}


def make_frame(index: int, width: int = 128, height: int = 96) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(make_index_frame(index, width, height), format="rgb24")
    frame.pts = index * PTS_STEP
    frame.time_base = TIME_BASE
    return frame


def decode(frame: av.VideoFrame) -> tuple[int, bool]:
    """(the index in the pixels, whether they were inverted)."""
    rgb = frame.to_ndarray(format="rgb24")
    try:
        return read_index(rgb, inverted=True), True
    except PatternError:
        return read_index(rgb, inverted=False), False


def check_output(frame: av.VideoFrame) -> tuple[int, bool]:
    """Decode an output and check that its pts/time_base are those of the input it holds."""
    index, inverted = decode(frame)
    assert frame.time_base == TIME_BASE
    assert frame.pts == index * PTS_STEP, f"output pts {frame.pts} carries frame {index}"
    return index, inverted


@pytest.fixture(scope="session")
def nodes_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("custom_nodes")
    (root / "test_nodes.py").write_text(textwrap.dedent(TEST_NODES))
    return root


@pytest.fixture
async def backend(nodes_dir):
    b = ProcessPoolBackend(
        gpus=[],
        custom_node_dirs=[str(nodes_dir)],
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=10.0,
        backoff_min_s=0.05,
        backoff_max_s=1.0,
        graceful_stop_s=2.0,
        startup_timeout_s=60.0,
    )
    yield b
    await b.shutdown()


class Collector:
    """Reads a pipeline's outputs as they come, as a stream's publisher would."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.frames: list[av.VideoFrame] = []
        self._base = self._due(pipeline.stats())  # outputs due before us
        self._task = asyncio.get_running_loop().create_task(self._run())

    @staticmethod
    def _due(s: dict) -> int:
        """Outputs the pipeline owes: every frame it received but those it skipped or let go."""
        gone = s["skipped_late"] + s["skipped_overload"] + s["skipped_error"] + s["lost_output"]
        return s["received"] - gone

    async def _run(self) -> None:
        while True:
            self.frames.append(await self.pipeline.get_processed_video_frame())

    async def finish(self, timeout: float = 20.0) -> list[av.VideoFrame]:
        """Wait for every output still due (each frame not dropped has one), then stop reading."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                s = self.pipeline.stats()
                if self._base + len(self.frames) >= self._due(s):
                    return self.frames
                if loop.time() > deadline:
                    raise TimeoutError(f"outputs missing: got {len(self.frames)}, stats {s}")
                await asyncio.sleep(0.01)
        finally:
            self._task.cancel()


