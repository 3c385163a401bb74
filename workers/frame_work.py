"""Frame work, inside a worker: a stream's channel (its shared-memory ring and compiled prompts),
its frames, and prompt swaps at a frame boundary. Handlers of the worker's one loop
(workers/child.py); compiling and warming up run on the loop's background thread, so frames keep
flowing with the old prompt (and heartbeats keep being answered) while a new one loads.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers import messages as m
from workers.child_state import Background, Outbox, WorkerState, describe
from workers.oom import describe_frame_error
from workers.ring import FrameRing
from workers.tensors import FrameTransfer, device_memory

logger = logging.getLogger(__name__)


@dataclass
class _Channel:
    name: str
    ring: FrameRing
    width: int
    height: int
    plans: list[Any] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    active: int = 0
    last_frame: Any = None
    last_frame_id: int = -1
    frames: int = 0
    transfer: Any = None  # FrameTransfer: this channel's slot <-> device buffers, kept between frames


@dataclass
class _Prepared:
    """Compiled, run-once and warmed-up prompts at one size (a channel's, or a preload's)."""

    plans: list[Any]
    prompt_ids: list[str]
    width: int
    height: int
    frame_ms: float | None  # the active prompt's time per frame at this size, measured in warmup
    key: str = ""  # the prompts, canonical JSON (what a stream must ask for to take them as they are)


def prompts_key(prompts: list[dict[str, Any]], active: int) -> str:
    return json.dumps([prompts, active], sort_keys=True, default=str)


# ComfyUI `ui` keys that name files (SaveImage's, PreviewImage's ...): not data for a live stream.
MEDIA_UI_KEYS = frozenset({"images", "animated", "audio", "video", "gifs", "3d"})


def frame_data(outputs: dict[str, dict[str, Any]], executed: list[str]) -> dict[str, Any] | None:
    """The `ui` of the nodes that ran for this frame, media left out (a node computed once for
    every frame says it once, at the prompt's dry run, not with each frame)."""
    if not outputs:  # the usual frame: no node said anything
        return None
    ran = set(executed)
    data = {}
    for node_id, ui in outputs.items():
        said = {k: v for k, v in ui.items() if k not in MEDIA_UI_KEYS} if node_id in ran else None
        if said:
            data[node_id] = said
    return data or None


class FrameWork:
    def __init__(
        self,
        state: WorkerState,
        outbox: Outbox,
        background: Background,
        release_unused: Callable[[], None] = lambda: None,
    ):
        self.state = state
        self._release_unused = release_unused
        self.preloaded: _Prepared | None = None  # `--preload-prompt`: kept until a stream opens
        self.torch = state.torch
        self.device = state.device
        self.send = outbox.send
        self.background = background
        self.channels: dict[str, _Channel] = {}
        self.frames_processed = 0
        self.busy_s = 0.0

    def handlers(self) -> dict[type, Callable[[Any], None]]:
        return {
            m.ProcessFrame: self._process,
            m.OpenChannel: self._open,
            m.UpdatePrompts: self._update,
            m.SetActivePrompt: self._set_active,
            m.CloseChannel: self._close_channel,
            m.Preload: self._preload,
        }

    def signatures(self) -> set[Any]:
        """The shared outputs that the open channels' and the preloaded prompts use."""
        plans = [p for c in self.channels.values() for p in c.plans]
        if self.preloaded is not None:
            plans.extend(self.preloaded.plans)
        return {sig for plan in plans for sig in plan.signatures}

    def status(self) -> dict[str, Any]:
        return {
            "gpu_memory": device_memory(self.torch, self.device),  # issue 17 (bench/gpu.py)
            "frames_processed": self.frames_processed,
            "preloaded": None
            if self.preloaded is None
            else {
                "prompts": len(self.preloaded.plans),
                "width": self.preloaded.width,
                "height": self.preloaded.height,
            },
            "channels": {
                name: {"width": c.width, "height": c.height, "prompts": len(c.plans), "active": c.active}
                for name, c in self.channels.items()
            },
        }

    def close(self) -> None:
        for channel in self.channels.values():
            channel.ring.close()
        self.channels.clear()

    # -- frames ------------------------------------------------------------------------------

    def _process(self, msg: m.ProcessFrame) -> None:
        start = time.perf_counter()
        channel = self.channels.get(msg.channel)
        if channel is None or not channel.plans:
            self.send(m.FrameDone(msg.channel, msg.frame_id, msg.slot, None, "channel is not open", 0.0))
            return
        error: str | None = None
        shape: tuple[int, int, int] | None = None
        data: dict[str, Any] | None = None
        prompt_ms = 0.0
        try:
            frame = self._transfer(channel).upload(channel.ring.input(msg.slot))
            channel.last_frame = frame
            channel.last_frame_id = msg.frame_id
            started = time.perf_counter()
            images, data = self._execute(channel, channel.active, frame)
            prompt_ms = (time.perf_counter() - started) * 1000.0
            if images is None:
                error = "the prompt produced no output frame"
            else:
                shape = self._store(images, channel, channel.ring.output(msg.slot))
        except Exception as exc:  # one bad frame is reported, never fatal for the loop
            error = describe_frame_error(exc)  # a CUDA OOM is marked: the server replaces us
            logger.warning("channel %s frame %d failed: %s", msg.channel, msg.frame_id, error)
        elapsed = time.perf_counter() - start
        self.busy_s += elapsed
        self.frames_processed += 1
        channel.frames += 1
        self.send(
            m.FrameDone(msg.channel, msg.frame_id, msg.slot, shape, error, elapsed * 1000.0, prompt_ms, data)
        )

    def _transfer(self, channel: _Channel) -> FrameTransfer:
        """The channel's frame transfer (uint8 slot <-> IMAGE on the device, once each way)."""
        if channel.transfer is None:
            channel.transfer = FrameTransfer(self.torch, self.device)
        return channel.transfer

    def _execute(self, channel: _Channel, index: int, frame: Any) -> tuple[Any, dict[str, Any] | None]:
        """The frame's output images, and what its nodes said this frame besides media."""
        from comfystream.engine import ExecutionContext

        ctx = ExecutionContext(prompt_id=channel.prompt_ids[index], frame=frame)
        result = channel.plans[index].execute_sync(ctx)
        return (result.frames[0] if result.frames else None), frame_data(result.outputs, result.executed)

    def _store(self, images: Any, channel: _Channel, dst: Any) -> tuple[int, int, int]:
        """Write the first image of `images` into `dst` (the output slot) as uint8 at the channel's size."""
        torch = self.torch
        img = images
        if img.dim() == 4:
            img = img[0]
        if img.dim() != 3:
            raise ValueError(f"output image has shape {tuple(images.shape)}, expected [B,H,W,C]")
        if img.shape[2] == 1:
            img = img.expand(-1, -1, 3)
        elif img.shape[2] > 3:
            img = img[..., :3]
        if (img.shape[0], img.shape[1]) != (channel.height, channel.width):
            img = torch.nn.functional.interpolate(
                img.permute(2, 0, 1).unsqueeze(0).float(),
                size=(channel.height, channel.width),
                mode="bilinear",
                align_corners=False,
            )[0].permute(1, 2, 0)
        self._transfer(channel).download(img, dst)  # straight into shared memory
        return (channel.height, channel.width, 3)

    # -- prompts -----------------------------------------------------------------------------

    def _prepare(
        self,
        channel_name: str,
        prompts: list[dict[str, Any]],
        active: int,
        width: int,
        height: int,
        sample: Any,
        warmup_frames: int,
    ) -> _Prepared:
        """On the background thread: compile every prompt (frame-independent outputs the worker
        already holds are taken, not computed again), run each once (the dry run), then
        `warmup_frames` more of the active one, timing them."""
        from comfystream.engine import ExecutionContext, compile_prompt

        torch = self.torch
        if not prompts:
            raise ValueError("no prompts")
        if not 0 <= active < len(prompts):
            raise ValueError(f"active prompt {active} out of range 0..{len(prompts) - 1}")
        plans = [compile_prompt(p, self.state.registry, cache=self.state.outputs) for p in prompts]
        prompt_ids = [f"{channel_name}:{uuid.uuid4().hex[:12]}" for _ in plans]
        if sample is None:
            generator = torch.Generator().manual_seed(0)
            sample = torch.rand((1, height, width, 3), generator=generator).to(self.device)
        total = max(warmup_frames, 0)
        times_ms: list[float] = []
        for i, plan in enumerate(plans):
            started = time.perf_counter()
            plan.execute_sync(ExecutionContext(prompt_id=prompt_ids[i], frame=sample))
            if i == active:
                dry_run_ms = (time.perf_counter() - started) * 1000.0
        for done in range(1, total + 1):
            started = time.perf_counter()
            plans[active].execute_sync(ExecutionContext(prompt_id=prompt_ids[active], frame=sample))
            times_ms.append((time.perf_counter() - started) * 1000.0)
            self.send(m.Progress(channel_name, done, total))
        # The warmup's frames are steady state; a dry run alone may include loading a model.
        frame_ms = statistics.median(times_ms) if times_ms else dry_run_ms
        return _Prepared(plans, prompt_ids, width, height, round(frame_ms, 3), prompts_key(prompts, active))

    def _after_run(self) -> None:
        """Weights a run moved onto the device join the shared copy (workers/shared_weights_cuda).
        On the loop's thread, between two frames: the models may be those the frames run."""
        shared = self.state.shared_weights
        if shared is None:
            return
        try:
            shared.after_run(self.state.outputs)
        except Exception:
            logger.exception("sharing the weights of the models on the device failed; they stay private")

    def _preload(self, msg: m.Preload) -> None:
        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self.send(_failure(msg.request_id, error))
                return
            self.preloaded = result
            self._after_run()
            self._release_unused()
            self.send(m.Reply(msg.request_id, True, self._prepared_data(result)))

        self.background.submit(
            lambda: self._prepare("preload", msg.prompts, 0, msg.width, msg.height, None, msg.warmup_frames),
            done,
        )

    def _prepared_data(self, prepared: _Prepared) -> dict[str, Any]:
        return {"frame_ms": prepared.frame_ms, "model_loads": self.state.outputs.model_loads}

    def _open(self, msg: m.OpenChannel) -> None:
        if msg.channel in self.channels:
            self.send(
                m.Reply(msg.request_id, False, kind="error", message=f"channel {msg.channel} is already open")
            )
            return
        try:
            ring = FrameRing.attach(msg.ring_name, msg.slots, msg.width, msg.height)
        except Exception as exc:
            self.send(m.Reply(msg.request_id, False, kind="error", message=f"cannot attach ring: {exc}"))
            return
        self.channels[msg.channel] = _Channel(msg.channel, ring, msg.width, msg.height)
        preloaded = self.preloaded
        if (
            preloaded is not None
            and (preloaded.width, preloaded.height) == (msg.width, msg.height)
            and preloaded.key == prompts_key(msg.prompts, msg.active)
        ):
            # Exactly what this worker preloaded, at this size: compiled, loaded and warm already,
            # so the stream's first frame is processed. Its executions are the channel's now.
            preloaded.prompt_ids = [f"{msg.channel}:{uuid.uuid4().hex[:12]}" for _ in preloaded.plans]
            self._prepared(msg, preloaded, None)
            return
        self.background.submit(
            lambda: self._prepare(
                msg.channel, msg.prompts, msg.active, msg.width, msg.height, None, msg.warmup_frames
            ),
            lambda result, error: self._prepared(msg, result, error),
        )

    def _update(self, msg: m.UpdatePrompts) -> None:
        channel = self.channels.get(msg.channel)
        if channel is None:
            self.send(
                m.Reply(msg.request_id, False, kind="error", message=f"channel {msg.channel} is not open")
            )
            return
        sample = channel.last_frame
        self.background.submit(
            lambda: self._prepare(
                msg.channel, msg.prompts, msg.active, channel.width, channel.height, sample, msg.warmup_frames
            ),
            lambda result, error: self._prepared(msg, result, error),
        )

    def _prepared(
        self, msg: m.OpenChannel | m.UpdatePrompts, result: Any, error: BaseException | None
    ) -> None:
        """On the loop's thread, between two frames: the swap is at a frame boundary."""
        channel = self.channels.get(msg.channel)
        if channel is None:
            self.send(
                m.Reply(msg.request_id, False, kind="error", message=f"channel {msg.channel} was closed")
            )
            return
        if isinstance(msg, m.OpenChannel):
            # The worker is this stream's now: what was preloaded for it and not taken goes.
            self.preloaded = None
        if error is not None:
            if isinstance(msg, m.OpenChannel):
                self.channels.pop(msg.channel, None)
                channel.ring.close()
            self._release_unused()
            self.send(_failure(msg.request_id, error))
            return
        if isinstance(msg, m.UpdatePrompts) and not msg.apply:
            self._release_unused()
            self.send(m.Reply(msg.request_id, True, {"after_frame_id": None, **self._prepared_data(result)}))
            return
        channel.plans, channel.prompt_ids = result.plans, result.prompt_ids
        channel.active = msg.active
        self._after_run()
        self._release_unused()  # the old prompts' outputs no other prompt shares (an old checkpoint)
        self.send(
            m.Reply(
                msg.request_id, True, {"after_frame_id": channel.last_frame_id, **self._prepared_data(result)}
            )
        )

    def _set_active(self, msg: m.SetActivePrompt) -> None:
        channel = self.channels.get(msg.channel)
        if channel is None or not 0 <= msg.index < len(channel.plans):
            self.send(m.Reply(msg.request_id, False, kind="error", message="no such channel or prompt"))
            return
        channel.active = msg.index
        self.send(m.Reply(msg.request_id, True, {"after_frame_id": channel.last_frame_id}))

    def _close_channel(self, msg: m.CloseChannel) -> None:
        channel = self.channels.pop(msg.channel, None)
        if channel is not None:
            channel.ring.close()
            self._release_unused()
        self.send(m.Reply(msg.request_id, True))


def _failure(request_id: int, exc: BaseException) -> m.Reply:
    from comfystream.engine import ExecutionError, PromptValidationError

    if isinstance(exc, PromptValidationError):
        return m.Reply(request_id, False, kind="validation", message=str(exc), validation=exc.result)
    if isinstance(exc, ExecutionError):
        return m.Reply(request_id, False, kind="execution", message=str(exc), payload=exc.payload)
    logger.warning("prepare failed: %s", "".join(traceback.format_exception(exc)))
    return m.Reply(request_id, False, kind="error", message=describe(exc))
