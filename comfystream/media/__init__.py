"""Media: MPEG-TS segments <-> frames (PyAV), and frames <-> RGB arrays / IMAGE tensors.

Names are imported lazily so that a process that only moves bytes (or only uses the test
pattern) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "frame_to_tensor": "convert",
    "tensor_to_frame": "convert",
    "frame_to_ndarray": "convert",
    "ndarray_to_frame": "convert",
    "SegmentDecoder": "decoder",
    "DecoderStats": "decoder",
    "SegmentEncoder": "encoder",
    "EncodedChunk": "encoder",
    "MIME_TYPE": "encoder",
    "make_index_frame": "testpattern",
    "read_index": "testpattern",
    "PatternError": "testpattern",
}

__all__ = [
    "MIME_TYPE",
    "DecoderStats",
    "EncodedChunk",
    "PatternError",
    "SegmentDecoder",
    "SegmentEncoder",
    "frame_to_ndarray",
    "frame_to_tensor",
    "make_index_frame",
    "ndarray_to_frame",
    "read_index",
    "tensor_to_frame",
]

if TYPE_CHECKING:
    from .convert import frame_to_ndarray, frame_to_tensor, ndarray_to_frame, tensor_to_frame
    from .decoder import DecoderStats, SegmentDecoder
    from .encoder import MIME_TYPE, EncodedChunk, SegmentEncoder
    from .testpattern import PatternError, make_index_frame, read_index


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
