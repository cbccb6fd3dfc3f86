"""Check the import layering of embedhub and of the packages built on it.

Every ``import`` / ``from ... import`` in the tree counts: at module level, inside functions and under
``if TYPE_CHECKING:``; relative imports are resolved. Reported, one :class:`Violation` each:

- ``upward``: a library module imports a higher layer, or a peer of its own layer (``hub`` and ``store``);
- ``unlayered``: a library module that no prefix of the layer table covers;
- ``circle``: modules that import each other round a circle (printed as a path ``a -> b -> a``);
- ``private-name``: ``from x import _name`` of another module's underscore-prefixed name;
- ``not-public``: a consumer package (training, export, demos, benchmarks) imports a library module
  that is not in the public list, or a private module of another consumer;
- ``consumer``: the library imports a consumer package (whitelisted deprecated shims aside).

>>> from pathlib import Path
>>> for v in check(Path("."), RULES):  # doctest: +SKIP
...     print(v)
embedhub/errors.py:3: upward: imports embedhub.model (layer 6, a higher layer) from layer 0

Command line (exit status 1 when anything is reported)::

    python scripts/check_layers.py [--root .] [--dot layers.svg | --dot layers.dot]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------- the rules of this project
#: layer of each library module path prefix: a module may import its own prefix's modules and lower layers
LAYERS: dict[str, int] = {
    "embedhub.errors": 0,
    "embedhub._version": 0,  # __version__, readable by every module
    "embedhub.data": 8,  # the datasets (STS-B): for the CLI and the packages on top; imports only errors
    "embedhub._io": 2,
    "embedhub.modules": 3,
    "embedhub.formats": 4,
    "embedhub.hub": 5,
    "embedhub.store": 5,  # a peer of hub: neither imports the other
    "embedhub.model": 6,
    "embedhub.loader": 7,
    "embedhub.jobs": 8,
    "embedhub.serve": 9,  # the HTTP server: on top of the model, the loader and the modules
    "embedhub.cli": 10,
    "embedhub.__main__": 11,  # python -m embedhub: above the cli it runs
    "embedhub.losses": 11,  # the deprecated shim over embedhub.training.losses
    "embedhub": 12,  # the package's own __init__ (matched exactly): the lazy name -> module table
}
#: the only library modules consumer packages may import
PUBLIC = ("embedhub", "embedhub.errors", "embedhub.data", "embedhub.modules", "embedhub.formats", "embedhub.hub",
          "embedhub.store", "embedhub.jobs")  # fmt: skip
#: consumer folder -> the module name it is installed as
CONSUMERS = {"training": "embedhub.training", "export": "embedhub.export", "demos": "embedhub.demos",
             "benchmarks": "benchmarks"}  # fmt: skip
#: library module -> consumer modules it may import (deprecated shims only)
SHIMS = {"embedhub.losses": ("embedhub.training.losses",)}


@dataclass(frozen=True)
class Rules:
    """What may import what: ``library`` is the package name, the rest as the tables above."""

    library: str
    layers: Mapping[str, int]
    public: tuple[str, ...]
    consumers: Mapping[str, str]
    shims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


RULES = Rules("embedhub", LAYERS, PUBLIC, CONSUMERS, SHIMS)


@dataclass(frozen=True)
class Violation:
    """One broken rule: its ``kind``, the importing ``module`` and ``path``, the import's ``line``."""

    kind: str
    module: str
    line: int
    message: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.path or self.module}:{self.line}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (a module of the tree, or an outside one) at ``line``; ``name`` is the
    imported name when it is not itself a module (``from target import name``)."""

    source: str
    target: str
    line: int
    name: str = ""


# ---------------------------------------------------------------------------- reading the tree
def modules(root: Path, rules: Rules) -> dict[str, Path]:
    """Dotted module name -> file, for the library folder and every consumer folder under ``root``."""
    found: dict[str, Path] = {}
    for folder, name in ((rules.library, rules.library), *rules.consumers.items()):
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([name, *parts])] = path
    return found


def _canonical(name: str, rules: Rules) -> str:
    """``training.config`` -> ``embedhub.training.config``: a consumer's folder name as its installed name."""
    head, _, rest = name.partition(".")
    if head in rules.consumers:
        return rules.consumers[head] + ("." + rest if rest else "")
    return name


def _known(name: str, mods: Mapping[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of the tree (``name`` itself when none is)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return name


def edges(module: str, path: Path, mods: Mapping[str, Path], rules: Rules) -> Iterator[Edge]:
    """Every import in ``path`` (module ``module``) as edges to resolved module names."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not readable as Python source ({exc})") from None
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    script_dir = not (path.parent / "__init__.py").is_file()  # e.g. benchmarks/: siblings import by bare name

    def resolve(name: str) -> str:
        head = name.split(".")[0]
        if script_dir and (path.parent / f"{head}.py").is_file():
            return f"{package}.{name}"
        return _canonical(name, rules)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(module, _known(resolve(alias.name), mods), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = resolve(node.module or "")
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    yield Edge(module, sub, node.lineno)
                else:
                    yield Edge(module, _known(target, mods), node.lineno, "" if alias.name == "*" else alias.name)


def import_graph(root: Path, rules: Rules) -> tuple[dict[str, Path], list[Edge]]:
    """The tree's modules and all their imports."""
    mods = modules(root, rules)
    return mods, [e for m, p in mods.items() for e in edges(m, p, mods, rules)]


# ---------------------------------------------------------------------------- the rules applied
def layer_key(module: str, rules: Rules) -> str | None:
    """The layer table's key for a library module (the longest matching prefix), or None."""
    if module in rules.layers:
        return module
    keys = [k for k in rules.layers if k != rules.library and module.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def circles(graph: Mapping[str, set[str]]) -> list[tuple[list[str], int]]:
    """One circle (``[a, b, a]``) and its component's size per strongly connected component of two or
    more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for component in components:  # the shortest way from the first module back to itself, inside the component
        start = min(component)
        paths = {w: [start, w] for w in sorted(graph[start]) if w in component}
        queue = list(paths)
        while start not in paths:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w in component and w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
        found.append((paths[start], len(component)))
    return sorted(found)


def check(root: Path, rules: Rules) -> list[Violation]:
    """Every violation of ``rules`` in the tree under ``root``, ordered by file and line."""
    mods, all_edges = import_graph(root, rules)
    consumers = tuple(rules.consumers.values())
    out: list[Violation] = []
    graph: dict[str, set[str]] = {m: set() for m in mods}
    first_line: dict[tuple[str, str], int] = {}

    def add(kind: str, module: str, line: int, message: str) -> None:
        v = Violation(kind, module, line, message, str(mods[module].relative_to(root)))
        if v not in out:  # one line per import statement, however many names it takes
            out.append(v)

    for m in mods:
        if not m.startswith(consumers) and layer_key(m, rules) is None:
            add("unlayered", m, 1, f"{m} is in no layer of the table")
    for e in all_edges:
        if e.target in mods and e.target != e.source:
            graph[e.source].add(e.target)
            first_line.setdefault((e.source, e.target), e.line)
        if _private(e.name) and e.target in mods and e.target != e.source:
            add("private-name", e.source, e.line, f"imports the private name {e.name} of {e.target}")
        src_consumer = next((c for c in consumers if _within(e.source, c)), None)
        dst_consumer = next((c for c in consumers if _within(e.target, c)), None)
        in_library = _within(e.target, rules.library) and dst_consumer is None
        if src_consumer is None:  # a library module
            if dst_consumer is not None:
                if not any(_within(e.target, s) for s in rules.shims.get(e.source, ())):
                    add("consumer", e.source, e.line, f"the library imports the consumer package module {e.target}")
                continue
            src_key, dst_key = layer_key(e.source, rules), layer_key(e.target, rules)
            if not in_library or src_key is None or dst_key is None or src_key == dst_key:
                continue
            src_layer, dst_layer = rules.layers[src_key], rules.layers[dst_key]
            if dst_layer >= src_layer:  # a higher layer, or a peer of the same layer (another key)
                how = "a peer" if dst_layer == src_layer else "a higher layer"
                add("upward", e.source, e.line, f"imports {e.target} (layer {dst_layer}, {how}) from layer {src_layer}")
        elif in_library and e.target not in rules.public:
            add("not-public", e.source, e.line, f"imports {e.target}, which is not one of the public modules")
        elif dst_consumer not in (None, src_consumer) and any(map(_private, e.target.split("."))):
            add("not-public", e.source, e.line, f"imports {e.target}, a private module of {dst_consumer}")
    for circle, size in circles(graph):
        more = f" ({size} modules in this knot)" if size > len(circle) - 1 else ""
        add("circle", circle[0], first_line[circle[0], circle[1]], "import circle: " + " -> ".join(circle) + more)
    return sorted(out, key=lambda v: (v.path, v.line, v.kind, v.message))


# ---------------------------------------------------------------------------- the picture
def package_of(module: str, rules: Rules) -> str:
    """The box a module is drawn in: its layer-table key, or its consumer package."""
    for c in rules.consumers.values():
        if _within(module, c):
            return c
    return layer_key(module, rules) or module


def package_edges(root: Path, rules: Rules) -> tuple[dict[str, int], set[tuple[str, str]]]:
    """Package -> row (layers upward, consumers above), and the imports between packages."""
    mods, all_edges = import_graph(root, rules)
    top = max(rules.layers.values(), default=0) + 1
    boxes = {package_of(m, rules): 0 for m in mods}
    for b in boxes:
        boxes[b] = top if b in rules.consumers.values() else rules.layers.get(b, top)
    arrows = {(package_of(e.source, rules), package_of(e.target, rules)) for e in all_edges if e.target in mods}
    return boxes, {(a, b) for a, b in arrows if a != b}


def reduced(arrows: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """``arrows`` without those another path implies (a -> c -> b makes a -> b redundant): the picture's arrows.

    >>> sorted(reduced({("a", "b"), ("b", "c"), ("a", "c")}))
    [('a', 'b'), ('b', 'c')]
    """
    succ: dict[str, set[str]] = {}
    for a, b in arrows:
        succ.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(succ.get(start, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(succ.get(n, ()))
        return seen

    return {(a, b) for a, b in arrows if not any(b in reach(c) for c in succ[a] - {b})}


def write_picture(root: Path, rules: Rules, out: Path) -> None:
    """The packages as boxes stacked by layer with an arrow where one imports another directly and no other path
    implies it: ``.dot`` text, else an SVG."""
    boxes, arrows = package_edges(root, rules)
    arrows = reduced(arrows)
    if out.suffix in (".dot", ".gv"):
        lines = ["digraph layers {", "  rankdir=BT; node [shape=box, fontsize=10];"]
        for row in sorted(set(boxes.values())):
            names = " ".join(f'"{b}";' for b in sorted(boxes) if boxes[b] == row)
            lines.append(f"  {{ rank=same; {names} }}")
        lines += [f'  "{a}" -> "{b}";' for a, b in sorted(arrows)]
        out.write_text("\n".join([*lines, "}"]) + "\n", encoding="utf-8")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: dict[int, list[str]] = {}
    for b in sorted(boxes):
        rows.setdefault(boxes[b], []).append(b)
    ys = {row: i for i, row in enumerate(sorted(rows))}
    width = max(len(r) for r in rows.values())
    at = {b: ((i + 0.5) * width / len(r), ys[row]) for row, r in rows.items() for i, b in enumerate(r)}
    fig, ax = plt.subplots(figsize=(1.6 * width + 1, 0.55 * len(rows) + 0.5))
    box = {"boxstyle": "round", "fc": "white", "ec": "0.3"}
    for b, (x, y) in at.items():
        ax.text(x, y, b.removeprefix(rules.library + ".") or b, ha="center", va="center", fontsize=7, bbox=box)
    style = {"arrowstyle": "-|>", "color": "0.55", "lw": 0.6, "mutation_scale": 7}
    for a, b in sorted(arrows):  # each arrow leaves and enters at the edge of a box (about 0.6 x 0.28 in)
        (x0, y0), (x1, y1) = at[a], at[b]
        t = min(0.3 / max(abs(x1 - x0) * 1.6, 1e-9), 0.14 / max(abs(y1 - y0) * 0.55, 1e-9))
        ends = {"xy": (x1 + t * (x0 - x1), y1 + t * (y0 - y1)), "xytext": (x0 + t * (x1 - x0), y0 + t * (y1 - y0))}
        ax.annotate("", **ends, arrowprops=style, zorder=1)
    ax.set_xlim(0, width)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.axis("off")
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # labels stay text: small and searchable
        fig.savefig(out, format=out.suffix.lstrip(".") or "svg", bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Print one line per violation under ``--root``; exit 1 when there is any."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    p.add_argument("--dot", type=Path, default=None, help="also draw the packages' imports: FILE.dot, FILE.svg")
    args = p.parse_args(argv)
    if not (args.root / RULES.library).is_dir():
        p.error(f"--root {args.root}: no {RULES.library}/ folder there")
    try:
        found = check(args.root, RULES)
        if args.dot is not None:
            write_picture(args.root, RULES, args.dot)
    except ValueError as exc:
        p.error(str(exc))
    for v in found:
        print(v)
    print(f"{len(found)} violation(s)", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
