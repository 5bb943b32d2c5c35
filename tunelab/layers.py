"""The layer map of tunelab, written once, and the ``ast`` checker that keeps the code to it.

Dependencies point down the pipeline. Each layer is a set of *rooms* (a top-level package such as
``tunelab.safety`` or a top-level module such as ``tunelab.files``), lowest first; a module belongs
to the layer of the longest prefix that names it, so a room can lend one module to a lower layer
(``tunelab.evaluate.generation``) or a higher one (``tunelab.safety.recipe``). The rules the test
(``tests/test_layers.py``) applies over every module, at any import depth (function bodies and
``TYPE_CHECKING`` blocks included, relative imports resolved):

1. no module imports a module of a higher layer;
2. in a layer marked ``independent``, a room imports no other room of that layer unless
   :data:`ALLOWED_EDGES` names the pair (feature rooms do not lean on each other);
3. no import cycle between modules;
4. no module uses another room's ``_private`` name (``from tunelab.x import _y``, or ``m._y`` on
   an imported tunelab module ``m``).

A package's ``__init__`` may re-export its own submodules whatever their layer: it is the room's
front door, not a dependency of the room. Importing a front door counts as importing the highest
layer it re-exports (the import loads them all). ``docs/architecture.md`` explains the map and the reasons.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Layer:
    """One layer: a name, its members (module or package prefixes) and whether its rooms stay apart."""

    name: str
    members: tuple[str, ...]
    independent: bool = False


# Lowest first. See docs/architecture.md for why each refinement of the map is there.
LAYERS: tuple[Layer, ...] = (
    Layer("core", ("tunelab", "tunelab.errors", "tunelab.files", "tunelab.configs", "tunelab.options",
                   "tunelab.registry", "tunelab.layout", "tunelab.models", "tunelab.data", "tunelab.tasks", "tunelab.control_tokens",
                   "tunelab.results", "tunelab.layers",
                   # the kit a room writes its report section with (registry, formats, tables, data, figures)
                   "tunelab.report.registry", "tunelab.report.render", "tunelab.report.html", "tunelab.report.collect",
                   "tunelab.report.plots")),
    Layer("adapters", ("tunelab.adapters",)),
    # batched generation and the protocol through which higher rooms act on it (refusal control, steering)
    Layer("generation", ("tunelab.evaluate.generation", "tunelab.evaluate.intervention")),
    Layer("train/evaluate", ("tunelab.train", "tunelab.evaluate"), independent=True),
    Layer("feature rooms", ("tunelab.safety", "tunelab.privacy", "tunelab.inspect", "tunelab.merge", "tunelab.moe",
                            "tunelab.scaling"), independent=True),
    # the trainer composed with the rooms' plug-ins (finetune), evaluation with their interventions
    Layer("recipes", ("tunelab.finetune", "tunelab.eval_recipe"), independent=True),
    # room modules that run a whole fine-tuning recipe (or build on one that does)
    Layer("workflows", ("tunelab.safety.recipe", "tunelab.safety.attack", "tunelab.safety.judge_data",
                        "tunelab.safety.judge_jobs", "tunelab.privacy.phishing"),
          independent=True),
    Layer("top", ("tunelab.report", "tunelab.cli", "tunelab.demo", "tunelab.study")),
)

# Imports between rooms of one independent layer that the map allows: (importer prefix, imported
# prefix) -> why. Keep this short; a new edge is a design decision, written down here and in the doc.
ALLOWED_EDGES: dict[tuple[str, str], str] = {
}


def layer_index(module: str, layers: Iterable[Layer] = LAYERS) -> int | None:
    """Index (0 = lowest) of the layer whose longest member prefix names ``module``; None if none does."""
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for i, layer in enumerate(layers):
        for member in layer.members:
            # the package itself ("tunelab") names only its __init__, so a new module must be placed
            if module == member or ("." in member and module.startswith(member + ".")):
                if best is None or len(member) > best[0]:
                    best = (len(member), i)
    return None if best is None else best[1]


def room(module: str, package: str = "tunelab") -> str:
    """The room of ``module``: its top-level package or module under ``package`` (``tunelab.x``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == package and len(parts) > 1 else module


@dataclass
class Module:
    """One parsed module of the package."""

    name: str
    path: Path
    is_package: bool
    tree: ast.Module


@dataclass
class Import:
    """One import edge: ``source`` imports ``target`` at ``line``; ``names`` are what it takes.

    A lazy edge (a ``"tunelab.x:Name"`` string, as :class:`tunelab.registry.Registry` takes)
    counts for the layer rules but not for cycles: importing on first use is how a room names
    its own members without a circle.
    """

    source: str
    target: str
    line: int
    names: tuple[str, ...] = ()
    lazy: bool = False  # a registry's "module:attr" string: a dependency, imported on first use only


@dataclass
class Graph:
    """The modules of a package and every import between them."""

    package: str
    modules: dict[str, Module]
    imports: list[Import] = field(default_factory=list)
    private_uses: list[tuple[str, int, str, str]] = field(default_factory=list)  # (module, line, owner, name)

    def resolve(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is a module of the package."""
        while dotted and dotted not in self.modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None


def scan(root: Path, package: str = "tunelab") -> Graph:
    """Parse every module of ``root/package`` and collect its imports of the package and private uses."""
    modules: dict[str, Module] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), filename=str(path)))
    graph = Graph(package, modules)
    for module in modules.values():
        _collect(graph, module)
    return graph


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative levels resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


_LAZY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)+):(\w+)$")  # "package.module:attr"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _collect(graph: Graph, module: Module) -> None:
    package = graph.package
    bound: dict[str, str] = {}  # local name -> the package module it is bound to
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != package:
                    continue
                target = graph.resolve(alias.name)
                if target is not None:
                    graph.imports.append(Import(module.name, target, node.lineno))
                    if alias.asname:
                        bound[alias.asname] = target
                    else:
                        bound[alias.name.split(".")[0]] = package
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source.split(".")[0] != package:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in graph.modules:
                    graph.imports.append(Import(module.name, submodule, node.lineno))
                    bound[alias.asname or alias.name] = submodule
                    continue
                target = graph.resolve(source)
                if target is None:
                    continue
                graph.imports.append(Import(module.name, target, node.lineno, (alias.name,)))
                if _is_private(alias.name) and room(target, package) != room(module.name, package):
                    graph.private_uses.append((module.name, node.lineno, target, alias.name))
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _LAZY.match(node.value)
            target = graph.resolve(match.group(1)) if match and match.group(1).split(".")[0] == package else None
            if target is not None:
                graph.imports.append(Import(module.name, target, node.lineno, (match.group(2),), lazy=True))
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain = _dotted(node.value)
            if chain is None or chain[0] not in bound:
                continue
            owner = bound[chain[0]]
            for part in chain[1:]:  # walk down submodules (tunelab.evaluate.generation._x)
                if f"{owner}.{part}" not in graph.modules:
                    owner = ""
                    break
                owner = f"{owner}.{part}"
            if owner and room(owner, package) != room(module.name, package):
                graph.private_uses.append((module.name, node.lineno, owner, node.attr))


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but a chain of names."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _own_reexport(graph: Graph, edge: Import) -> bool:
    """A package ``__init__`` importing from inside itself (its front door)."""
    source = graph.modules[edge.source]
    return source.is_package and edge.target.startswith(edge.source + ".")


def layer_violations(graph: Graph, layers: tuple[Layer, ...] = LAYERS,
                     allowed: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Imports of a higher layer, and imports between rooms of one independent layer not allowed."""
    allowed = ALLOWED_EDGES if allowed is None else allowed
    found: list[str] = []
    for edge in graph.imports:
        if edge.source == edge.target or _own_reexport(graph, edge):
            continue
        low, high = layer_index(edge.source, layers), _front_door_layer(graph, edge.target, layers)
        where = f"{edge.source} (line {edge.line}) {'names' if edge.lazy else 'imports'} {edge.target}"
        if low is None or high is None:
            found.append(f"{where}: {edge.source if low is None else edge.target} is in no layer")
        elif high > low:
            door = "" if high == layer_index(edge.target, layers) else " (through its __init__'s re-exports)"
            found.append(f"{where}: layer '{layers[high].name}'{door} is above '{layers[low].name}'")
        elif high == low and layers[low].independent:
            a, b = room(edge.source, graph.package), room(edge.target, graph.package)
            if a != b and not any(_covers(s, edge.source) and _covers(t, edge.target) for s, t in allowed):
                found.append(f"{where}: rooms of layer '{layers[low].name}' do not import each other "
                             "(ALLOWED_EDGES names the exceptions)")
    return sorted(set(found))


def _front_door_layer(graph: Graph, module: str, layers: tuple[Layer, ...]) -> int | None:
    """The layer an import of ``module`` reaches: for a package, the highest of its own layer and
    those of the submodules its ``__init__`` re-exports (importing the front door loads them all)."""
    own = layer_index(module, layers)
    if own is None or module not in graph.modules or not graph.modules[module].is_package:
        return own
    reached = [own]
    for edge in graph.imports:
        if edge.source == module and not edge.lazy and _own_reexport(graph, edge):
            reached.append(_front_door_layer(graph, edge.target, layers) or own)
    return max(reached)


def _covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def cycles(graph: Graph) -> list[list[str]]:
    """Every import cycle between modules, each as a path ``[a, b, ..., a]`` (one per strongly connected set)."""
    succ: dict[str, set[str]] = {m: set() for m in graph.modules}
    for edge in graph.imports:
        if edge.source != edge.target and not edge.lazy:
            succ[edge.source].add(edge.target)
    out: list[list[str]] = []
    for component in _strongly_connected(succ):
        if len(component) > 1:
            out.append(_cycle_through(min(component), component, succ))
    return sorted(out)


def _strongly_connected(succ: dict[str, set[str]]) -> Iterator[set[str]]:
    """Tarjan's algorithm, iterative (the package is deep enough to make recursion a risk)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = 0
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(sorted(succ[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                yield component


def _cycle_through(start: str, component: set[str], succ: dict[str, set[str]]) -> list[str]:
    """A shortest path start → … → start inside ``component`` (breadth first)."""
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(succ[node] & component):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in no cycle")  # a strongly connected set > 1 always has one


def private_violations(graph: Graph) -> list[str]:
    """Uses of another room's ``_private`` name."""
    return sorted({f"{m} (line {line}) uses {owner}.{name}" for m, line, owner, name in graph.private_uses})
