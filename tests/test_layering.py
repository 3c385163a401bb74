"""comfystream is the library: it must not import server or workers (DESIGN.md section 1)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_comfystream_imports_neither_server_nor_workers():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_roots(p) & {"server", "workers"})
        for p in (ROOT / "comfystream").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_workers_do_not_import_server():
    offenders = [str(p) for p in (ROOT / "workers").rglob("*.py") if "server" in _imported_roots(p)]
    assert offenders == []
