"""Which node runs next, and which outputs can be reused: ComfyUI's ExecutionList
(comfy_execution/graph.py) and its input-signature cache, reduced to what a prompt of plain
nodes needs. The order matters: clients see it in the `executing` messages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def is_link(value: Any) -> bool:
    """comfy_execution.graph_utils.is_link: ["node id", slot]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
    )


def links(node: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(linked node id, output slot) for each linked input, in input order."""
    return [(value[0], value[1]) for value in node.get("inputs", {}).values() if is_link(value)]


class ExecutionList:
    """Nodes still to run for the outputs, and what blocks what.

    Like ComfyUI, the list is filled depth-first from each output (a stack, so later inputs
    are visited first), cached nodes are left out, and among the ready nodes
    `pick()` prefers an output, then a node that unblocks an output directly, then one step
    removed, else the first ready node in the order they were added.
    """

    def __init__(
        self, prompt: Mapping[str, Any], is_cached: Callable[[str], bool], is_output: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, set[str]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        found: list[tuple[str, str]] = []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = True
            self.block_count[current] = 0
            self.blocking[current] = set()
            for linked, _slot in links(self.prompt[current]):
                if not self.is_cached(linked):
                    stack.append(linked)
                found.append((linked, current))
        for linked, current in found:
            if not self.is_cached(linked):
                self.add_node(linked)
                if current not in self.blocking[linked]:
                    self.blocking[linked].add(current)
                    self.block_count[current] += 1

    def is_empty(self) -> bool:
        return not self.pending

    def ready(self) -> list[str]:
        return [node_id for node_id in self.pending if self.block_count[node_id] == 0]

    def pick(self) -> str | None:
        """The next node to run, or None when what is left waits on itself (a cycle)."""
        ready = self.ready()
        if not ready:
            return None
        for node_id in ready:
            if self.is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self.is_output(blocked) for blocked in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                if any(self.is_output(further) for further in self.blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1


def signatures(prompt: Mapping[str, Any], is_changed: Callable[[str], str]) -> dict[str, str]:
    """A key per node that changes when the node's class, values, IS_CHANGED result or anything
    upstream changes, and not with node ids: what ComfyUI's output cache is keyed by."""
    memo: dict[str, str] = {}

    def signature(node_id: Any, visiting: frozenset[Any]) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt.get(node_id) if isinstance(node_id, str) else None
        if node is None or node_id in visiting:
            return f"unresolvable:{node_id!r}"
        parts: list[Any] = [node.get("class_type"), is_changed(node_id)]
        for name in sorted(node.get("inputs", {})):
            value = node["inputs"][name]
            if is_link(value):
                parts.append([name, "link", signature(value[0], visiting | {node_id}), value[1]])
            else:
                parts.append([name, value])
        text = json.dumps(parts, sort_keys=True, default=repr)
        memo[node_id] = hashlib.sha256(text.encode()).hexdigest()
        return memo[node_id]

    return {node_id: signature(node_id, frozenset()) for node_id in prompt}


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None  # {"meta": {...}, "output": {...}} for nodes that show something


class OutputCache:
    """ComfyUI's default ("classic") output cache: entries by signature; a new prompt keeps only
    the entries its own nodes can use (clean_unused), so it remembers about one prompt back."""

    def __init__(self) -> None:
        self.entries: dict[str, CacheEntry] = {}
        self.keys: dict[str, str] = {}

    def set_prompt(self, keys: dict[str, str]) -> None:
        self.keys = keys
        wanted = set(keys.values())
        self.entries = {key: entry for key, entry in self.entries.items() if key in wanted}

    def get(self, node_id: str) -> CacheEntry | None:
        key = self.keys.get(node_id)
        return self.entries.get(key) if key is not None else None

    def set(self, node_id: str, entry: CacheEntry) -> None:
        self.entries[self.keys[node_id]] = entry

    def clear(self) -> None:
        self.entries.clear()
        self.keys = {}
