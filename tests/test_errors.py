"""errors: names that moved still import from their old places, with a DeprecationWarning, and
nothing inside the project uses those old places."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (old module, name, the module that owns it)
MOVED = [
    ("train", "CONFIG_FILE", "files"),
    ("train", "METRICS_FILE", "files"),
    ("train", "RESULT_FILE", "files"),
    ("checkpoint", "atomic_write_bytes", "files"),
    ("checkpoint", "atomic_write_json", "files"),
    ("checkpoint", "atomic_write_text", "files"),
    ("predict", "evaluate_with_tta", "evaluate"),
    ("predict", "class_names", "runlog"),
]


@pytest.mark.parametrize("old, name, home", MOVED)
def test_an_old_import_path_warns_and_still_works(old, name, home):
    old_module = importlib.import_module(f"alexnet_cifar.{old}")
    home_module = importlib.import_module(f"alexnet_cifar.{home}")
    assert name not in old_module.__all__
    with pytest.warns(DeprecationWarning, match=rf"import it from alexnet_cifar\.{home}"):
        value = getattr(old_module, name)
    assert value is getattr(home_module, name)
    namespace: dict = {}
    with pytest.warns(DeprecationWarning, match=f"alexnet_cifar.{old}.{name} is deprecated"):
        exec(f"from alexnet_cifar.{old} import {name}", namespace)
    assert namespace[name] is getattr(home_module, name)


def test_other_missing_names_are_still_attribute_errors():
    import alexnet_cifar.train as train

    with pytest.raises(AttributeError, match="no attribute 'NO_SUCH_NAME'"):
        train.NO_SUCH_NAME  # noqa: B018
    with pytest.raises(ImportError):
        exec("from alexnet_cifar.predict import NO_SUCH_NAME", {})


def _project_files():
    for folder in ("src", "tests", "scripts", "docs"):
        yield from (ROOT / folder).rglob("*.py")
        yield from (ROOT / folder).rglob("*.md")
    yield ROOT / "README.md"


def test_nothing_in_the_project_uses_an_old_import_path():
    moved = {(old, name) for old, name, _ in MOVED}
    attribute = re.compile(
        r"\b(" + "|".join({old for old, _, _ in MOVED}) + r")\.("
        + "|".join({name for _, name, _ in MOVED}) + r")\b"
    )
    found = []
    for path in _project_files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        found += [f"{path.name}: {m.group(0)}" for m in attribute.finditer(text)]
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module:
                old = node.module.rsplit(".", 1)[-1]
                found += [
                    f"{path.name}: from {node.module} import {a.name}"
                    for a in node.names
                    if (old, a.name) in moved
                ]
    assert not found, found
