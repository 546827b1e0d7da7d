"""The package's shape stays as docs/architecture.md draws it: layers that import downwards
only, no circle, heavy optional packages imported where they are used, small modules."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alexnet_cifar"

#: The layers, lowest first: the package root (its plain modules), then its subpackages. A
#: module's layer is where it lies; subpackages of one layer never import each other.
LAYERS = [
    ("root", ["alexnet_cifar"]),
    ("engine", ["engine"]),
    ("training", ["training"]),
    ("products", ["report", "interchange"]),
    ("study", ["study"]),
    ("cli", ["cli"]),
]
RANK = {package: i for i, (_, packages) in enumerate(LAYERS) for package in packages}
#: Modules above every layer: the package's front doors, which re-export or start the CLI.
ENTRY_POINTS = {"alexnet_cifar", "alexnet_cifar.__main__"}
MAX_ROOT_MODULES = 15

#: Packages a function may import where it uses them (heavy, optional or slow to import), and
#: the name docs/architecture.md gives each.
LAZY_OK = {
    "matplotlib": "matplotlib",
    "h5py": "h5py",
    "PIL": "Pillow",
    "tqdm": "tqdm",
    "ray": "Ray",
    "scipy": "SciPy",  # the report's statistics
    "torch.utils.tensorboard": "TensorBoard",
    "numpy._core": "numpy's internals",  # the restricted unpickler's, by numpy version
    "numpy.core": "numpy's internals",
}

MAX_FUNCTION_LINES = 100
MAX_CLASS_LINES = 250
MAX_FILE_LINES = 520  # "about 500"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["alexnet_cifar", *parts])] = path
    return out


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The package modules an ``import from`` names (its submodules, where it imports them)."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    if not base.startswith("alexnet_cifar"):
        return []
    known = _modules()
    names = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return names or [base]


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                targets.update(_resolve(module, path, node))
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("alexnet_cifar"))
        graph[module] = {t for t in targets if t != module}
    return graph


def _home(module: str) -> str:
    """The subpackage a module lies in, or "alexnet_cifar" for the package root's modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else "alexnet_cifar"


def test_every_subpackage_has_a_layer_and_the_root_stays_small():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(RANK) - {"alexnet_cifar"}, "give the subpackage a layer in LAYERS"
    root = [p.stem for p in PACKAGE.glob("*.py")]
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the root: {sorted(root)}"


def test_the_architecture_doc_draws_the_same_layers():
    """docs/architecture.md's table of layers lists the packages of each layer, in order."""
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    lines = doc.split("<!-- layers -->")[1].strip().splitlines()
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines))[2:]
    cells = [line.split("|")[2].split() for line in table]
    drawn = [[w.strip("`/") for w in cell if w.startswith("`")] for cell in cells]
    assert drawn == [packages for _, packages in LAYERS]


def test_imports_go_downwards_only():
    wrong = []
    for module, targets in _imports().items():
        if module in ENTRY_POINTS:
            continue
        for t in targets:
            if t == "alexnet_cifar":
                wrong.append(f"{module} imports the package root")
            elif _home(t) != _home(module) and RANK[_home(t)] >= RANK[_home(module)]:
                wrong.append(f"{module} -> {t}")
    assert not wrong, "imports from the same or a higher layer:\n" + "\n".join(sorted(wrong))


def test_nothing_outside_the_command_line_imports_it():
    users = [
        m
        for m, targets in _imports().items()
        if _home(m) != "cli" and m not in ENTRY_POINTS and any(_home(t) == "cli" for t in targets)
    ]
    assert not users


def test_no_import_circle():
    graph = _imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def _lazy(name: str) -> str | None:
    """The entry of LAZY_OK that allows importing ``name`` in a function, if any."""
    return next((ok for ok in LAZY_OK if name == ok or name.startswith(ok + ".")), None)


def test_functions_import_only_heavy_optional_packages():
    """Only the packages of LAZY_OK are imported inside functions; each of them is (a stale
    entry would let a new lazy import through unnoticed), and the docs name exactly them."""
    found, used = [], set()
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.ImportFrom):
                    names = [f"relative import {node.module}"]
                else:
                    continue
                for name in names:
                    if _lazy(name) is None:
                        found.append(f"{module}.{fn.name} imports {name}")
                    used.add(_lazy(name))
    assert not found, "\n".join(found)
    assert used - {None} == set(LAZY_OK), f"not imported lazily: {set(LAZY_OK) - used}"
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    listed = doc.split("<!-- lazy -->")[1].split("<!-- /lazy -->")[0]
    assert {n.strip() for n in " ".join(listed.split()).split(",")} == set(LAZY_OK.values())


def _too_big(source: str, name: str) -> list[str]:
    """What in ``source`` (module ``name``) is over its size limit: the module, a class, a
    function."""
    found = []
    lines = source.count("\n")
    if lines > MAX_FILE_LINES:
        found.append(f"{name}: {lines} lines")
    limits = {ast.FunctionDef: MAX_FUNCTION_LINES, ast.AsyncFunctionDef: MAX_FUNCTION_LINES}
    limits[ast.ClassDef] = MAX_CLASS_LINES
    for node in ast.walk(ast.parse(source)):
        limit = limits.get(type(node))
        if limit is not None and node.end_lineno - node.lineno + 1 > limit:
            found.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    return found


def test_modules_classes_and_functions_stay_small():
    too_big = [f for m, path in _modules().items() for f in _too_big(path.read_text(), m)]
    assert not too_big, "\n".join(too_big)


def test_the_size_check_sees_a_class_too_big():
    """The check above would pass if it measured nothing: a class one line over the limit and
    a function one line over are named, the same code within the limits passes."""
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    method = f"    def f(self):\n{body}\n"
    big = "class C:\n" + method * (MAX_CLASS_LINES // MAX_FUNCTION_LINES) + "    y = 1\n" * 50
    assert _too_big(big, "m") == ["m.C: 251 lines"]
    assert _too_big("def g():\n" + body.replace("        ", "    ") + "\n    y = 1\n", "m") == [
        "m.g: 101 lines"
    ]
    assert _too_big("class C:\n" + method, "m") == []


def test_the_checker_reads_the_real_graph():
    """The rules above would pass on an empty graph: prove the graph is read."""
    graph = _imports()
    assert "alexnet_cifar.models" in graph["alexnet_cifar.training.build"]
    assert "alexnet_cifar.errors" in graph["alexnet_cifar.cli.flags"]
    assert "alexnet_cifar.engine.core" in graph["alexnet_cifar.training.build"]
    assert _home("alexnet_cifar.training.trainer") == "training"
    assert _home("alexnet_cifar.models") == "alexnet_cifar"
    assert _home("alexnet_cifar.engine") == "engine"


def _assigned_late(source: str) -> list[str]:
    """``Class.attribute`` for each attribute a method first assigns on ``self`` outside
    construction (``__init__``, or a dataclass's declared fields and ``__post_init__``): an
    object whose fields appear as it runs is read only by running it."""
    found = []
    for cls in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)):
        fields = [n.target for n in cls.body if isinstance(n, ast.AnnAssign)]
        declared = {t.id for t in fields if isinstance(t, ast.Name)}
        in_init, elsewhere = set(declared), {}
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            for node in ast.walk(fn):
                targets = node.targets if isinstance(node, ast.Assign) else []
                if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                    targets = [node.target]
                for t in (e for target in targets for e in ast.walk(target)):
                    if isinstance(t, ast.Attribute) and getattr(t.value, "id", None) == "self":
                        if fn.name in ("__init__", "__post_init__"):
                            in_init.add(t.attr)
                        else:
                            elsewhere.setdefault(t.attr, fn.name)
        found += [f"{cls.name}.{a} (in {fn})" for a, fn in elsewhere.items() if a not in in_init]
    return found


def test_attributes_are_first_assigned_in_construction():
    late = [f"{m}: {a}" for m, path in _modules().items() for a in _assigned_late(path.read_text())]
    assert not late, "\n".join(late)
    example = "class C:\n    def __init__(self):\n        self.a = 1\n    def f(self):\n"
    assert _assigned_late(example + "        self.a = 2\n") == []
    assert _assigned_late(example + "        self.b, self.a = 2, 3\n") == ["C.b (in f)"]
    fields = "class D:\n    a: int\n    def __post_init__(self):\n        self.b = 1\n"
    assert _assigned_late(fields + "    def f(self):\n        self.a = self.c = 2\n") == [
        "D.c (in f)"
    ]


def test_no_module_imports_another_modules_private_names():
    """A name with a leading underscore stays in its module: what another module needs is
    public (and listed in its ``__all__``)."""
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _resolve(module, path, node):
                private = [a.name for a in node.names if a.name.startswith("_")]
                private = [n for n in private if n not in ("__version__", "__all__")]
                found += [f"{module} imports {name} from {node.module}" for name in private]
    assert not found, "\n".join(found)
