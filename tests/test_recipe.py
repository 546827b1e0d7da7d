"""recipe: the fast recipe's named fields and its schedule; it learns and resumes exactly."""

import dataclasses
import json

import pytest

from alexnet_cifar import recipe as recipe_module
from alexnet_cifar.cli import main
from alexnet_cifar.cli.flags import flag_name
from alexnet_cifar.errors import SettingError
from alexnet_cifar.recipe import Recipe, fast_recipe, get_recipe
from alexnet_cifar.training.trainer import TrainingInterrupted, train

from .helpers import interrupt_at, metric_rows, train_options


def test_fast_recipe_is_named_fields_with_linear_lr_scaling():
    fast = get_recipe("fast")
    assert (fast.name, fast.batch_size, fast.lr) == ("fast", 512, pytest.approx(0.08))
    assert fast.label_smoothing == 0.1 and fast.tta_flip and fast.ema_decay > 0
    assert fast.momentum_form == "torch" and fast.lr_schedule == "warmup_linear"
    assert get_recipe("fast", batch_size=64).lr == pytest.approx(0.01)
    assert get_recipe("fast", batch_size=64, lr=0.03).lr == pytest.approx(0.03)
    assert get_recipe("seed").to_dict() == Recipe().to_dict()
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("slow")
    with pytest.raises(ValueError, match="loss_clip_eps to 0"):
        Recipe(label_smoothing=0.1)


def test_fast_recipe_rate_is_the_seed_rate_scaled(monkeypatch):
    # The fast recipe's rate is the seed's per-image rate times its batch: one fact, no
    # separate default that the scaling always overwrites.
    seed = Recipe()
    for batch in (64, 256, 512, 1000):
        assert get_recipe("fast", batch_size=batch).lr == pytest.approx(
            seed.lr * batch / seed.batch_size
        )
    # ... and follows the seed's rate and batch, having none of its own
    other = dataclasses.make_dataclass(
        "Other", [("lr", float, 0.02), ("batch_size", int, 32)], bases=(Recipe,), frozen=True
    )
    monkeypatch.setattr(recipe_module, "Recipe", other)
    assert fast_recipe().lr == pytest.approx(0.02 * 512 / 32)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": -1.0}, "--lr"),
        ({"momentum": 1.0}, "the recipe's momentum"),
        ({"ema_decay": 1.0}, "the recipe's ema_decay"),
        ({"label_smoothing": 1.5}, "the recipe's label_smoothing"),
        ({"lr_schedule": "cosine"}, "the recipe's lr_schedule"),
        ({"momentum_form": "adam"}, "the recipe's momentum_form"),
        ({"label_smoothing": 0.1}, "the recipe's label_smoothing"),
    ],
)
def test_recipe_errors_name_a_flag_only_where_train_has_it(changes, named):
    """A field that train sets with a flag is named by its flag; the others (which come with a
    recipe or a run's config.json) by their field: no message names a flag that is not one."""
    import re

    from alexnet_cifar.cli import flags

    parser, sub = flags.make_parser()
    train = sub.add_parser("train")
    flags.add_train_flags(train)
    real = {s for a in train._actions for s in a.option_strings}
    for make in (lambda: Recipe(**changes), lambda: get_recipe("seed", **changes)):
        with pytest.raises(SettingError) as e:
            make()
        shown = e.value.render(flag_name)
        assert shown.startswith(named), shown
        assert set(re.findall(r"--[a-z][a-z-]*", shown)) <= real, shown


def test_unknown_recipe_names_the_parameter():
    with pytest.raises(SettingError) as e:
        get_recipe("slow")
    assert "--recipe 'slow'" in e.value.render(flag_name)
    assert "recipe 'slow'" in str(e.value)


def test_warmup_linear_schedule():
    r = Recipe(
        epochs=10,
        lr=1.0,
        lr_schedule="warmup_linear",
        lr_warmup_epochs=2,
        lr_final_fraction=0.1,
        momentum_form="torch",
    )
    spe = 10
    lrs = [r.lr_at(e, s, spe) for e in range(10) for s in range(spe)]
    assert lrs[0] == pytest.approx(1 / 20)  # the first step already moves
    assert lrs[19] == pytest.approx(1.0)  # the end of the warm-up: the peak
    assert lrs[-1] == pytest.approx(0.1)  # the last step: the final fraction
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:20]))
    assert all(a > b for a, b in zip(lrs[19:], lrs[20:]))
    assert r.per_step_lr and not Recipe().per_step_lr


@pytest.mark.real_data
@pytest.mark.slow
def test_fast_recipe_resumes_exactly(cifar10, tmp_path):
    fast = get_recipe("fast", epochs=3, batch_size=32)
    ref = tmp_path / "ref"
    train(train_options(ref, recipe=fast), data=cifar10)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(train_options(out, recipe=fast), data=cifar10, on_step=interrupt_at(1, 2))
    train(train_options(out, resume=True, recipe=fast), data=cifar10)
    assert metric_rows(out) == metric_rows(ref)
    lrs = [float(r["lr"]) for r in metric_rows(ref)]
    assert lrs[-1] == pytest.approx(0.0)  # decayed to nothing at the last step


@pytest.mark.real_data
@pytest.mark.slow
def test_fast_recipe_learns_on_a_subset(cifar10_dir, tmp_path, capsys):
    # alexnet, 3 epochs of 2,000 images at batch 64 (lr scaled to 0.01): about 40 s on 2 cores
    # and 27% on 500 test images (chance: 10%, one standard deviation 1.3 points).
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "alexnet",
            "--recipe",
            "fast",
            "--epochs",
            "3",
            "--batch-size",
            "64",
            "--limit-train",
            "1500",
            "--limit-test",
            "500",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--json",
            "--no-verify",
            "--data-dir",
            str(cifar10_dir),
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"] == "fast"
    assert result["test_accuracy"] > 0.18, result
    config = json.loads((out / "config.json").read_text())
    # The recorded recipe is the fast one with the flags given, field by field: the values,
    # not just the names (every recipe has every field).
    recorded = config["recipe"]
    assert recorded == get_recipe("fast", epochs=3, batch_size=64).to_dict()
    fast_fields = {
        "lr_schedule": "warmup_linear",
        "lr_warmup_epochs": 2.0,
        "label_smoothing": 0.1,
        "ema_decay": 0.999,
        "tta_flip": True,
        "momentum_form": "torch",
        "loss_clip_eps": 0.0,
    }
    seed = Recipe().to_dict()
    for field, value in fast_fields.items():
        assert recorded[field] == value != seed[field], field
    assert recorded["lr"] == pytest.approx(0.01)
