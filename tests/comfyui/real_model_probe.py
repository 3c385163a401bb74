"""ComfyUI's own execution of img2img prompts on given frames, in a fresh process; the reference
for the SD 1.5 tests (tests/comfyui/sd15.py). Usage:
`python real_model_probe.py COMFYUI MODEL_PATHS.yaml FRAMES.npy PROMPTS.json CELLS.json OUT.npy`
(OUT: float32 [prompts, 2, frames, H, W, 3]: the frame made a float IMAGE as a worker does ([:, 0])
and as LoadImage reads a PNG of it ([:, 1]); CELLS: [prompt, conversion, frame] triples, the only
ones run (each frame costs seconds of CPU); the others are NaN).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, for bench/

from bench.comfyui_native import NativeRunner, load_comfyui  # noqa: E402
from workers.tensors import rgb_to_image  # noqa: E402


def main() -> None:
    comfyui, model_paths, frames_path, prompts_path, cells_path, out_path = sys.argv[1:7]
    load_comfyui(comfyui, [model_paths], threads=1)  # as a worker runs (torch_threads 1)
    frames = np.load(frames_path)
    prompts = json.loads(Path(prompts_path).read_text())
    cells = sorted(tuple(cell) for cell in json.loads(Path(cells_path).read_text()))
    conversions = (
        lambda rgb: rgb_to_image(torch, rgb),  # a stream's frame, as a worker hands it to the prompt
        lambda rgb: torch.from_numpy(rgb.astype(np.float32) / 255.0)[None],  # LoadImage's
    )
    out = np.full((len(prompts), len(conversions), *frames.shape), np.nan, dtype=np.float32)
    runners = {}
    for prompt, conversion, frame in cells:  # in order: one prompt's frames run back to back
        runner = runners.setdefault(prompt, NativeRunner(prompts[prompt]))
        image = runner.run(conversions[conversion](frames[frame]))[0][0]
        out[prompt, conversion, frame] = image.float().cpu().numpy()
    np.save(out_path, out)

if __name__ == "__main__":
    main()
