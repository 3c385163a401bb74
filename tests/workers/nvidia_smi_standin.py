"""A stand-in `nvidia-smi` for machines without a GPU: it answers the queries comfystream makes
exactly as nvidia-smi formats them, from a JSON file of GPUs, and fails as nvidia-smi does.

    install(bin_dir, gpus) -> state file   writes `bin_dir/nvidia-smi` (put bin_dir first on PATH)
    write_state(state_file, gpus)          changes what it reports (e.g. less free memory)

Each GPU is a dict of query fields ("index", "uuid", "name", "memory.total", "memory.free",
"memory.used", "utilization.gpu"); a value may be "[N/A]" as nvidia-smi prints it.

What it mirrors (nvidia-smi's behaviour): `-L` lines `GPU 0: NAME (UUID: GPU-...)`;
`--query-gpu=a,b --format=csv[,noheader][,nounits]` one line per GPU, values joined by ", ",
memory with " MiB" and utilization with " %" unless nounits, a header line
(`memory.total [MiB]`) unless noheader; an unknown field prints
`Field "x" is not a valid field to query.` and a blank line on stdout and exits 2; a query without
--format, or an unknown option, prints an error on stdout and exits 2 (nvidia-smi's "invalid
argument" status; the exact code for an unknown option is our assumption).
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

UNITS = {"memory.total": "MiB", "memory.free": "MiB", "memory.used": "MiB", "utilization.gpu": "%"}
FIELDS = {"index", "uuid", "name", "memory.total", "memory.free", "memory.used", "utilization.gpu"}
ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid"}


def write_state(state_file: Path, gpus: list[dict]) -> None:
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(gpus))
    tmp.replace(state_file)


def install(bin_dir: Path, gpus: list[dict]) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state = bin_dir / "gpus.json"
    write_state(state, gpus)
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "{state}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return state


def _value(gpu: dict, field: str, units: bool) -> str:
    value = str(gpu[field])
    if units and field in UNITS and not value.startswith("["):
        return f"{value} {UNITS[field]}"
    return value


def main(argv: list[str]) -> int:
    gpus = json.loads(Path(argv[0]).read_text())
    args = argv[1:]
    if args in (["-L"], ["--list-gpus"]):
        for gpu in gpus:
            print(f"GPU {gpu['index']}: {gpu['name']} (UUID: {gpu['uuid']})")
        return 0
    query = fmt = None
    for arg in args:
        if arg.startswith("--query-gpu="):
            query = arg.split("=", 1)[1]
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
        else:
            print(f"ERROR: Option {arg} is not recognized. Please run 'nvidia-smi -h'.")
            return 2
    if query is None or fmt is None:
        print("ERROR: Option --query-gpu requires --format. Please run 'nvidia-smi -h'.")
        return 2
    flags = fmt.split(",")
    if "csv" not in flags or not set(flags) <= {"csv", "noheader", "nounits"}:
        print(f"\"{fmt}\" is not a valid format. Please run 'nvidia-smi -h'.")
        return 2
    fields = [ALIASES.get(f.strip(), f.strip()) for f in query.split(",")]
    for field in fields:
        if field not in FIELDS:
            print(f'Field "{field}" is not a valid field to query.\n')
            return 2
    units = "nounits" not in flags
    if "noheader" not in flags:
        print(", ".join(f"{f} [{UNITS[f]}]" if units and f in UNITS else f for f in fields))
    for gpu in gpus:
        print(", ".join(_value(gpu, f, units) for f in fields))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
