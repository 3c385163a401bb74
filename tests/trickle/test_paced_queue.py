"""The one queue-and-pace policy of the JSON side channels (events, data): what is queued, what is
let go (counted), what replaces what, and in which order it reaches the sender. No clock: a pacer
that never gives a second turn stands for a channel at its limit."""

from __future__ import annotations

import asyncio
import json

from bench.trickle_client import create_channel
from comfystream.trickle import EventsPublisher, PacedQueue, SegmentPacer, TrickleSubscriber


class Sink:
    """A `send` that records each call; `gate` (set: go) holds it."""

    def __init__(self) -> None:
        self.calls: list[list] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, items: list) -> None:
        await self.gate.wait()
        self.calls.append(items)

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.calls) < count:
                await asyncio.sleep(0)


def _kind(item: dict) -> str | None:
    return item["kind"] if item["kind"] in ("state", "stats") else None


def at_limit() -> SegmentPacer:
    """One segment, then no more turns within any test."""
    return SegmentPacer(max_segments=1, per_s=3600.0)


async def test_a_full_queue_lets_its_oldest_go_counted() -> None:
    queue = PacedQueue(Sink(), max_items=3)
    assert all(queue.put(i) for i in range(5))
    assert list(queue) == [2, 3, 4] and queue.dropped == 2 and queue.coalesced == 0


async def test_a_newer_item_of_a_coalesced_kind_replaces_the_queued_one_where_it_stands() -> None:
    queue = PacedQueue(Sink(), max_items=10, key=_kind)
    for n, kind in enumerate(["state", "error", "stats", "state", "error", "state", "stats"]):
        queue.put({"kind": kind, "n": n})
    assert [(item["kind"], item["n"]) for item in queue] == [
        ("state", 5),  # the latest state, in the first state's place
        ("error", 1),  # items without a key all stay, in order
        ("stats", 6),
        ("error", 4),
    ]
    assert queue.coalesced == 3 and queue.dropped == 0


async def test_coalescing_makes_no_room_and_a_full_queue_still_drops_the_oldest() -> None:
    queue = PacedQueue(Sink(), max_items=2, key=_kind)
    queue.put({"kind": "state", "n": 0})
    queue.put({"kind": "error", "n": 1})
    queue.put({"kind": "state", "n": 2})  # replaces n=0: no drop
    queue.put({"kind": "error", "n": 3})  # full: the oldest (state n=2) goes
    assert [item["n"] for item in queue] == [1, 3] and queue.dropped == 1 and queue.coalesced == 1


async def test_one_at_a_time_in_order() -> None:
    sink = Sink()
    queue = PacedQueue(sink, max_items=100).start()
    for i in range(20):
        queue.put(i)
    await sink.until(20)
    await queue.close()
    assert sink.calls == [[i] for i in range(20)]


async def test_batch_sends_what_waits_as_one() -> None:
    sink = Sink()
    sink.gate.clear()  # the first send is held: what comes meanwhile waits for the next
    queue = PacedQueue(sink, max_items=100, batch=True).start()
    queue.put("a")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for item in "bcd":
        queue.put(item)
    sink.gate.set()
    await sink.until(2)
    await queue.close()
    assert sink.calls == [["a"], ["b", "c", "d"]]


async def test_the_pacer_holds_the_sender_and_close_sends_what_waits_unpaced_in_order() -> None:
    sink = Sink()
    queue = PacedQueue(sink, max_items=100, pacer=at_limit()).start()
    for i in range(4):
        queue.put(i)
    await sink.until(1)
    for _ in range(5):
        await asyncio.sleep(0)
    assert sink.calls == [[0]]  # no second turn
    assert queue.put(None)  # still open: accepted
    await queue.close()
    assert sink.calls == [[0], [1], [2], [3], [None]]
    assert not queue.put(5)  # closed: nothing more is taken


async def test_in_batch_what_comes_while_the_pacer_holds_joins_the_batch() -> None:
    sink = Sink()
    queue = PacedQueue(sink, max_items=100, batch=True, pacer=at_limit()).start()
    queue.put(0)
    await sink.until(1)
    for i in range(1, 6):
        queue.put(i)
    await queue.close()
    assert sink.calls == [[0], [1, 2, 3, 4, 5]]


async def test_a_queue_never_started_sends_at_close() -> None:
    sink = Sink()
    queue = PacedQueue(sink, max_items=10, batch=True)
    queue.put("x")
    queue.put("y")
    await queue.close()
    assert sink.calls == [["x", "y"]]
    empty = Sink()
    await PacedQueue(empty, max_items=10, batch=True).close()
    assert empty.calls == []  # nothing queued: no segment at all


async def test_a_failing_send_is_logged_and_the_sender_goes_on() -> None:
    sent: list[list] = []

    async def send(items: list) -> None:
        if items == [1]:
            raise RuntimeError("send bug")
        sent.append(items)

    queue = PacedQueue(send, max_items=10).start()
    for i in range(3):
        queue.put(i)
    await queue.close()
    assert sent == [[0], [2]]


async def test_what_is_still_queued_when_close_gives_up_is_dropped_counted() -> None:
    sink = Sink()
    sink.gate.clear()  # the channel never takes a segment
    queue = PacedQueue(sink, max_items=10).start()
    for i in range(4):
        queue.put(i)
    await asyncio.sleep(0)
    await queue.close(timeout=0.05)
    assert sink.calls == [] and queue.dropped == 3  # (the one under way was cut)
    assert len(queue) == 0


async def test_events_put_on_the_channel_coalesce_and_keep_their_order(relay_server) -> None:
    url = relay_server.url("events")
    await create_channel(url, "application/json")
    events = EventsPublisher(url, heartbeat_interval=0, stream_id="s")
    queued = [
        {"type": "stream_state", "state": "starting"},
        {"type": "receive_first_ingest_segment"},
        {"type": "stream_state", "state": "running"},
        {"type": "error", "message": "one"},
        {"type": "status", "n": 1},
        {"type": "error", "message": "two"},
        {"type": "status", "n": 2},
    ]
    for event in queued:  # before start: they wait for the sender
        assert events.put(event)
    got: list[dict] = []

    async def read() -> None:
        async with TrickleSubscriber(url, start_seq=0, connect_timeout=10) as sub:
            async for segment in sub:
                got.append(json.loads(await segment.read())["event"])

    reading = asyncio.create_task(read())
    events.start()
    await events.close()  # the queued events go first
    await asyncio.wait_for(reading, 30)
    assert [(e["type"], e.get("state") or e.get("message") or e.get("n")) for e in got] == [
        ("stream_state", "running"),
        ("receive_first_ingest_segment", None),
        ("error", "one"),
        ("status", 2),
        ("error", "two"),
    ]
    assert events.coalesced == 2 and events.dropped == 0 and events.sent == 5
    assert not events.put({"type": "late"})
