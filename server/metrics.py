"""Prometheus metrics on a registry of the app's own, so several apps in one process never clash."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4"


@dataclass
class StreamSample:
    """What the collector reads from one live stream at scrape time."""

    stream_id: str
    architecture: str
    stats: dict[str, Any]
    workers: list[dict[str, Any]] = field(default_factory=list)


class _StreamCollector(Collector):
    def __init__(self, samples: Callable[[], Iterable[StreamSample]]) -> None:
        self._samples = samples

    def collect(self) -> Iterable[Metric]:
        samples = list(self._samples())
        active = GaugeMetricFamily("comfystream_streams_active", "Streams running now (trickle and WebRTC)")
        active.add_metric([], len(samples))
        fps_in = GaugeMetricFamily(
            "comfystream_stream_fps_in", "Input frames per second", labels=["stream_id"]
        )
        fps_out = GaugeMetricFamily(
            "comfystream_stream_fps", "Processed frames per second (output)", labels=["stream_id"]
        )
        gauges = {
            key: GaugeMetricFamily(f"comfystream_stream_{key}", help_, labels=["stream_id"])
            for key, help_ in (
                ("input_fps", "Frames per second arriving (decoded)"),
                ("worker_fps", "Frames per second the worker can do (1 / its time per frame)"),
                ("output_fps", "Frames per second leaving the pipeline"),
                ("skip_ratio", "Skipped / received over the last seconds"),
            )
        }
        latency = GaugeMetricFamily(
            "comfystream_stream_latency_ms",
            "Latency quantiles over the last 1000 frames, ingest to publish (ms)",
            labels=["stream_id", "quantile"],
        )
        counters = {
            key: CounterMetricFamily(f"comfystream_stream_frames_{key}", help_, labels=["stream_id"])
            for key, help_ in (
                ("received", "Input frames decoded"),
                ("processed", "Frames processed by the worker"),
                ("dropped", "Input frames not sent (skipped: late, overload or workflow error)"),
                ("skipped_late", "Frames skipped: they could not come out within the latency budget"),
                ("skipped_overload", "Frames skipped: the worker is slower than the input"),
                ("passed_through", "Frames sent unprocessed (no worker ready: start, restart)"),
                ("published", "Frames encoded and published"),
            )
        }
        restarts = CounterMetricFamily(
            "comfystream_stream_worker_restarts", "Worker restarts (crash or request)", labels=["stream_id"]
        )
        memory = GaugeMetricFamily(
            "comfystream_worker_memory_bytes",
            "A stream worker's resident memory (/proc/PID/status): private (its anonymous pages: its "
            "heap), shared (shared memory and files it maps: weights shared with other workers, "
            "frame rings, libraries), rss (both)",
            labels=["stream_id", "pid", "kind"],
        )
        for s in samples:
            for w in s.workers:
                for kind, value in (w.get("memory") or {}).items():
                    memory.add_metric([s.stream_id, str(w.get("pid")), kind], float(value))
            fps_in.add_metric([s.stream_id], float(s.stats.get("fps_in") or 0.0))
            fps_out.add_metric([s.stream_id], float(s.stats.get("fps_out") or 0.0))
            for key, family in counters.items():
                family.add_metric([s.stream_id], float(s.stats.get(key) or 0))
            for key, family in gauges.items():
                family.add_metric([s.stream_id], float(s.stats.get(key) or 0.0))
            for q, value in (s.stats.get("latency_ms") or {}).items():
                if value is not None:
                    latency.add_metric([s.stream_id, f"0.{q[1:]}"], float(value))
            restarts.add_metric([s.stream_id], float(sum(int(w.get("restarts") or 0) for w in s.workers)))
        yield active
        yield fps_in
        yield fps_out
        yield from counters.values()
        yield from gauges.values()
        yield latency
        yield restarts
        yield memory


class ServerMetrics:
    """The app's metrics: event counters here, live stream figures read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.streams_started = Counter(
            "comfystream_streams_started", "Streams started", ["architecture"], registry=self.registry
        )
        self.streams_stopped = Counter(
            "comfystream_streams_stopped", "Streams stopped", ["reason"], registry=self.registry
        )
        self.requests_rejected = Counter(
            "comfystream_stream_requests_rejected",
            "Stream API requests rejected",
            ["status"],
            registry=self.registry,
        )
        self.prompt_updates = Counter(
            "comfystream_prompt_updates", "Prompt updates applied", ["source"], registry=self.registry
        )
        self.frames_dropped = Counter(
            "comfystream_frames_dropped",
            "Input frames dropped under backpressure, over all streams (finished ones included)",
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "comfystream_worker_restarts",
            "Worker restarts over all streams (finished ones included)",
            registry=self.registry,
        )

    def watch_streams(self, samples: Callable[[], Iterable[StreamSample]]) -> None:
        self.registry.register(_StreamCollector(samples))

    def render(self) -> bytes:
        return generate_latest(self.registry)
