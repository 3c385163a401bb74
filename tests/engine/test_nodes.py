"""Every built-in node against a reference computed here, in numpy / plain Python (not the node's code)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from comfystream.engine import ExecutionContext, compile_prompt
from comfystream.engine.errors import ExecutionError
from tests.engine.conftest import run_node

rng = np.random.default_rng(1234)


def rand_image(b=1, h=9, w=11, c=3) -> torch.Tensor:
    return torch.from_numpy(rng.random((b, h, w, c), dtype=np.float32))


def close(a, b, atol=1e-5):
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


# --- reference maths ------------------------------------------------------------------------


def ref_gaussian(k: int, sigma: float) -> np.ndarray:
    coords = [-1 + 2 * i / (k - 1) for i in range(k)]
    g = np.array([[math.exp(-(x * x + y * y) / (2 * sigma * sigma)) for y in coords] for x in coords])
    return g / g.sum()


def ref_correlate_reflect(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """[B,H,W,C] correlated with a square kernel over a reflect-padded image."""
    r = kernel.shape[0] // 2
    b, h, w, c = img.shape
    padded = np.pad(img, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(img, dtype=np.float64)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[:, dy : dy + h, dx : dx + w, :]
    return out


def ref_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Half-pixel-centre bilinear (align_corners=False) on [B,H,W,C]."""
    b, h, w, c = img.shape

    def coords(n_out, n_in):
        src = [(i + 0.5) * n_in / n_out - 0.5 for i in range(n_out)]
        src = [max(s, 0.0) for s in src]
        lo = [min(int(math.floor(s)), n_in - 1) for s in src]
        hi = [min(i + 1, n_in - 1) for i in lo]
        frac = [s - i for s, i in zip(src, lo, strict=True)]
        return lo, hi, frac

    ylo, yhi, yf = coords(out_h, h)
    xlo, xhi, xf = coords(out_w, w)
    out = np.zeros((b, out_h, out_w, c))
    for i in range(out_h):
        for j in range(out_w):
            top = img[:, ylo[i], xlo[j]] * (1 - xf[j]) + img[:, ylo[i], xhi[j]] * xf[j]
            bot = img[:, yhi[i], xlo[j]] * (1 - xf[j]) + img[:, yhi[i], xhi[j]] * xf[j]
            out[:, i, j] = top * (1 - yf[i]) + bot * yf[i]
    return out


# --- nodes ----------------------------------------------------------------------------------


def test_image_invert(registry):
    x = rand_image()
    (out,), _ = run_node(registry, "ImageInvert", {"image": x})
    close(out, 1.0 - x.numpy())


@pytest.mark.parametrize("radius,sigma", [(1, 1.0), (3, 2.5)])
def test_image_blur(registry, radius, sigma):
    x = rand_image(2, 12, 10)
    (out,), _ = run_node(registry, "ImageBlur", {"image": x, "blur_radius": radius, "sigma": sigma})
    close(out, ref_correlate_reflect(x.numpy(), ref_gaussian(2 * radius + 1, sigma)), atol=1e-5)


@pytest.mark.parametrize("radius,sigma,alpha", [(1, 1.0, 1.0), (2, 0.7, 0.3)])
def test_image_sharpen(registry, radius, sigma, alpha):
    x = rand_image(1, 10, 12)
    (out,), _ = run_node(
        registry, "ImageSharpen", {"image": x, "sharpen_radius": radius, "sigma": sigma, "alpha": alpha}
    )
    k = ref_gaussian(2 * radius + 1, sigma) * -(alpha * 10)
    k[radius, radius] += -k.sum() + 1.0
    close(out, np.clip(ref_correlate_reflect(x.numpy(), k), 0, 1), atol=1e-4)


def test_image_scale_bilinear_and_keep_aspect(registry):
    x = rand_image(1, 8, 12)
    (out,), _ = run_node(
        registry,
        "ImageScale",
        {"image": x, "upscale_method": "bilinear", "width": 7, "height": 5, "crop": "disabled"},
    )
    close(out, ref_bilinear(x.numpy(), 5, 7), atol=1e-5)
    # width 0: keep the aspect ratio (8x12 at height 4 -> width 6)
    (out,), _ = run_node(
        registry,
        "ImageScale",
        {"image": x, "upscale_method": "area", "width": 0, "height": 4, "crop": "disabled"},
    )
    blocks = x.numpy().reshape(1, 4, 2, 6, 2, 3).mean(axis=(2, 4))
    close(out, blocks)
    # both 0: unchanged
    (out,), _ = run_node(
        registry,
        "ImageScale",
        {"image": x, "upscale_method": "area", "width": 0, "height": 0, "crop": "disabled"},
    )
    close(out, x)


def test_image_scale_center_crop_and_nearest(registry):
    x = rand_image(1, 6, 12)
    # 12x6 to 3x3 with center crop: the middle 6x6 square, then nearest-exact by 2.
    (out,), _ = run_node(
        registry,
        "ImageScale",
        {"image": x, "upscale_method": "nearest-exact", "width": 3, "height": 3, "crop": "center"},
    )
    square = x.numpy()[:, :, 3:9, :]
    expected = square[:, [int((i + 0.5) * 2) for i in range(3)]][:, :, [int((j + 0.5) * 2) for j in range(3)]]
    close(out, expected)


def test_image_scale_lanczos_is_8bit_pil(registry):
    x = rand_image(1, 16, 16)
    (out,), _ = run_node(
        registry,
        "ImageScale",
        {"image": x, "upscale_method": "lanczos", "width": 8, "height": 8, "crop": "disabled"},
    )
    pil = Image.fromarray(np.clip(255.0 * x.numpy()[0], 0, 255).astype(np.uint8)).resize(
        (8, 8), Image.Resampling.LANCZOS
    )
    close(out[0], np.asarray(pil, dtype=np.float32) / 255.0)


def test_image_scale_by(registry):
    x = rand_image(2, 8, 6)
    (out,), _ = run_node(registry, "ImageScaleBy", {"image": x, "upscale_method": "area", "scale_by": 0.5})
    close(out, x.numpy().reshape(2, 4, 2, 3, 2, 3).mean(axis=(2, 4)))
    (out,), _ = run_node(
        registry, "ImageScaleBy", {"image": x, "upscale_method": "nearest-exact", "scale_by": 2.0}
    )
    close(out, np.repeat(np.repeat(x.numpy(), 2, axis=1), 2, axis=2))


def _g(x):
    return np.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, np.sqrt(x))


BLEND_REFS = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: np.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": lambda a, b: np.where(
        b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (_g(a) - a)
    ),
    "difference": lambda a, b: a - b,
}


@pytest.mark.parametrize("mode", list(BLEND_REFS))
def test_image_blend_modes(registry, mode):
    a, b = rand_image(), rand_image()
    factor = 0.3
    (out,), _ = run_node(
        registry, "ImageBlend", {"image1": a, "image2": b, "blend_factor": factor, "blend_mode": mode}
    )
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    expected = np.clip(an * (1 - factor) + BLEND_REFS[mode](an, bn) * factor, 0, 1)
    close(out, expected, atol=1e-5)


def test_image_blend_resizes_image2(registry):
    a, b = rand_image(1, 8, 8), rand_image(1, 4, 4)
    (out,), _ = run_node(
        registry, "ImageBlend", {"image1": a, "image2": b, "blend_factor": 1.0, "blend_mode": "normal"}
    )
    assert tuple(out.shape) == (1, 8, 8, 3)


def test_image_crop(registry):
    x = rand_image(1, 10, 12)
    (out,), _ = run_node(registry, "ImageCrop", {"image": x, "width": 5, "height": 4, "x": 3, "y": 2})
    close(out, x.numpy()[:, 2:6, 3:8])
    # x/y past the edge are clamped to the last pixel; the size shrinks to what is left
    (out,), _ = run_node(registry, "ImageCrop", {"image": x, "width": 5, "height": 5, "x": 50, "y": 50})
    close(out, x.numpy()[:, 9:, 11:])


def test_image_flip(registry):
    x = rand_image()
    (out,), _ = run_node(registry, "ImageFlip", {"image": x, "flip_method": "x-axis: vertically"})
    close(out, x.numpy()[:, ::-1])
    (out,), _ = run_node(registry, "ImageFlip", {"image": x, "flip_method": "y-axis: horizontally"})
    close(out, x.numpy()[:, :, ::-1])


def test_image_rotate_clockwise(registry):
    x = rand_image(1, 3, 5)
    xs = x.numpy()[0]
    h, w = xs.shape[:2]
    cw90 = np.array([[xs[h - 1 - j, i] for j in range(h)] for i in range(w)])  # out[i, j] = in[h-1-j, i]
    (out,), _ = run_node(registry, "ImageRotate", {"image": x, "rotation": "90 degrees"})
    close(out[0], cw90)
    (out,), _ = run_node(registry, "ImageRotate", {"image": x, "rotation": "180 degrees"})
    close(out[0], xs[::-1, ::-1])
    (out,), _ = run_node(registry, "ImageRotate", {"image": x, "rotation": "270 degrees"})
    close(out[0], np.array([[xs[j, w - 1 - i] for j in range(h)] for i in range(w)]))
    (out,), _ = run_node(registry, "ImageRotate", {"image": x, "rotation": "none"})
    close(out, x)


def test_empty_image(registry):
    (out,), _ = run_node(
        registry, "EmptyImage", {"width": 5, "height": 3, "batch_size": 2, "color": 0x336699}
    )
    expected = np.broadcast_to(np.array([0x33, 0x66, 0x99]) / 255.0, (2, 3, 5, 3))
    close(out, expected)


def ref_composite(dst, src, x, y, mask=None):
    out = dst.copy()
    b, sh, sw, _ = src.shape
    for i in range(sh):
        for j in range(sw):
            yy, xx = y + i, x + j
            if 0 <= yy < dst.shape[1] and 0 <= xx < dst.shape[2]:
                m = 1.0 if mask is None else mask[:, i, j, None]
                out[:, yy, xx] = m * src[:, i, j] + (1 - m) * dst[:, yy, xx]
    return out


def test_image_composite_masked(registry):
    dst, src = rand_image(1, 8, 9), rand_image(1, 4, 5)
    (out,), _ = run_node(
        registry,
        "ImageCompositeMasked",
        {"destination": dst, "source": src, "x": 2, "y": 1, "resize_source": False},
    )
    close(out, ref_composite(dst.numpy(), src.numpy(), 2, 1))
    # partly outside the destination, with a mask of the source's size
    mask = torch.from_numpy(rng.random((1, 4, 5), dtype=np.float32))
    (out,), _ = run_node(
        registry,
        "ImageCompositeMasked",
        {"destination": dst, "source": src, "x": 6, "y": 5, "resize_source": False, "mask": mask},
    )
    close(out, ref_composite(dst.numpy(), src.numpy(), 6, 5, mask.numpy()))
    # resize_source: the source covers the whole destination
    (out,), _ = run_node(
        registry,
        "ImageCompositeMasked",
        {"destination": dst, "source": torch.full((1, 2, 2, 3), 0.25), "x": 0, "y": 0, "resize_source": True},
    )
    close(out, np.full((1, 8, 9, 3), 0.25))
    assert not torch.equal(dst, out)  # the input is not modified in place


def test_get_image_size_and_progress_text(registry, recorder):
    x = rand_image(3, 7, 5)
    (w, h, b), _ = run_node(registry, "GetImageSize", {"image": x}, on_event=recorder)
    assert (w, h, b) == (5, 7, 3)
    texts = recorder.of("progress_text")
    assert texts == [
        {"node": "node", "text": "width: 5, height: 7\n batch size: 3", "prompt_id": texts[0]["prompt_id"]}
    ]


def _nearest_palette_share(inp: np.ndarray, out: np.ndarray) -> float:
    """Share of pixels given their nearest palette colour (Pillow's search is approximate)."""
    palette = np.unique(out.reshape(-1, 3), axis=0)
    d = ((inp.reshape(-1, 1, 3) - palette[None]) ** 2).sum(-1)
    chosen = ((out.reshape(-1, 1, 3) - palette[None]) ** 2).sum(-1).argmin(1)
    return float(np.mean(d[np.arange(len(chosen)), chosen] <= d.min(1) + 1e-6))


def test_image_quantize(registry):
    # An image with 4 colours: 256-colour quantization keeps it exactly.
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [255, 255, 255]], dtype=np.float32) / 255.0
    idx = rng.integers(0, 4, size=(6, 7))
    x = torch.from_numpy(colours[idx][None])
    (out,), _ = run_node(registry, "ImageQuantize", {"image": x, "colors": 256, "dither": "none"})
    close(out, x, atol=1e-6)
    # Two colours, no dither: every pixel takes the nearest of the two palette colours.
    y = rand_image(1, 16, 16)
    (out,), _ = run_node(registry, "ImageQuantize", {"image": y, "colors": 2, "dither": "none"})
    yo = out.numpy()[0]
    assert len(np.unique(yo.reshape(-1, 3), axis=0)) <= 2
    y8 = (y.numpy()[0] * 255).astype(np.uint8).astype(np.float32) / 255.0
    assert _nearest_palette_share(y8, yo) > 0.9
    # Ordered dither draws only from the same palette.
    for dither in ("bayer-4", "floyd-steinberg"):
        (dout,), _ = run_node(registry, "ImageQuantize", {"image": y, "colors": 2, "dither": dither})
        used = {tuple(c) for c in np.unique(dout.numpy()[0].reshape(-1, 3), axis=0)}
        assert used <= {tuple(c) for c in np.unique(yo.reshape(-1, 3), axis=0)}


def test_load_tensor_and_save_tensor(registry):
    from comfystream.prompts import DEFAULT_PROMPT

    plan = compile_prompt(DEFAULT_PROMPT, registry)
    x = rand_image(1, 4, 4)
    result = plan.execute_sync(ExecutionContext(frame=x))
    assert len(result.frames) == 1
    close(result.frames[0], 1.0 - x.numpy())
    # no frame: a clear error, not a crash
    with pytest.raises(ExecutionError, match="no input frame"):
        plan.execute_sync(ExecutionContext())
    # a frame source is asked with LoadTensor's timeout_seconds
    asked = []

    def source(timeout):
        asked.append(timeout)
        return x

    prompt = json.loads(json.dumps(DEFAULT_PROMPT))
    prompt["1"]["inputs"]["timeout_seconds"] = 2.5
    result = compile_prompt(prompt, registry).execute_sync(ExecutionContext(frame_source=source))
    assert asked == [2.5]
    close(result.frames[0], 1.0 - x.numpy())


def test_load_image_with_alpha(registry, tmp_path, monkeypatch):
    rgba = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "pic.png")
    monkeypatch.setenv("COMFYSTREAM_INPUT_DIR", str(tmp_path))  # validation looks there (no context yet)
    assert "pic.png" in registry["LoadImage"].INPUT_TYPES()["required"]["image"][0]
    (image, mask), _ = run_node(registry, "LoadImage", {"image": "pic.png"})
    close(image, rgba[None, :, :, :3].astype(np.float32) / 255.0)
    close(mask, 1.0 - rgba[None, :, :, 3].astype(np.float32) / 255.0)
    # a path works too where the local CLI allows paths outside the folders (over HTTP it does not)
    from comfystream.nodes.folders import PathOutsideFolders, outside_paths_allowed

    monkeypatch.delenv("COMFYSTREAM_INPUT_DIR")
    with outside_paths_allowed():
        (image2, _), _ = run_node(registry, "LoadImage", {"image": str(tmp_path / "pic.png")})
    close(image2, image)
    with pytest.raises(PathOutsideFolders):
        registry["LoadImage"]().load_image(str(tmp_path / "pic.png"))


def test_load_image_missing_file_fails_validation(registry):
    from comfystream.engine import validate_prompt

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "/nonexistent/x.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    result = validate_prompt(prompt, registry)
    assert not result.ok
    err = result.node_errors["1"]["errors"][0]
    assert err["type"] == "custom_validation_failed"
    assert err["details"] == "image - Invalid image file: /nonexistent/x.png"


def test_save_image_and_preview(registry, tmp_path):
    x = torch.tensor([[[[0.5, 1.2, -0.1], [0.999, 0.0, 0.25]]]])  # 1x1x2x3
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 1, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run/test"}},
    }
    # Feed x instead of the empty image through a LoadTensor.
    prompt["1"] = {"class_type": "LoadTensor", "inputs": {}}
    plan = compile_prompt(prompt, registry)
    result = plan.execute_sync(ExecutionContext(frame=x, output_dir=str(tmp_path)))
    ui = result.outputs["2"]["images"]
    assert ui == [{"filename": "test_00001_.png", "subfolder": "run", "type": "output"}]
    saved = Image.open(tmp_path / "run" / "test_00001_.png")
    expected = np.clip(255.0 * x.numpy()[0], 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(saved), expected)
    assert json.loads(saved.text["prompt"])["2"]["class_type"] == "SaveImage"
    # the counter moves on
    result = plan.execute_sync(ExecutionContext(frame=x, output_dir=str(tmp_path)))
    assert result.outputs["2"]["images"][0]["filename"] == "test_00002_.png"

    preview = {"1": prompt["1"], "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = compile_prompt(preview, registry).execute_sync(
        ExecutionContext(frame=x, output_dir=str(tmp_path))
    )
    (entry,) = result.outputs["2"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert (tmp_path / "temp" / entry["filename"]).is_file()
