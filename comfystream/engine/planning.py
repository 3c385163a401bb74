"""Planning: which nodes run (output nodes and their ancestors), in what order, and which of
them depend on the per-frame input (the rest is computed once per prompt and reused)."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfystream.engine.node_types import get_input_info, is_link, is_output_node

# Class types that produce the per-frame input, besides classes that set FRAME_INPUT = True.
FRAME_INPUT_CLASS_TYPES = frozenset({"LoadTensor", "LoadAudioTensor"})


class DependencyCycleError(ValueError):
    """The graph loops back on itself; `cycle` lists the node ids on the loop."""

    def __init__(self, cycle: list[str], prompt: dict[str, Any]):
        self.cycle = cycle
        path = " -> ".join(f"{n} ({prompt[n]['class_type']})" for n in [*cycle, cycle[0]])
        super().__init__(f"Dependency cycle detected: {path}")


@dataclass(frozen=True)
class Plan:
    order: tuple[str, ...]  # every node that runs, dependencies first
    outputs: tuple[str, ...]
    parents: Mapping[str, tuple[tuple[str, str, int], ...]]  # node -> (input name, source node, slot)
    frame_dependent: frozenset[str]  # nodes that must run on every execution


def is_frame_input(cls: type, class_type: str) -> bool:
    return bool(getattr(cls, "FRAME_INPUT", False)) or class_type in FRAME_INPUT_CLASS_TYPES


def node_links(prompt: dict[str, Any], node_id: str, cls: type) -> tuple[tuple[str, str, int], ...]:
    """(input name, source node, slot) for each link of a node that execution will follow.

    Declared inputs, plus undeclared ones that are links (ComfyUI passes those to **kwargs
    nodes); a link to a node that does not exist is left out here (validation reports declared
    ones).
    """
    input_types = cls.INPUT_TYPES()
    out = []
    for name, value in prompt[node_id].get("inputs", {}).items():
        if is_link(value) and value[0] in prompt:
            _, category, _ = get_input_info(input_types, name)
            if category == "hidden":
                continue
            out.append((name, value[0], value[1]))
    return tuple(out)


def _order_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def plan_prompt(prompt: dict[str, Any], outputs: list[str], registry: Mapping[str, type]) -> Plan:
    """Output nodes + ancestors in topological order; raises DependencyCycleError on a loop."""
    parents: dict[str, tuple[tuple[str, str, int], ...]] = {}
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in parents:
            continue
        links = node_links(prompt, node_id, registry[prompt[node_id]["class_type"]])
        parents[node_id] = links
        stack.extend(src for _, src, _ in links)

    # Kahn's algorithm; ties broken by node id so that the order is stable.
    children: dict[str, set[str]] = {n: set() for n in parents}
    blockers = {n: len({src for _, src, _ in links}) for n, links in parents.items()}
    for n, links in parents.items():
        for _, src, _ in links:
            children[src].add(n)
    ready = [(_order_key(n), n) for n, count in blockers.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for child in children[n]:
            blockers[child] -= 1
            if blockers[child] == 0:
                heapq.heappush(ready, (_order_key(child), child))
    if len(order) != len(parents):
        raise DependencyCycleError(_find_cycle({n for n in parents if n not in order}, parents), prompt)

    frame_dependent: set[str] = set()
    for n in order:
        cls = registry[prompt[n]["class_type"]]
        if (
            is_frame_input(cls, prompt[n]["class_type"])
            or is_output_node(cls)  # outputs have effects (frames out, files, previews) every run
            or any(src in frame_dependent for _, src, _ in parents[n])
        ):
            frame_dependent.add(n)
    return Plan(tuple(order), tuple(outputs), parents, frozenset(frame_dependent))


def _find_cycle(remaining: set[str], parents: Mapping[str, tuple[tuple[str, str, int], ...]]) -> list[str]:
    start = min(remaining, key=_order_key)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(src for _, src, _ in parents[node] if src in remaining)
    return path[seen[node] :][::-1]  # in data-flow order
