"""End to end over trickle with real processes: a real relay, the server (in-process aiohttp), and
real spawned workers. Frames carry their index in their pixels, so matching survives H.264."""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction

from stream_stack import INVERT_PROMPT, PASSTHROUGH_PROMPT, Stack

from bench.trickle_client import EventsReader, OutputReader, PatternPublisher, pts_of, send_control
from comfystream.trickle import TricklePublisher

SIZE = 256
FPS = 30
SWAP_FPS = 20


def assert_in_order(frames, fps: int = FPS) -> list[int]:
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)), f"out of order or duplicated: {indices}"
    for f in frames:
        assert f.pts * f.time_base == Fraction(pts_of(f.index, fps), 90_000), (
            f"frame {f.index}: pts {f.pts} {f.time_base}"
        )
    return indices


async def _run_reader(url: str) -> tuple[OutputReader, asyncio.Task]:
    reader = OutputReader(url)
    return reader, asyncio.create_task(reader.run())


async def test_every_frame_inverted_in_order_and_input_end_stops_stream(split_stack: Stack) -> None:
    s = split_stack
    name = "e2e-basic"
    await s.start(name, {"width": SIZE, "height": SIZE}, events=True)
    events = EventsReader(s.urls(name, events=True)["events_url"])
    events_task = asyncio.create_task(events.run())
    await s.wait_state(name, {"running"})
    reader, reader_task = await _run_reader(s.urls(name)["publish_url"])

    publisher = PatternPublisher(s.urls(name)["subscribe_url"], SIZE, SIZE, fps=FPS, audio=True)
    await publisher.send_range(0, 60)
    await publisher.close()  # the input ends: the stream must stop by itself

    info = await s.wait_state(name, {"stopped", "error"}, timeout=30)
    assert info["state"] == "stopped" and info["stop_reason"] == "input channel ended", info
    await asyncio.wait_for(reader_task, 10)  # the output channel was closed
    await asyncio.wait_for(events_task, 10)

    assert not reader.errors
    indices = assert_in_order(reader.frames)
    assert all(f.inverted for f in reader.frames)
    assert all((f.width, f.height) == (SIZE, SIZE) for f in reader.frames)
    stats = info["stats"]
    # Every input frame is accounted for: published, or dropped under backpressure (and counted).
    assert stats["received"] == 60
    assert len(indices) + stats["dropped"] == 60
    assert len(indices) >= 50 and indices[-1] == 59
    assert stats["published"] == len(indices)
    # Audio passes through, in order, on the input's timeline (it starts at 1 s; AAC's encoder
    # delay moves packets up to a few frames of 1024 samples earlier).
    assert len(reader.audio_pts) >= 30 and reader.audio_pts == sorted(reader.audio_pts)
    assert 0.9 <= reader.audio_pts[0] and reader.audio_pts[-1] <= 1.0 + publisher.audio_samples / 48_000
    types = events.types()
    assert "stream_state" in types and types[-1] == "stream_stopped"
    # The gateway's lifecycle events (pytrickle's names), in order.
    assert types.index("receive_first_ingest_segment") < types.index("send_first_processed_segment")
    assert "heartbeat" in events.types(queue_event_type="stream_heartbeat")
    final = events.events[-1]
    assert final["stream_id"] == name and final["data"]["reason"] == "input channel ended"
    assert final["data"]["stats"]["published"] == len(indices)
    assert (await s.call("GET", "/streams"))[1]["count"] == 0


async def test_prompt_swaps_take_effect_within_two_frames_and_bad_updates_change_nothing(
    split_stack: Stack,
) -> None:
    s = split_stack
    name = "e2e-swap"
    urls = s.urls(name, control=True)
    await s.start(name, {"width": SIZE, "height": SIZE}, control=True)
    await s.wait_state(name, {"running"})
    reader, reader_task = await _run_reader(urls["publish_url"])
    # 20 fps: "none lost" must hold on a busy 2-core machine too (a drop is backpressure, by design).
    publisher = PatternPublisher(urls["subscribe_url"], SIZE, SIZE, fps=SWAP_FPS)
    swaps: dict[str, int] = {}
    rejected: list[tuple[int, str]] = []
    control = TricklePublisher(
        urls["control_url"], mime_type="application/json"
    )  # the gateway's, for the stream

    async def between(index: int) -> None:
        if index == 19:  # REST: to passthrough; frames sent from now on must come out as they went in
            swaps["rest_seen"] = max((f.index for f in reader.frames), default=-1)
            status, body = await s.call(
                "POST", f"/stream/{name}/update-prompts", json={"prompt": json.dumps(PASSTHROUGH_PROMPT)}
            )
            assert status == 200, body
            swaps["rest"] = publisher.published
        elif index in (28, 30, 32):  # bad updates, mid-stream: 400 (or ignored), nothing changes
            bad = [
                {"prompt": json.dumps({"1": {"class_type": "NoSuchNode", "inputs": {}}})},
                {"prompt": "{not json"},
                {"prompts": [INVERT_PROMPT], "parameters": {"width": 3}},
            ][(index - 28) // 2]
            status, body = await s.call("POST", f"/stream/{name}/update-prompts", json=bad)
            rejected.append((status, body["error"]))
            status, _ = await s.call("POST", "/stream/start", json={**urls, "gateway_request_id": name})
            rejected.append((status, "duplicate"))
            await send_control(
                urls["control_url"], bad, control
            )  # a bad control message is reported, not applied
        elif index == 44:  # the control channel, as the gateway sends params: back to invert
            swaps["control_seen"] = max((f.index for f in reader.frames), default=-1)
            await send_control(urls["control_url"], {"prompt": json.dumps(INVERT_PROMPT)}, control)
            # A control message has no answer: wait until the stream reports the update applied.
            for _ in range(400):
                if (await s.call("GET", f"/stream/{name}"))[1]["prompt_updates"] == 2:
                    break
                await asyncio.sleep(0.025)
            swaps["control"] = publisher.published

    await publisher.send_range(0, 70, between=between)
    await publisher.close()
    await control.close()
    await s.wait_state(name, {"stopped"}, timeout=30)
    await asyncio.wait_for(reader_task, 10)

    assert [r[0] for r in rejected] == [400, 409] * 3, rejected
    indices = assert_in_order(reader.frames, fps=SWAP_FPS)
    info = (await s.call("GET", f"/stream/{name}"))[1]
    assert info["prompt_updates"] == 2 and info["stop_reason"] == "input channel ended"
    missing = sorted(set(range(70)) - set(indices))
    assert info["stats"]["dropped"] == 0 and not missing, (missing, swaps, info["stats"])
    by_index = {f.index: f.inverted for f in reader.frames}
    # One switch to passthrough, within 2 frames of the REST answer. Frames still on their way to
    # the worker when it was asked may go either way; those already out came from the old prompt.
    first_plain = min(i for i, inv in by_index.items() if not inv)
    assert swaps["rest_seen"] < first_plain <= swaps["rest"] + 2
    assert all(by_index[i] for i in range(first_plain))
    # Then one switch back to invert, driven by the control channel.
    first_inverted_again = min(i for i, inv in by_index.items() if inv and i > first_plain)
    assert swaps["control_seen"] < first_inverted_again <= swaps["control"] + 2
    assert not any(by_index[i] for i in range(first_plain, first_inverted_again))
    assert all(by_index[i] for i in range(first_inverted_again, 70))


async def test_three_concurrent_streams_no_crosstalk(split_stack: Stack) -> None:
    s = split_stack
    # Index ranges tell the streams apart; prompts: invert, passthrough, invert x3. Streams a and c
    # share one worker (the shared pipeline); b has its own, and is resized mid-stream (the
    # gateway's params form): its worker restarts, the others go on.
    triple = {
        "1": {"class_type": "LoadTensor", "inputs": {}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "SaveTensor", "inputs": {"images": ["4", 0]}},
    }
    plan = {
        "cs-a": (0, INVERT_PROMPT, True),
        "cs-b": (1000, PASSTHROUGH_PROMPT, False),
        "cs-c": (2000, triple, True),
    }
    for name, (_, prompt, _) in plan.items():
        params = {
            "width": SIZE,
            "height": SIZE,
            "prompt": json.dumps(prompt),
            "dedicated_worker": name == "cs-b",
        }
        data = await s.start(name, params)
        assert data["config"]["pipeline_type"] == ("ProcessPoolPipeline" if name == "cs-b" else "Pipeline")
    for name in plan:
        await s.wait_state(name, {"running"})
    pids = {name: (await s.call("GET", f"/stream/{name}/worker"))[1]["worker"]["pid"] for name in plan}
    assert pids["cs-a"] == pids["cs-c"] != pids["cs-b"]
    readers = {name: await _run_reader(s.urls(name)["publish_url"]) for name in plan}
    publishers = {name: PatternPublisher(s.urls(name)["subscribe_url"], SIZE, SIZE, fps=15) for name in plan}

    resized_at: list[int] = []

    async def resize_b(index: int) -> None:
        if index == 1012:
            status, body = await s.call(
                "POST", "/stream/cs-b/params", json={"width": SIZE // 2, "height": SIZE // 2}
            )
            assert status == 200 and body["parameters_updated"] and body["warmup_performed"], body
            resized_at.append(publishers["cs-b"].published)

    async def feed(name: str) -> None:
        await publishers[name].send_range(plan[name][0], 30, between=resize_b if name == "cs-b" else None)
        await publishers[name].close()

    await asyncio.gather(*(feed(n) for n in plan))
    for name in plan:
        await s.wait_state(name, {"stopped"}, timeout=30)
        await asyncio.wait_for(readers[name][1], 10)

    for name, (start, _, inverted) in plan.items():
        frames = readers[name][0].frames
        indices = assert_in_order(frames, fps=15)
        assert indices and all(start <= i < start + 30 for i in indices), (
            f"{name} got another stream's frames"
        )
        assert all(f.inverted == inverted for f in frames), name
        info = (await s.call("GET", f"/stream/{name}"))[1]
        if name == "cs-b":  # one switch of size, within 2 frames of the answer
            sizes = [(f.width, f.height) for f in frames]
            small = [f.index for f in frames if (f.width, f.height) == (SIZE // 2, SIZE // 2)]
            assert small and sizes == sorted(sizes, reverse=True), sizes
            assert small[0] <= 1000 + resized_at[0] + 2 and set(sizes) == {
                (SIZE, SIZE),
                (SIZE // 2, SIZE // 2),
            }
        else:
            assert all((f.width, f.height) == (SIZE, SIZE) for f in frames), name
        missing = sorted(set(range(start, start + 30)) - set(indices))
        assert len(indices) + info["stats"]["dropped"] == 30, (name, missing, json.dumps(info["stats"]))
