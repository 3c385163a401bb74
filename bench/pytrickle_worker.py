"""pytrickle's own in-process worker (`StreamProcessor`) doing the benchmark's work: invert each
frame, after `delay_ms` (a stream param) of waiting, as the sleep node does in our workers.
Run by bench/scheduling.py with PYTRICKLE_PYTHON: `pytrickle_worker.py PORT`. Its defaults are
pytrickle's (no frame skipping configured)."""

import asyncio
import logging
import sys

from pytrickle import StreamProcessor
from pytrickle.decorators import on_stream_start, video_handler


class Invert:
    def __init__(self) -> None:
        self.delay_s = 0.0

    @on_stream_start
    async def on_start(self, params: dict) -> None:
        self.delay_s = float((params or {}).get("delay_ms", 0.0)) / 1000.0

    @video_handler
    async def handle_video(self, frame):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a model that leaves pytrickle's loop free meanwhile
        return frame.replace_tensor(1.0 - frame.tensor)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    StreamProcessor.from_handlers(Invert(), port=int(sys.argv[1]), name="bench").run()
