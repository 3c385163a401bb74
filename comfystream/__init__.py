"""comfystream: run ComfyUI workflows on live video."""

__version__ = "0.1.0"
