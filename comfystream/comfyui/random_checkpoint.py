"""`comfystream make-test-checkpoint`: an SD 1.5 checkpoint with seeded random weights.

No model weights can be downloaded for tests, so the project builds its own: the modules are
ComfyUI's own classes (its SD 1.5 model config, its CLIP-L text model, its KL autoencoder),
instantiated on the `meta` device to learn every key and shape without allocating, then each
tensor is filled from one seeded generator and saved as safetensors with the key layout of a
real SD 1.5 checkpoint (`model.diffusion_model.`, `cond_stage_model.transformer.text_model.`,
`first_stage_model.`). ComfyUI's checkpoint detection, CLIP, VAE, KSampler and model
management then take their real paths; only the pictures are noise.

ComfyUI is imported in this process (`load_workspace`), so run it as its own command.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FORMAT = "comfystream-random-sd15/1"

# SD 1.5's UNet, as ComfyUI's model detection finds it in a real checkpoint.
SD15_UNET = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# SD 1.5's autoencoder (ComfyUI's default KL VAE).
SD15_VAE = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def checkpoint_layout(torch: Any, dtype: Any) -> dict[str, Any]:
    """Every key of an SD 1.5 checkpoint with a `meta` tensor of its shape and dtype, from
    ComfyUI's own classes (ComfyUI must be imported already)."""
    import comfy.ldm.models.autoencoder as autoencoder
    import comfy.model_detection
    import comfy.sd1_clip

    model_config = comfy.model_detection.model_config_from_unet_config({**SD15_UNET, "dtype": dtype})
    if model_config is None or type(model_config).__name__ != "SD15":
        raise RuntimeError(f"ComfyUI does not detect this UNet config as SD 1.5 (got {model_config!r})")
    model = model_config.get_model({}, device="meta")
    clip = comfy.sd1_clip.SD1ClipModel(device="meta", dtype=dtype)
    with torch.device("meta"):
        vae = autoencoder.AutoencoderKL(ddconfig=dict(SD15_VAE), embed_dim=4)
    return model.state_dict_for_saving(clip.state_dict(), vae.state_dict())


def random_tensor(torch: Any, name: str, like: Any, generator: Any, dtype: Any) -> Any:
    """A plausible random value for one weight: scale 1 for norms, 0.02 for embeddings, fan-in
    scaled normals for linear and conv weights, small biases. Finite through the whole model
    (outputs are noise, never NaN)."""
    shape = tuple(like.shape)
    if not like.is_floating_point():
        return torch.zeros(shape, dtype=like.dtype)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "weight" and len(shape) == 1:  # a norm's scale
        value = 1.0 + 0.02 * torch.randn(shape, generator=generator)
    elif leaf == "bias" or len(shape) <= 1:
        value = 0.02 * torch.randn(shape, generator=generator)
    elif "embedding" in name:
        value = 0.02 * torch.randn(shape, generator=generator)
    else:
        fan_in = math.prod(shape[1:])
        value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
    return value.to(dtype if like.dtype == dtype else like.dtype)


def make_checkpoint(out: str | os.PathLike[str], seed: int = 0, dtype_name: str = "float16") -> dict[str, Any]:
    """Write the checkpoint to `out` (atomically); ComfyUI must be imported already."""
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    layout = checkpoint_layout(torch, dtype)
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: random_tensor(torch, name, like, generator, dtype) for name, like in sorted(layout.items())}
    metadata = {"format": FORMAT, "seed": str(seed), "dtype": dtype_name}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out),
        "keys": len(tensors),
        "parameters": sum(t.numel() for t in tensors.values()),
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - start, 1),
        **metadata,
    }


def existing_checkpoint(out: str | os.PathLike[str], seed: int, dtype_name: str) -> bool:
    """Whether `out` is already this command's checkpoint for the same seed and dtype."""
    try:
        from safetensors import safe_open

        # numpy, not pt: only the header is read, and "pt" imports torch (a second of CPU) for it
        with safe_open(str(out), framework="numpy") as f:
            meta = f.metadata() or {}
    except Exception:
        return False
    return meta == {"format": FORMAT, "seed": str(seed), "dtype": dtype_name}
