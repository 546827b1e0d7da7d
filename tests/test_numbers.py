"""report.numbers: the post's figures and the seed's setting each have one owner."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import alexnet_cifar
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.report import numbers

PACKAGE = Path(alexnet_cifar.__file__).resolve().parent


def _constants(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant):
            yield node


def test_the_seed_setting_is_the_seed_recipe():
    seed = Recipe()
    assert (numbers.SEED_EPOCHS, numbers.SEED_BATCH) == (seed.epochs, seed.batch_size)
    # numbers takes them from the recipe instead of writing them again
    written = {c.value for c in _constants(PACKAGE / "report" / "numbers.py")}
    assert not written & {seed.epochs, seed.batch_size}, written & {300, 64}


def test_the_posts_best_accuracy_is_written_once():
    # "~92%" lives in PUBLISHED_ACCURACY; the report's verdict and the study's summary line
    # derive their words from it.
    assert numbers.PUBLISHED_ACCURACY[numbers.POST_BEST] == (0.92, "~92%")
    assert numbers.POST_BEST_ACCURACY == "about 92%"
    found = [
        f"{path.relative_to(PACKAGE)}: {c.value!r}"
        for path in PACKAGE.rglob("*.py")
        for c in _constants(path)
        if isinstance(c.value, str) and re.search(r"(?<![.\d])92 ?%", c.value)
    ]
    assert found == ["report/numbers.py: '~92%'"], found


def test_the_seeds_lr_drop_is_the_recipes():
    # The report's default for a recipe recorded without lr_decay is Recipe.lr_decay, not a
    # 0.1 of its own (it was written three times).
    found = [
        f"{path.relative_to(PACKAGE)}: line {c.lineno}"
        for folder in ("report", "cli")
        for path in (PACKAGE / folder).rglob("*.py")
        for c in _constants(path)
        if type(c.value) is float and c.value == Recipe.lr_decay
    ]
    assert not found, found
