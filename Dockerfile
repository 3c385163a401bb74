# syntax=docker/dockerfile:1
# comfystream on NVIDIA GPUs. Build and run (the host needs the NVIDIA driver and the NVIDIA
# Container Toolkit; see README.md "GPU image"):
#   docker build -t comfystream:gpu .
#   docker run --gpus all --init --shm-size=1g -p 8000:8000 comfystream:gpu
# (--shm-size: frames cross to the workers through /dev/shm, 64 MB by default in a container.)
# The CUDA runtime comes with torch's wheels (PyPI's Linux torch is the CUDA build, with the
# nvidia-* libraries as its dependencies), so the base image needs no CUDA toolkit; the driver,
# and nvidia-smi (which placement reads), are mounted in by the toolkit at `docker run --gpus`.
FROM python:3.11-slim-bookworm

# Where torch comes from: PyPI by default (CUDA-enabled). A PyTorch index picks another CUDA,
# e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=""
ARG UID=1000

# What the NVIDIA runtime exposes: compute for CUDA, utility for nvidia-smi (placement by free
# memory, /hardware/*), video for NVENC/NVDEC should a workspace node use them.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    PATH=/app/.venv/bin:$PATH

# git: comfy-cli clones ComfyUI (comfystream setup-workspace). PyAV's wheel brings its own FFmpeg.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid "${UID}" --shell /usr/sbin/nologin comfystream \
    && mkdir -p /app /workspace \
    && chown comfystream:comfystream /app /workspace
WORKDIR /app
USER comfystream

# torch first, in its own layer (several GB): pinned as everywhere (scripts/constraints.txt), and
# checked to be a CUDA build, which a CPU-only wheel would silently not be.
COPY --chown=comfystream:comfystream scripts/constraints.txt scripts/constraints.txt
RUN python -m venv /app/.venv \
    && pip install -c scripts/constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0" \
    && python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch ' + torch.__version__ + ' has no CUDA')"

# comfystream with the workspace extras (comfy-cli), so that `comfystream setup-workspace` works
# in the container; the examples (the GPU stand-in model) and bench/ come along in /app.
COPY --chown=comfystream:comfystream . /app
RUN pip install -c scripts/constraints.txt ".[workspace]" \
    && mkdir -p /app/input /app/output

EXPOSE 8000
# /health answers 200 while the server runs (its body's status: LOADING, IDLE, OK or ERROR); the
# server listens on 8000 unless told otherwise: another --port needs --health-cmd too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["comfystream"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
