"""Writes a stand-in `torchvision` package so that ComfyUI imports on a machine without torchvision.

ComfyUI imports torchvision at module level in a few model files, but none of the nodes these
tests run use it; any use of the stand-in raises. Usage: `python torchvision_standin.py DIR`,
then put DIR on PYTHONPATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

_INIT = '''"""Stand-in torchvision (comfystream tests): importable, and any use raises."""


def _missing(name):
    class _Missing:
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(f"torchvision.{name} is a stand-in here: install torchvision")

    _Missing.__name__ = name
    return _Missing


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)


from . import transforms  # noqa: E402,F401
'''

_TRANSFORMS = """from .. import _missing


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing("transforms." + name)
"""


def write_standin(directory: str | Path) -> Path:
    """Creates DIR/torchvision; returns DIR."""
    root = Path(directory)
    package = root / "torchvision"
    (package / "transforms").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(_INIT)
    (package / "transforms" / "__init__.py").write_text(_TRANSFORMS)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: torchvision_standin.py DIR")
    print(write_standin(sys.argv[1]))
