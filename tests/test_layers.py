"""Imports follow the layer order of docs/ARCHITECTURE.md, and form no cycle.

The order is written once, in the table of ARCHITECTURE.md's "Layers" section
(between the ``layers:begin``/``layers:end`` comments): this test parses it.
A module belongs to the row naming its longest dotted prefix (``elf`` covers
``coredumpd.elf.core``; ``coredumpd`` alone is the package's ``__init__``).
Every import of every module under coredumpd/ is read with ``ast`` — at the top,
inside functions and under ``if TYPE_CHECKING`` alike — and a module may import
its own layer and the layers below it, never one above; and no chain of
imports may lead back to where it started.
"""

from __future__ import annotations

import ast
import itertools
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "coredumpd"
ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|([^|]*)\|")


def read_layers(text: str) -> dict[str, int]:
    """{module prefix: layer number} from the table between the layers markers."""
    block = text.split("<!-- layers:begin", 1)[-1].split("<!-- layers:end", 1)[0]
    layers: dict[str, int] = {}
    for line in block.splitlines():
        match = ROW.match(line.strip())
        if not match:
            continue
        for name in re.findall(r"`([\w.]+)`", match.group(2)):
            assert name not in layers, f"{name} is in two rows of the layer table"
            layers[name] = int(match.group(1))
    assert layers, "no layer table found in docs/ARCHITECTURE.md"
    return layers


def module_sources(root: pathlib.Path = PACKAGE) -> dict[str, tuple[str, str]]:
    """{dotted module name: (path relative to the repo, source)} of every module."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = (str(path.relative_to(root.parent)), path.read_text())
    return modules


def imports_of(name: str, path: str, source: str,
               known: set[str]) -> list[tuple[str, int]]:
    """(imported coredumpd module, line) for every import statement in ``source``."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import module` imports pkg.module
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in known else base, node.lineno))
    return [(module, line) for module, line in found
            if module == "coredumpd" or module.startswith("coredumpd.")]


def layer_of(module: str, layers: dict[str, int]) -> tuple[str, int] | None:
    """(table row name, layer) of the longest prefix of ``module`` in the table."""
    relative = module.removeprefix("coredumpd").removeprefix(".")
    if not relative:
        return ("coredumpd", layers["coredumpd"]) if "coredumpd" in layers else None
    parts = relative.split(".")
    for count in range(len(parts), 0, -1):
        prefix = ".".join(parts[:count])
        if prefix in layers:
            return prefix, layers[prefix]
    return None


def check(modules: dict[str, tuple[str, str]], layers: dict[str, int]) -> list[str]:
    """Every broken rule, one sentence each: an import upwards, an unplaced module, a cycle."""
    errors: list[str] = []
    known = set(modules)
    graph: dict[str, dict[str, str]] = {}
    for name, (path, source) in modules.items():
        own = layer_of(name, layers)
        if own is None:
            errors.append(f"{path}: module {name} is in no row of the layer table "
                          "(docs/ARCHITECTURE.md, Layers)")
            continue
        graph[name] = {}
        for target, line in imports_of(name, path, source, known):
            graph[name].setdefault(target, f"{path}:{line}")
            theirs = layer_of(target, layers)
            if theirs is not None and theirs[1] > own[1]:
                errors.append(f"{path}:{line}: {name} imports {target}: `{own[0]}` (layer "
                              f"{own[1]}) may not import `{theirs[0]}` (layer {theirs[1]}),"
                              " a layer above it")
    return errors + [describe_cycle(cycle, graph) for cycle in find_cycles(graph)]


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_path_through(sorted(group), graph) for group in groups]


def _path_through(group: list[str], graph: dict[str, dict[str, str]]) -> list[str]:
    """A closed path from the group's first module back to it, inside the group."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                return paths[node] + [start]
            if target in members and target not in paths:
                paths[target] = paths[node] + [target]
                frontier.append(target)
    return group + [start]


def describe_cycle(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return "import cycle: " + "; ".join(steps)


def test_imports_follow_the_documented_layers_and_form_no_cycle():
    layers = read_layers(ARCHITECTURE.read_text())
    errors = check(module_sources(), layers)
    assert errors == [], "\n".join(errors)


def test_the_check_reports_an_upward_import_an_unplaced_module_and_a_cycle():
    """The check itself can fail, and says which import breaks which rule."""
    layers = {"coredumpd": 1, "errors": 1, "elf": 2, "store": 3}
    modules = {
        "coredumpd": ("coredumpd/__init__.py", ""),
        "coredumpd.errors": ("coredumpd/errors.py", ""),
        "coredumpd.elf": ("coredumpd/elf/__init__.py", ""),
        "coredumpd.elf.core": ("coredumpd/elf/core.py",
                               "import os\n\ndef f():\n    from coredumpd.store import source\n"),
        "coredumpd.store": ("coredumpd/store/__init__.py", ""),
        "coredumpd.store.source": ("coredumpd/store/source.py", "from . import index\n"),
        "coredumpd.store.index": ("coredumpd/store/index.py",
                                  "from coredumpd.store.source import x\n"),
        "coredumpd.extra": ("coredumpd/extra.py", ""),
    }
    assert check(modules, layers) == [
        ("coredumpd/elf/core.py:4: coredumpd.elf.core imports coredumpd.store.source: `elf` "
         "(layer 2) may not import `store` (layer 3), a layer above it"),
        ("coredumpd/extra.py: module coredumpd.extra is in no row of the layer table "
         "(docs/ARCHITECTURE.md, Layers)"),
        ("import cycle: coredumpd.store.index -> coredumpd.store.source "
         "(coredumpd/store/index.py:1); coredumpd.store.source -> coredumpd.store.index "
         "(coredumpd/store/source.py:1)"),
    ]


def test_the_table_names_the_packages_other_changes_add():
    """model, arch, image and symbolize (issue 12) have their rows before they exist."""
    layers = read_layers(ARCHITECTURE.read_text())
    assert layers["errors"] < layers["model"] < layers["elf"] == layers["arch"]
    assert layers["store"] < layers["image"] < layers["symbolize"] < layers["unwind"]
