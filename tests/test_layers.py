"""The package's layers import one way: every import in src/metassl (deferred ones inside functions too) goes to
the same or a lower layer, and the packages do not import each other in a circle."""

import ast
from pathlib import Path

import metassl

SRC = Path(metassl.__file__).parent
# lowest first; a module may import its own layer's modules and any lower layer's
LAYERS = [
    ("errors",),
    ("config", "registry", "atomic", "parallel"),
    ("data",),
    ("models",),
    ("learners",),
    ("ssl",),
    ("eval",),
    ("engine",),
    ("api", "export", "report", "workflow"),
    ("cli", "__main__"),
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Absolute names of the metassl modules a file imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "metassl"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "metassl":
                continue
            out.add(target)
            for a in node.names:  # `from . import x` imports the module x
                candidate = f"{target}.{a.name}"
                if (SRC.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
                        (SRC.parent / Path(*candidate.split("."))).is_dir():
                    out.add(candidate)
    return out


def package_of(module: str) -> str:
    """The package a module belongs to: `metassl.data.loaders.mnist` -> `metassl.data.loaders`; top-level modules
    (`metassl.config`) are their own node."""
    path = SRC.parent / Path(*module.split("."))
    if path.is_dir():
        return module
    return module.rsplit(".", 1)[0] if module.count(".") > 1 else module


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for f in SRC.rglob("*.py"):
        src = module_name(f)
        edges.setdefault(src, set()).update(t for t in imports(f) if t != src and t != "metassl")
    return edges


def test_every_part_has_a_layer():
    parts = {module_name(f).split(".")[1] for f in SRC.rglob("*.py") if module_name(f) != "metassl"}
    assert parts <= set(LAYER), f"parts without a layer in tests/test_layers.py: {sorted(parts - set(LAYER))}"


def upward(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} -> {t}" for src, targets in edges.items() if src != "metassl" for t in targets
                  if LAYER[t.split(".")[1]] > LAYER[src.split(".")[1]])


def test_no_upward_imports():
    bad = upward(graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_cycles_between_packages():
    pkg_edges: dict[str, set[str]] = {}
    for src, targets in graph().items():
        ps = package_of(src)
        for t in targets:
            pt = package_of(t)
            if pt != ps and not ps.startswith(pt + ".") and not pt.startswith(ps + "."):
                pkg_edges.setdefault(ps, set()).add(pt)
    # depth-first search for a cycle
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(pkg_edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(pkg_edges):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles between packages:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_deferred_and_relative_imports():
    # a check that could not fail is no check: the parser finds imports inside functions (cli/main.py imports the
    # trainer in its commands) and the rule flags a lower layer importing a higher one
    edges = graph()
    assert "metassl.engine.trainer" in edges["metassl.cli.main"]
    assert "metassl.atomic" in edges["metassl.data.root"]  # a relative import, resolved
    assert upward({"metassl.data.cactus": {"metassl.engine.build"}}) == ["metassl.data.cactus -> metassl.engine.build"]
