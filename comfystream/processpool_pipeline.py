"""The seed's import path: `from comfystream.processpool_pipeline import ProcessPoolPipeline`."""

from comfystream.pipeline.processpool import ProcessPoolPipeline

__all__ = ["ProcessPoolPipeline"]
