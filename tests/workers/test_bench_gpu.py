"""The GPU stand-in model (examples/custom_nodes) and bench/gpu.py, run here on the CPU, scaled down."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

from comfystream.engine import ExecutionContext, compile_prompt
from comfystream.nodes import build_registry

ROOT = Path(__file__).resolve().parent.parent.parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_standin_model_runs_as_a_custom_node_on_the_cpu():
    bench = _load("bench_gpu", ROOT / "bench" / "gpu.py")
    registry = build_registry(custom_node_dirs=[str(bench.NODES_DIR)])
    standin = bench.load_standin()
    frame = torch.rand((1, 24, 32, 3), generator=torch.Generator().manual_seed(3))
    outputs = []
    for seed in (0, 0, 1):
        plan = compile_prompt(standin.prompt(channels=4, layers=2, seed=seed), registry)
        outputs.append(plan.execute_sync(ExecutionContext(prompt_id=f"s{seed}", frame=frame)).frames[0])
    first, again, other = outputs
    assert first.shape == frame.shape and first.dtype == torch.float32 and first.device.type == "cpu"
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    assert torch.equal(first, again), "random weights, but seeded: the same every run"
    assert not torch.equal(first, other) and not torch.equal(first, frame)
    assert (first - frame).abs().max() <= 0.1 + 1e-6, "a small residual on the input picture"
    # Sized by its parameters: parameters grow with channels^2 * layers.
    small = standin.build_model(4, 1, 0, torch.device("cpu"), torch.float32)
    big = standin.build_model(16, 4, 0, torch.device("cpu"), torch.float32)
    assert sum(p.numel() for p in big.parameters()) > 20 * sum(p.numel() for p in small.parameters())


async def test_bench_gpu_runs_scaled_down_on_the_cpu(no_leaks, capsys):
    bench = _load("bench_gpu", ROOT / "bench" / "gpu.py")
    args = bench.parse_args(
        ["--device", "cpu", "--streams", "2", "--size", "32", "--fps", "10", "--duration", "2",
         "--warmup", "0.2", "--channels", "4", "--layers", "1", "--floor-frames", "5"]
    )  # fmt: skip
    result = await bench.main_async(args)
    printed = capsys.readouterr().out
    assert "floor (plain loop, this process)" in printed and " 2 stream(s): out" in printed
    assert result["floor"]["fps"] > 0 and result["floor"]["copies_up"] is None  # no profiler on the CPU
    (row,) = result["rows"]
    assert row["streams"] == 2 and row["fps_mean"] > 0 and row["sent"] > 0
    assert row["latency_p50_ms"] is not None and row["latency_p50_ms"] <= row["latency_p99_ms"]
    assert math.isfinite(row["vs_floor_throughput"]) and row["vs_floor_throughput"] > 0
    assert row["torch_reserved_mib"] is None, "no GPU memory on the CPU"
