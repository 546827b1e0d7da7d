"""report.numbers: the post's figures and the seed's setting each have one owner, which the
report follows."""

from __future__ import annotations

import dataclasses
import importlib

from alexnet_cifar import recipe as recipe_module
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.report import figures, numbers, sections


def test_the_seed_setting_follows_the_seed_recipe(monkeypatch):
    """numbers takes the post's epochs and batch from the recipe: with another seed recipe
    it states another setting."""
    seed = Recipe()
    assert (numbers.SEED_EPOCHS, numbers.SEED_BATCH) == (seed.epochs, seed.batch_size)
    other = dataclasses.make_dataclass(
        "Other", [("epochs", int, 7), ("batch_size", int, 16)], bases=(Recipe,), frozen=True
    )
    monkeypatch.setattr(recipe_module, "Recipe", other)
    try:
        importlib.reload(numbers)
        assert (numbers.SEED_EPOCHS, numbers.SEED_BATCH) == (7, 16)
    finally:
        monkeypatch.undo()
        importlib.reload(numbers)
    assert (numbers.SEED_EPOCHS, numbers.SEED_BATCH) == (seed.epochs, seed.batch_size)


def test_the_posts_best_accuracy_in_words_follows_its_figure():
    value, words = numbers.PUBLISHED_ACCURACY[numbers.POST_BEST]
    assert (value, words) == (0.92, "~92%")  # the post's own figure and words
    assert numbers.POST_BEST_ACCURACY == f"about {value:.0%}"


def test_the_reports_lr_drop_follows_the_recipe(monkeypatch):
    """A run recorded without lr_decay is described with the seed recipe's drop, whatever it
    is: the figures' label and the training text follow Recipe.lr_decay."""
    run = {"recipe": "seed", "lr": 0.01, "lr_milestones": [1, 2]}
    assert figures._lr_drop_label({}) == f"lr x{Recipe.lr_decay:g}"
    monkeypatch.setattr(Recipe, "lr_decay", 0.5)
    assert figures._lr_drop_label({}) == "lr x0.5"
    assert "divided by 2 at" in sections._training_text([run])
    assert "multiplied by 0.25" in sections._training_text([{**run, "lr_decay": 0.25}])
