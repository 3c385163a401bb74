"""WebRTC streams end to end: aiortc peers in this process on 127.0.0.1, the real server, real workers.

Each frame a peer sends shows its index in its pixels (comfystream.media.testpattern); what comes
back is read the same way, so every check is about which input frame an output came from."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aioice.ice
import pytest

from comfystream.prompts import DEFAULT_PROMPT
from tests.processes import alive
from tests.webrtc.conftest import PASSTHROUGH_PROMPT, Server
from tests.webrtc.peers import Peer, Received

# aiortc's VP8 encoder rounds a frame's pts by up to one 90 kHz tick (H.264 keeps it exactly); a
# frame crosses two encoders (peer -> server -> peer).
PTS_TOLERANCE = {"H264": 0, "VP8": 2}



async def _wait_gone(server: Server, stream_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, listing = await server.call("GET", "/streams")
        assert status == 200
        if stream_id not in {s["stream_id"] for s in listing["streams"]}:
            status, info = await server.call("GET", f"/stream/{stream_id}")
            assert status == 200, info  # a finished stream is still reported
            return info
        assert time.monotonic() < deadline, f"stream {stream_id} still listed"
        await asyncio.sleep(0.05)


def _assert_in_order_with_input_timestamps(peer: Peer, frames: list[Received], codec: str) -> None:
    indices = [f.index for f in frames]
    assert None not in indices, "a frame came back that is not one of the inputs"
    assert indices == sorted(set(indices)), f"frames out of order or repeated: {indices}"
    sent = peer.source.sent_at
    assert set(indices) <= set(sent), "a frame came back that was never sent"
    # The receiver counts pts from the first frame it got: compare intervals against the inputs'.
    first = frames[0]
    for f in frames[1:]:
        expected = peer.source.pts_of(f.index) - peer.source.pts_of(first.index)
        assert abs((f.pts - first.pts) - expected) <= PTS_TOLERANCE[codec], (
            f.index,
            f.pts,
            first.pts,
            expected,
        )


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_frames_come_back_processed_in_order_with_their_timestamps(server: Server, codec: str) -> None:
    peer = Peer(server.base, server.http, codec=f"video/{codec}", audio=True)
    try:
        answer = await peer.connect()  # no prompts: the default (invert), 512x512
        assert peer.answered_codec() == codec
        stream_id = answer["stream_id"]
        candidates = [line for line in answer["sdp"].splitlines() if line.startswith("a=candidate")]
        assert candidates and all(" typ host" in c and " 127.0.0.1 " in c for c in candidates), candidates

        await peer.wait_count(30)
        frames = list(peer.received)
        assert all(f.inverted for f in frames), [(f.index, f.inverted) for f in frames if not f.inverted]
        assert all((f.width, f.height) == (512, 512) for f in frames)
        _assert_in_order_with_input_timestamps(peer, frames, codec)
        assert peer.audio_received > 0, "audio did not come back"

        # Listed like a trickle stream, with its stats and its worker.
        status, listing = await server.call("GET", "/streams")
        assert status == 200 and [s["stream_id"] for s in listing["streams"]] == [stream_id]
        assert listing["streams"][0]["transport"] == "webrtc"
        status, info = await server.call("GET", f"/stream/{stream_id}")
        assert status == 200 and info["state"] == "running" and info["transport"] == "webrtc"
        assert info["config"]["pipeline_type"] == "ProcessPoolPipeline"
        assert info["config"]["subscribe_url"] == f"webrtc:{stream_id}"
        assert info["stats"]["received"] >= 30 and info["stats"]["processed"] >= 30
        assert len(info["workers"]) == 1
        worker_pid = info["workers"][0]["pid"]
        assert alive(worker_pid)
        status, stats = await server.call("GET", f"/stream/{stream_id}/stats")
        assert status == 200 and stats["stream_id"] == stream_id
        assert {"fps", "fps_in", "dropped", "latency_ms_p50", "latency_ms_p99"} <= set(stats), stats
        assert stats["published"] >= 30
        status, all_stats = await server.call("GET", "/streams/stats")
        assert status == 200 and set(all_stats) == {stream_id} and "fps" in all_stats[stream_id]

        # The stream ends with the peer connection: the peer hangs up (H.264), or DELETE hangs up (VP8).
        if codec == "H264":
            await peer.close()
            expected_reason = {"peer connection closed", "the peer's video ended"}
        else:
            status, body = await server.call("DELETE", f"/stream/{stream_id}")
            assert status == 200, body
            for _ in range(200):
                if peer.pc.connectionState == "closed":
                    break
                await asyncio.sleep(0.05)
            assert peer.pc.connectionState == "closed"
            expected_reason = {"stopped by DELETE"}
        info = await _wait_gone(server, stream_id)
        assert info["state"] == "stopped" and info["stop_reason"] in expected_reason, info
        assert not alive(worker_pid), "the stream's worker outlived it"
        status, _ = await server.call("GET", f"/stream/{stream_id}/stats")
        assert status == 200  # a finished stream's last stats stay readable
    finally:
        await peer.close()


async def _frames_sent_after(peer: Peer, moment: float, n: int) -> list[Received]:
    """The next `n` frames back whose input left the peer after `moment`."""

    def fresh(frames: list[Received]) -> list[Received]:
        return [f for f in frames if f.index is not None and peer.source.sent_at.get(f.index, 0) > moment]

    await peer.wait_for(lambda frames: len(fresh(frames)) >= n, what=f"{n} frames sent after the request")
    return fresh(peer.received)[:n]


async def test_control_channel_prompts_pause_resume_stop_and_resolution(server: Server) -> None:
    peer = Peer(server.base, server.http)
    try:
        answer = await peer.connect(prompts=[DEFAULT_PROMPT], resolution={"width": 512, "height": 512})
        stream_id = answer["stream_id"]
        await peer.wait_count(5)
        assert all(f.inverted for f in peer.received)

        reply = await peer.request("get_nodes")
        assert reply["type"] == "nodes_info" and reply["success"] is True
        nodes = reply["nodes"]["0"]
        assert {n["class_type"] for n in nodes.values()} == {"LoadTensor", "ImageInvert", "SaveTensor"}
        assert nodes["2"]["inputs"]["image"] == {"value": ["1", 0], "type": "IMAGE", "link": True}

        # A bad prompt: refused with the REST API's body, and the stream goes on as before.
        bad = {
            "1": {"class_type": "LoadTensor", "inputs": {}},
            "2": {"class_type": "ImageInvert", "inputs": {}},
        }
        bad["3"] = {"class_type": "SaveTensor", "inputs": {"images": ["2", 0]}}
        reply = await peer.request("update_prompts", prompts=[bad])
        assert reply["type"] == "prompts_updated" and reply["success"] is False and reply["error"]
        assert any(e["node_id"] == "2" and e["input_name"] == "image" for e in reply["validation_errors"]), (
            reply
        )
        status, rest = await server.call(
            "POST", f"/stream/{stream_id}/update-prompts", json={"prompts": [bad]}
        )
        assert status == 400
        assert (
            rest["validation_errors"] == reply["validation_errors"]
            and rest["node_errors"] == reply["node_errors"]
        )
        moment = time.monotonic()
        assert all(f.inverted for f in await _frames_sent_after(peer, moment, 5))

        # Pause: the worker stays, the video passes through unprocessed; resume: processed again.
        status, info = await server.call("GET", f"/stream/{stream_id}")
        worker_pid = info["workers"][0]["pid"]
        reply = await peer.request("pause_prompts")
        assert (reply["type"], reply["success"], reply["mode"]) == ("prompts_paused", True, "paused")
        assert not any(f.inverted for f in await _frames_sent_after(peer, time.monotonic(), 5))
        reply = await peer.request("resume_prompts")
        assert (reply["type"], reply["success"], reply["mode"]) == ("prompts_resumed", True, "processing")
        assert all(f.inverted for f in await _frames_sent_after(peer, time.monotonic(), 5))
        status, info = await server.call("GET", f"/stream/{stream_id}")
        assert [w["pid"] for w in info["workers"]] == [worker_pid]

        # Stop: the worker is freed, the video passes through; resume starts a new worker.
        reply = await peer.request("stop_prompts")
        assert (reply["type"], reply["success"], reply["mode"]) == ("prompts_stopped", True, "stopped")
        assert not alive(worker_pid)
        status, info = await server.call("GET", f"/stream/{stream_id}")
        assert info["state"] == "running" and info["workers"] == []
        assert not any(f.inverted for f in await _frames_sent_after(peer, time.monotonic(), 5))
        status, err = await server.call("POST", f"/stream/{stream_id}/restart-worker")
        assert status == 409 and "no worker" in err["message"], err
        reply = await peer.request("pause_prompts")
        assert reply["success"] is False and "resume" in reply["error"]
        reply = await peer.request("resume_prompts")
        assert reply["success"] is True
        resumed = time.monotonic()
        assert all(f.inverted for f in await _frames_sent_after(peer, resumed, 5))
        status, info = await server.call("GET", f"/stream/{stream_id}")
        assert len(info["workers"]) == 1 and info["workers"][0]["pid"] != worker_pid

        # A prompt update takes effect: what came back before it was inverted, what was sent after its
        # reply is not, and in between the prompt changes once, at a frame boundary.
        sent = peer.source.sent_at
        since_resume = [f for f in peer.received if f.index is not None and sent[f.index] > resumed]
        assert since_resume and all(f.inverted for f in since_resume)
        reply = await peer.request("update_prompts", prompts=[PASSTHROUGH_PROMPT])
        assert (reply["type"], reply["success"], reply["prompts_count"]) == ("prompts_updated", True, 1), (
            reply
        )
        assert (await server.call("GET", f"/stream/{stream_id}"))[1]["prompt_updates"] == 1
        assert not any(f.inverted for f in await _frames_sent_after(peer, time.monotonic(), 5))
        flags = [f.inverted for f in peer.received if f.index is not None and sent[f.index] > resumed]
        assert flags == sorted(flags, reverse=True), "the prompts alternated around the swap"
        indices = [f.index for f in peer.received]
        assert indices == sorted(set(indices)), "frames out of order across pause/stop/swap"

        # The size: the worker restarts at it, and frames come back at it.
        reply = await peer.request("update_resolution", width=256, height=256)
        assert (reply["type"], reply["success"]) == ("resolution_updated", True), reply
        assert (reply["width"], reply["height"], reply["warmup_performed"]) == (256, 256, True)
        frames = await _frames_sent_after(peer, time.monotonic(), 3)
        assert {(f.width, f.height) for f in frames} == {(256, 256)}
        reply = await peer.request("pause_prompts")  # passed through at the stream's size too
        assert reply["success"] is True
        frames = await _frames_sent_after(peer, time.monotonic(), 3)
        assert {(f.width, f.height) for f in frames} == {(256, 256)}
        assert (await peer.request("resume_prompts"))["success"] is True
        reply = await peer.request("update_resolution", width=255, height=256)
        assert reply["success"] is False and any(
            e["input_name"] == "parameters.width" for e in reply["validation_errors"]
        )

        reply = await peer.request("no_such_thing")
        assert (reply["type"], reply["success"]) == ("error", False) and "no_such_thing" in reply["error"]
        status, info = await server.call("GET", f"/stream/{stream_id}")
        assert info["state"] == "running"
    finally:
        await peer.close()


@pytest.mark.server_config(max_streams=2)
async def test_two_peers_at_once_see_only_their_own_frames(server: Server) -> None:
    a = Peer(server.base, server.http, first=0)
    b = Peer(server.base, server.http, first=300_000)
    third = Peer(server.base, server.http)
    try:
        answer_a, answer_b = await asyncio.gather(a.connect(), b.connect(prompts=[PASSTHROUGH_PROMPT]))
        await asyncio.gather(a.wait_count(20), b.wait_count(20))

        # A third is over --max-streams: 503, and the two go on.
        await third.make_offer()
        async with server.http.post(f"{server.base}/offer", json=third.offer_body(stream_id="third")) as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["error"] == "At capacity"
        status, _ = await server.call("GET", "/stream/third")
        assert status == 404, "a refused offer must leave no stream behind"
        async with server.http.post(
            f"{server.base}/offer", json=third.offer_body(stream_id=answer_a["stream_id"])
        ) as resp:
            assert resp.status == 409, await resp.text()
        n_a, n_b = len(a.received), len(b.received)
        await asyncio.gather(a.wait_count(n_a + 10), b.wait_count(n_b + 10))

        for peer, inverted in ((a, True), (b, False)):
            indices = [f.index for f in peer.received]
            assert set(indices) <= set(peer.source.sent_at), "a peer got frames it never sent"
            assert indices == sorted(indices)
            assert all(f.inverted is inverted for f in peer.received)
        status, listing = await server.call("GET", "/streams")
        workers = {s["stream_id"]: s["workers"][0]["pid"] for s in listing["streams"]}
        assert set(workers) == {answer_a["stream_id"], answer_b["stream_id"]}
        assert len(set(workers.values())) == 2, "the peers share a worker"

        # Closing one frees its worker; the other is untouched.
        await a.close()
        await _wait_gone(server, answer_a["stream_id"])
        assert not alive(workers[answer_a["stream_id"]])
        n_b = len(b.received)
        await b.wait_count(n_b + 10)
        assert alive(workers[answer_b["stream_id"]])
    finally:
        for peer in (a, b, third):
            await peer.close()


async def test_offer_rejects_bad_input_without_starting_anything(server: Server) -> None:
    peer = Peer(server.base, server.http)
    try:
        await peer.make_offer()
        offer = peer.offer_body()["offer"]

        async def post(**kw) -> tuple[int, dict]:
            async with server.http.post(f"{server.base}/offer", **kw) as resp:
                return resp.status, await resp.json()

        status, body = await post(data=b"{not json", headers={"Content-Type": "application/json"})
        assert status == 400 and body["error"] == "Invalid JSON"
        status, body = await post(json={"prompts": [DEFAULT_PROMPT]})
        assert status == 400 and any(e["input_name"] == "offer" for e in body["validation_errors"])
        status, body = await post(json={"offer": offer, "resolution": {"width": 511, "height": 512}})
        assert status == 400 and any(e["input_name"] == "resolution.width" for e in body["validation_errors"])
        status, body = await post(
            json={"offer": offer, "prompts": [{"1": {"class_type": "NoSuchNode", "inputs": {}}}]}
        )
        assert status == 400 and body["error"] == "Prompt validation failed"
        assert body["validation_errors"][0]["node_type"] == "NoSuchNode"
        status, body = await post(json={"offer": offer, "prompts": "not json"})
        assert status == 400 and body["error"] == "Prompt validation failed"
        no_video = "\r\n".join(line for line in offer["sdp"].split("\r\n") if not line.startswith("m=video"))
        status, body = await post(json={"offer": {"sdp": no_video, "type": "offer"}})
        assert status == 400 and "video" in body["message"]
        status, body = await post(
            json={"offer": {"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}}
        )
        assert status == 400 and body["error"] == "Invalid offer"

        status, listing = await server.call("GET", "/streams")
        assert listing["count"] == 0
    finally:
        await peer.close()


PEER_SCRIPT = Path(__file__).with_name("peer_process.py")


async def test_a_lost_peer_stops_its_stream(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer that vanishes (SIGKILL: no goodbye) is noticed by ICE consent checks; shorten their
    # period (30 s by default) so that the test does not wait for it.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    proc = subprocess.Popen(
        [sys.executable, str(PEER_SCRIPT), server.base],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.startswith("receiving "), line
        stream_id = line.split()[1]
        status, info = await server.call("GET", f"/stream/{stream_id}")
        assert status == 200 and info["state"] == "running"
        worker_pid = info["workers"][0]["pid"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        info = await _wait_gone(server, stream_id)
        # On loopback the dead peer's port answers ICMP "unreachable", so the transport may close before
        # consent checks fail: either way the stream ends by the peer connection.
        assert info["stop_reason"] in {"peer connection lost", "peer connection closed"}, info
        assert not alive(worker_pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()
