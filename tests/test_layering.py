"""The package's shape stays as docs/architecture.md draws it: layers that import downwards
only, no circle, heavy optional packages imported where they are used, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alexnet_cifar"

#: Each top-level module (or subpackage) of alexnet_cifar, by layer, lowest first.
LAYERS = {
    "base": ["_version", "errors", "files"],
    "domain": ["models", "safe_pickle", "data", "augment", "recipe", "optim", "distributed"],
    "compute": [
        "engine_options",
        "engine_ema",
        "engine_step",
        "engine_epoch",
        "engine_capture",
        "engine",
        "evaluate",
    ],
    "storage": ["checkpoint", "runlog"],
    "workflows": [
        "resume",
        "selection",
        "train_records",
        "stop_signals",
        "train",
        "study",
        "executors",
        "report",
        "predict",
        "export",
        "keras_files",
        "keras_io",
        "bench",
    ],
    "cli": ["cli", "__main__"],
}
RANK = {module: i for i, names in enumerate(LAYERS.values()) for module in names}

#: Packages a function may import where it uses them: heavy, optional or slow to import.
LAZY_OK = {
    "matplotlib",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "h5py",
    "PIL",
    "tqdm",
    "ray",
    "scipy",  # the report's statistics: Student's t
    "torch.utils.tensorboard",
    "numpy._core",  # the restricted unpickler's numpy internals, by numpy version
    "numpy.core",
}

MAX_FUNCTION_LINES = 100
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


def _layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alexnet_cifar"


def test_every_module_has_a_layer():
    unplaced = {_layer_of(m) for m in _modules()} - set(RANK) - {"alexnet_cifar"}
    assert not unplaced, f"give these modules a layer in LAYERS: {sorted(unplaced)}"


def test_imports_go_downwards_only():
    upward = []
    for module, targets in _imports().items():
        if module == "alexnet_cifar":  # the package root re-exports the public API
            continue
        for t in targets:
            if t == "alexnet_cifar":
                upward.append(f"{module} imports the package root")
            elif RANK[_layer_of(t)] > RANK[_layer_of(module)]:
                upward.append(f"{module} -> {t}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_nothing_outside_the_command_line_imports_it():
    users = [
        m
        for m, targets in _imports().items()
        if _layer_of(m) not in ("cli", "__main__") and any(_layer_of(t) == "cli" for t in targets)
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


def test_functions_import_only_heavy_optional_packages():
    found = []
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
                    if not any(name == ok or name.startswith(ok + ".") for ok in LAZY_OK):
                        found.append(f"{module}.{fn.name} imports {name}")
    assert not found, "\n".join(found)


def test_modules_and_functions_stay_small():
    too_big = []
    for module, path in _modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES:
            too_big.append(f"{module}: {lines} lines")
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = fn.end_lineno - fn.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_big.append(f"{module}.{fn.name}: {n} lines")
    assert not too_big, "\n".join(too_big)


def test_the_checker_reads_the_real_graph():
    """The rules above would pass on an empty graph: prove the graph is read."""
    graph = _imports()
    assert "alexnet_cifar.models" in graph["alexnet_cifar.train"]
    assert "alexnet_cifar.errors" in graph["alexnet_cifar.cli.flags"]
    assert all(_layer_of(t) != "cli" for t in graph["alexnet_cifar.train"])
