"""The project's floors (docs/DESIGN.md section 1): comfystream <- workers <- server, no
arrow up between them, no import circle between modules, and none between the rooms (sub-packages)
of one floor.

Every import counts, the ones inside functions too: a deferred import is still an arrow, only a
hidden one.

comfystream's rooms, lowest first; a room imports only rooms before it (COMFYSTREAM_ROOMS):

    comfystream (its __init__: the version) < json_limits < prompts < media
        < engine      graphs: parse, validate, plan, execute; the node API (context, progress)
        < nodes       the built-in nodes, on the engine's node API; build_registry
        < comfyui     a ComfyUI workspace's nodes beside them; the workflow CLI (validate, execute)
        < pipeline    frames to worker processes and back: the backend protocol, job types
        < trickle     the trickle protocol: subscriber, publisher, relay

pipeline and trickle import none of engine, nodes and comfyui (the worker processes run those,
behind the backend); they sit at the top of one line so that the rule stays one comparison.

The server reaches worker processes through comfystream.pipeline.backend's protocol alone: its one
arrow into workers/ is the import of ProcessPoolBackend by the module that builds the app's backend."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = ("comfystream", "workers", "server")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for floor in FLOORS for p in (ROOT / floor).rglob("*.py")}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module `name` (or a name imported from it) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    """The project modules `module` imports, anywhere in its body."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(
                    package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                )
            else:
                base = node.module or ""
            # `from a import b` imports module a.b when there is one, else a name of a
            candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
        else:
            continue
        for names in candidates:
            for name in names:
                target = _resolve(name)
                if target is not None:
                    if target != module:
                        found.add(target)
                    break
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _imported_names(path: Path) -> set[str]:
    """What `path` imports, spelled in full: `a.b` for `import a.b`, `a.b.c` for `from a.b import c`
    (absolute imports only)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _room(module: str) -> str:
    """A module's room: its floor's sub-package (`server.streams`), or the module itself when it
    lies directly on the floor (`comfystream.prompts`, the floor's `__init__`)."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[0] / parts[1]).is_dir()):
        return ".".join(parts[:2])
    return module if len(parts) == 2 else f"{module}.__init__"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _arrows_up(lower: str, upper: str) -> dict[str, list[str]]:
    return {
        m: sorted(t for t in targets if t.split(".")[0] == upper)
        for m, targets in GRAPH.items()
        if m.split(".")[0] == lower and any(t.split(".")[0] == upper for t in targets)
    }


@pytest.mark.parametrize(
    ("lower", "upper"), [("comfystream", "workers"), ("comfystream", "server"), ("workers", "server")]
)
def test_no_arrow_up_between_floors(lower, upper):
    assert _arrows_up(lower, upper) == {}


@pytest.mark.parametrize("floor", FLOORS)
def test_no_import_circle_between_modules(floor):
    graph = {
        m: {t for t in ts if t.split(".")[0] == floor} for m, ts in GRAPH.items() if m.split(".")[0] == floor
    }
    assert _cycles(graph) == []


def _room_graph(floor: str) -> dict[str, set[str]]:
    """The floor's rooms, each with the other rooms of the floor it imports."""
    rooms: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        if module.split(".")[0] != floor:
            continue
        room = rooms.setdefault(_room(module), set())
        room.update(_room(t) for t in targets if t.split(".")[0] == floor and _room(t) != _room(module))
    return rooms


def _arrows_up_the_order(rooms: dict[str, set[str]], order: tuple[str, ...]) -> dict[str, list[str]]:
    """Each room that imports a room placed after it in `order`, with those rooms."""
    rank = {room: i for i, room in enumerate(order)}
    up = {room: sorted(t for t in targets if rank[t] > rank[room]) for room, targets in rooms.items()}
    return {room: targets for room, targets in up.items() if targets}


@pytest.mark.parametrize("floor", FLOORS)
def test_no_import_circle_between_rooms(floor):
    assert _cycles(_room_graph(floor)) == []


# Lowest first (the module docstring says what each one is).
COMFYSTREAM_ROOMS = (
    "comfystream.__init__",
    "comfystream.json_limits",
    "comfystream.prompts",
    "comfystream.media",
    "comfystream.engine",
    "comfystream.nodes",
    "comfystream.comfyui",
    "comfystream.pipeline",
    "comfystream.trickle",
)


def test_comfystream_rooms_import_only_rooms_below_them():
    rooms = _room_graph("comfystream")
    assert sorted(rooms) == sorted(COMFYSTREAM_ROOMS), "a new room takes its place in COMFYSTREAM_ROOMS"
    assert _arrows_up_the_order(rooms, COMFYSTREAM_ROOMS) == {}


def test_server_imports_from_workers_only_the_backend_it_builds():
    """One server module (the one that builds the app's backend) imports from workers/, and only
    ProcessPoolBackend; everything else goes through comfystream.pipeline.backend's protocol."""
    into_workers = {
        module: names
        for module, path in MODULES.items()
        if module.split(".")[0] == "server"
        and (names := {n for n in _imported_names(path) if n.split(".")[0] == "workers"})
    }
    assert list(into_workers.values()) == [{"workers.backend.ProcessPoolBackend"}], into_workers


def test_the_graph_sees_deferred_imports():
    """The checks above are only as good as the graph: an import inside a function is an arrow."""
    assert "comfystream.pipeline.backend" in GRAPH["workers.backend"]
    assert (
        _room("server.app") == "server.app" and _room("comfystream.engine.executor") == "comfystream.engine"
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _arrows_up_the_order({"a": set(), "b": {"a", "c"}, "c": {"a"}}, ("a", "b", "c")) == {"b": ["c"]}
    assert "comfystream.pipeline.backend.WorkerSpec" in _imported_names(MODULES["workers.backend"])
