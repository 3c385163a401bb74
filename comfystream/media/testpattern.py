"""A test pattern that carries a frame index in its pixels, robust to H.264 and to an invert.

The frame is a grid of 8 x 5 big blocks, each black or white: two marker blocks (white,
black) that tell whether the frame was inverted, 19 index bits and their 19 complements.
Reading averages the centre of each block, so codec ringing at block edges does not matter,
and the complements catch a frame that is not a pattern at all (or was read with the wrong
``inverted``).
"""

from __future__ import annotations

import numpy as np

GRID_COLS = 8
GRID_ROWS = 5
INDEX_BITS = 19
MAX_INDEX = (1 << INDEX_BITS) - 1
_MARKERS = (255, 0)  # blocks 0 and 1
_HIGH, _LOW = 235, 20  # within the video range, so limited-range yuv keeps them apart


class PatternError(ValueError):
    """The image does not hold a readable index pattern."""


def _block_values(index: int) -> list[int]:
    bits = [(index >> b) & 1 for b in range(INDEX_BITS)]
    values = list(_MARKERS)
    values += [_HIGH if bit else _LOW for bit in bits]
    values += [_LOW if bit else _HIGH for bit in bits]
    return values


def _edges(size: int, parts: int) -> list[int]:
    return [round(i * size / parts) for i in range(parts + 1)]


def make_index_frame(index: int, width: int, height: int) -> np.ndarray:
    """An ``(height, width, 3)`` uint8 RGB image that encodes ``index`` (0..MAX_INDEX)."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} out of range 0..{MAX_INDEX}")
    if width < 2 * GRID_COLS or height < 2 * GRID_ROWS:
        raise ValueError(f"a test pattern needs at least {2 * GRID_COLS}x{2 * GRID_ROWS} pixels")
    img = np.empty((height, width, 3), dtype=np.uint8)
    xs, ys = _edges(width, GRID_COLS), _edges(height, GRID_ROWS)
    for i, value in enumerate(_block_values(index)):
        r, c = divmod(i, GRID_COLS)
        img[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = value
    return img


def read_index(rgb: np.ndarray, inverted: bool = False) -> int:
    """The index held by an image made with :func:`make_index_frame` (after encoding, scaling,
    and, with ``inverted=True``, an invert). Accepts uint8 0..255 or float 0..1, ``HxWx3`` or
    ``1xHxWx3``; raises :class:`PatternError` when the pattern does not check out."""
    arr = np.asarray(rgb)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise PatternError(f"expected an HxWx3 image, got shape {arr.shape}")
    gray = arr[..., :3].astype(np.float32).mean(axis=2)
    if np.issubdtype(arr.dtype, np.floating):
        gray *= 255.0
    if inverted:
        gray = 255.0 - gray
    height, width = gray.shape
    xs, ys = _edges(width, GRID_COLS), _edges(height, GRID_ROWS)
    bits: list[int] = []
    for i in range(GRID_COLS * GRID_ROWS):
        r, c = divmod(i, GRID_COLS)
        y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
        # the centre half of the block: away from edges where the codec smears neighbours
        dy, dx = max((y1 - y0) // 4, 0), max((x1 - x0) // 4, 0)
        block = gray[y0 + dy : y1 - dy, x0 + dx : x1 - dx]
        if block.size == 0:
            raise PatternError(f"image {width}x{height} is too small for the pattern")
        bits.append(1 if float(block.mean()) >= 128.0 else 0)
    if bits[0] != 1 or bits[1] != 0:
        hint = "not inverted" if inverted else "inverted"
        raise PatternError(f"marker blocks do not match: the image looks {hint} or is not a pattern")
    data = bits[2 : 2 + INDEX_BITS]
    check = bits[2 + INDEX_BITS : 2 + 2 * INDEX_BITS]
    if any(d == k for d, k in zip(data, check, strict=True)):
        raise PatternError("index bits and their complements disagree: not a test pattern")
    return sum(bit << b for b, bit in enumerate(data))
