"""A variant of one's own: a shape as a JSON file, accepted wherever a MODEL is, recorded whole
by its runs (which then need the file no more), reported beside the post's five; bad files are
one line each; the optional batch normalisation trains, resumes and runs in bf16."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from alexnet_cifar import load_model
from alexnet_cifar.data import CIFAR10
from alexnet_cifar.engine.options import EngineOptions
from alexnet_cifar.errors import SettingError
from alexnet_cifar.models import (
    PRESETS,
    SHAPE_FIELDS,
    AlexNet,
    AlexNetConfig,
    BatchNorm,
    meta_model,
)
from alexnet_cifar.recipe import Recipe
from alexnet_cifar.training.resume import identity_of_config
from alexnet_cifar.training.trainer import TrainingInterrupted, TrainOptions, train
from alexnet_cifar.variants import layer_table, resolve_variant, variant_list

from .helpers import TINY, interrupt_at, metric_rows, run_main, write_binary_folder

THINNER_4 = PRESETS["alexnet_thinner_4"]


def _write(path: Path, shape: dict) -> Path:
    path.write_text(json.dumps(shape))
    return path


def _shape(config: AlexNetConfig, **changes) -> dict:
    """A variant file's content: ``config``'s shape with ``changes``."""
    return {**json.loads(json.dumps(config.to_dict())), **changes}


# ---------------------------------------------------------------------- models --config


@pytest.mark.parametrize("name", list(PRESETS))
def test_models_config_prints_every_field_of_the_shape_and_nothing_else(name, tmp_path):
    p = run_main("models", "--config", name)
    assert p.returncode == 0, p.stderr
    shape = json.loads(p.stdout)
    assert list(shape) == list(SHAPE_FIELDS)  # every field, by name, and no published count
    assert AlexNetConfig.from_dict(shape) == PRESETS[name]
    saved = tmp_path / "saved.json"
    saved.write_text(p.stdout)
    assert resolve_variant(str(saved)) is PRESETS[name]  # saved unchanged: the preset itself


# ---------------------------------------------------------------------- a file as a MODEL


def test_a_variant_file_is_a_model_for_summary_and_models(tmp_path):
    shape = _shape(TINY, widths=[8, 16, 16, 16, 8], dropout=0.3)
    del shape["name"]  # no field 'name': the file's stem names the variant
    wide = _write(tmp_path / "wide.json", shape)
    config = resolve_variant(str(wide))
    assert config.name == "wide" and config.widths == (8, 16, 16, 16, 8)

    p = run_main("summary", wide, "--json")
    assert p.returncode == 0, p.stderr
    table = json.loads(p.stdout)
    assert table["name"] == "wide" and table["params"] == layer_table(config).params
    assert table["params"] == sum(t.numel() for t in AlexNet(config).parameters())
    p = run_main("models", "--config", wide)
    assert json.loads(p.stdout) == json.loads(json.dumps(config.to_dict()))


@pytest.mark.slow
def test_bench_takes_a_variant_file(tmp_path):
    wide = _write(tmp_path / "wide.json", _shape(TINY, name="wide", batch_norm=True))
    p = run_main(
        "bench", "--models", f"alexnet_thinner_4,{wide}", "--steps", "1", "--rounds", "1",
        "--warmup", "0", "--device", "cpu", "--precision", "fp32", "--json",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["results"]
    assert [r["model"] for r in rows] == ["alexnet_thinner_4", "wide"]
    assert rows[1]["plain_ms"] > 0 and rows[1]["engine_ms"] > 0


def test_study_models_take_all_with_files_but_not_with_names(tmp_path):
    mine = _write(tmp_path / "mine.json", _shape(TINY, name="mine"))
    assert [c.name for c in variant_list(f"all,{mine}")] == [*PRESETS, "mine"]
    assert [c.name for c in variant_list(f"alexnet,{mine},alexnet")] == ["alexnet", "mine"]
    with pytest.raises(SettingError, match="'all' alone"):
        variant_list("all,alexnet")
    other = _write(tmp_path / "other.json", _shape(TINY, name="mine", dropout=0.1))
    with pytest.raises(SettingError, match="two variants are named 'mine'"):
        variant_list(f"{mine},{other}")


def test_a_file_with_a_presets_name_and_shape_is_that_preset(tmp_path):
    same = _write(tmp_path / "same.json", _shape(THINNER_4))
    options = TrainOptions(model=resolve_variant(str(same)), out=tmp_path / "r")
    assert options.model == "alexnet_thinner_4" and options.model_config is None
    preset = TrainOptions(model="alexnet_thinner_4", out=tmp_path / "r")
    # the identity of a preset's runs is what it always was: existing runs still resume
    assert options.run_identity() == preset.run_identity()
    assert not any(k.startswith("model_config") for k in preset.run_identity())


def test_a_custom_variants_identity_holds_its_shape_as_its_record_does(tmp_path):
    mine = replace(TINY, name="mine", batch_norm=True)
    options = TrainOptions(model=mine, out=tmp_path / "r", recipe=Recipe(epochs=2), seed=4)
    ident = options.run_identity()
    assert ident["model"] == "mine" and ident["model_config.widths"] == [8, 8, 8, 8, 8]
    assert ident["model_config.batch_norm"] is True
    # what config.json records (JSON: lists, not tuples) gives the very same identity
    config = json.loads(
        json.dumps(
            {
                "model": "mine",
                "model_config": mine.to_dict(),
                "num_classes": 10,
                "seed": 4,
                "limit_train": None,
                "limit_test": None,
                "recipe": Recipe(epochs=2).to_dict(),
                "engine_used": {k: ident[k] for k in ("precision", "channels_last")},
            }
        )
    )
    assert identity_of_config(config) == ident
    with pytest.raises(SettingError, match="3 classes"):
        TrainOptions(model=replace(mine, num_classes=3), out=tmp_path / "r")


# ---------------------------------------------------------------------- bad files

_GOOD = _shape(TINY, name="good")
BAD_FILES = [
    ("not JSON", "{'name': 'x',", "not-json.json", "is not JSON"),
    ("unknown field", {**_GOOD, "depth": 8}, "unknown.json", "the field 'depth' is not one"),
    ("missing field", {k: v for k, v in _GOOD.items() if k != "l2"}, "missing.json",
     "the field 'l2' is missing"),
    ("wrong type", {**_GOOD, "widths": "wide"}, "type.json",
     "the field 'widths' should be a list of whole numbers"),
    ("wrong type", {**_GOOD, "dropout": "0.5"}, "type2.json",
     "the field 'dropout' should be a finite number"),
    ("width 0", {**_GOOD, "widths": [8, 0, 8, 8, 8]}, "zero.json",
     "the field 'widths' must hold widths of 1 or more"),
    ("unknown stem", {**_GOOD, "stem": "resnet"}, "stem.json",
     "the field 'stem' must be 'imagenet' or 'slim', not 'resnet'"),
    ("unknown init", {**_GOOD, "conv_init": "glorot"}, "init.json",
     "the field 'conv_init' must be 'uniform' or 'he_normal', not 'glorot'"),
    ("name of a preset, other shape", _shape(PRESETS["alexnet_slim"], widths=[64] * 5),
     "clash.json", "the field 'name' is the preset 'alexnet_slim', but the shape differs from it "
     "(widths [64, 64, 64, 64, 64] instead of [96, 256, 384, 384, 256])"),
    ("stem of a preset, other shape", {k: v for k, v in _GOOD.items() if k != "name"},
     "alexnet.json", "its file name (it has no field 'name') is the preset 'alexnet'"),
]  # fmt: skip


@pytest.mark.parametrize("what, content, file, says", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_is_one_line_naming_the_file_and_the_field(what, content, file, says, tmp_path):
    path = tmp_path / file
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    for command in (["train", path, "--out", tmp_path / "run"], ["summary", path]):
        p = run_main(*command)
        assert p.returncode == 2, (what, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
        assert str(path) in p.stderr and says in p.stderr, p.stderr
    assert not (tmp_path / "run").exists()


def test_a_study_records_its_own_variants_and_checks_them(tmp_path):
    from alexnet_cifar.study.runner import read_study_settings, study_variants

    mine = _shape(TINY, name="mine", batch_norm=True)
    study = {"models": ["alexnet", "mine"], "variants": {"mine": mine}, "recipe": {}, "seed": 0}
    (tmp_path / "study.json").write_text(json.dumps(study))
    settings = read_study_settings(tmp_path)
    assert study_variants(settings) == [PRESETS["alexnet"], AlexNetConfig.from_dict(mine)]
    for variants, says in (
        ({}, "the field 'models': unknown model 'mine'"),
        ({"mine": {**mine, "name": "other"}}, "the shape is named 'other'"),
        ({"mine": {**mine, "widths": [8, 0, 8, 8, 8]}}, "the field 'widths' must hold"),
    ):
        (tmp_path / "study.json").write_text(json.dumps({**study, "variants": variants}))
        with pytest.raises(SettingError, match=says) as e:
            read_study_settings(tmp_path)
        assert str(tmp_path / "study.json") in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- batch_norm


def test_batch_norm_follows_each_conv_before_its_relu_and_presets_have_none():
    model = AlexNet(replace(TINY, batch_norm=True))
    names = list(dict(model.layers.named_children()))
    assert names[:4] == ["conv1", "bn1", "relu1", "conv2"]
    assert names.count("bn2") == 1 and names.index("bn5") == names.index("conv5") + 1
    for conv in model.convs():
        assert conv.bias is None  # the normalisation's offset takes its place
    for bn in model.batch_norms():
        assert isinstance(bn, BatchNorm) and (bn.eps, bn.momentum) == (1e-3, 0.01)  # Keras'
    x = torch.randn(16, 3, 32, 32)
    h = model.layers.bn1(model.layers.conv1(x))  # normalised per channel over the batch
    torch.testing.assert_close(h.mean((0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    assert bool((model.layers.relu1(h) >= 0).all())
    for name in PRESETS:
        assert not any("bn" in k for k in meta_model(PRESETS[name]).state_dict())


def _synthetic(n_train=96, n_test=40, seed=0) -> CIFAR10:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n_train + n_test, 32, 32, 3), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x, y = x.numpy(), y.numpy()
    classes = [str(i) for i in range(10)]
    return CIFAR10(x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_norm_killed_and_resumed_equals_the_uninterrupted_run(precision, tmp_path):
    """Mid-epoch, with a weight average: the running statistics and their average are saved
    and restored like the weights."""
    mine = replace(TINY, name="tiny_bn", batch_norm=True)
    engine = EngineOptions(precision=precision, channels_last=precision == "bf16")
    recipe = Recipe(epochs=2, batch_size=32, ema_decay=0.9)
    data = _synthetic()

    def options(out, **kw):
        return TrainOptions(
            model=mine, out=out, recipe=recipe, seed=2, device="cpu", engine=engine,
            quiet=True, progress=False, tensorboard=False, checkpoint_every=0, **kw,
        )  # fmt: skip

    whole, parted = tmp_path / "whole", tmp_path / "parted"
    train(options(whole), data=data)
    with pytest.raises(TrainingInterrupted):
        train(options(parted), data=data, on_step=interrupt_at(1, 1))
    train(options(parted, resume=True), data=data)
    assert metric_rows(parted) == metric_rows(whole)
    a, b = load_model(parted), load_model(whole)
    assert any("running_mean" in k for k in a.state_dict())
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_keras_files_have_no_batch_norm_and_take_custom_shapes(tmp_path):
    from alexnet_cifar.training.checkpoint import save_model_file

    plain = replace(TINY, name="tiny_plain")
    torch.manual_seed(1)
    model = AlexNet(plain)
    run = tmp_path / "run"
    run.mkdir()
    save_model_file(run / "model.pt", plain.to_dict(), model.state_dict(), {})
    assert run_main("export-keras", run, "--out", tmp_path / "w.h5").returncode == 0
    shape = _write(tmp_path / "tiny_plain.json", _shape(plain))
    back = tmp_path / "back"
    p = run_main("import-keras", tmp_path / "w.h5", "--model", shape, "--out", back)
    assert p.returncode == 0, p.stderr
    config = json.loads((back / "config.json").read_text())
    assert config["model"] == "tiny_plain" and config["model_config"]["widths"] == [8] * 5
    for k, v in model.state_dict().items():
        assert torch.equal(load_model(back).state_dict()[k], v), k

    bn = replace(TINY, name="tiny_bn", batch_norm=True)
    save_model_file(run / "model.pt", bn.to_dict(), AlexNet(bn).state_dict(), {})
    p = run_main("export-keras", run, "--out", tmp_path / "bn.h5")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "tiny_bn has batch_norm" in p.stderr and not (tmp_path / "bn.h5").exists()


# ---------------------------------------------------------------------- runs of custom variants

#: Synthetic data (20 images a file) and a tiny fp32 recipe: the command line end to end, fast.
TINY_ARGS = ["--epochs", "2", "--batch-size", "16", "--device", "cpu", "--precision", "fp32",
             "--no-verify", "--no-progress", "--checkpoint-every", "0", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_binary_folder(root, n_per_file=20)
    return root


@pytest.mark.slow
def test_a_custom_run_needs_its_file_no_more(synthetic_dir, tmp_path, monkeypatch):
    """Train from a file, delete the file: resume (by the variant's name), evaluate and report
    rebuild the model from the run's record; a changed file is refused field by field."""
    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(synthetic_dir)]
    mine = _shape(TINY, name="mine", batch_norm=True)
    _write(tmp_path / "mine.json", mine)
    one = [a if a != "2" else "1" for a in TINY_ARGS]  # one epoch, then one more
    more = ["--resume", "--force", "--epochs", "2", *data]
    ref = tmp_path / "ref"  # the same, the file kept
    assert run_main("train", "mine.json", *one, *data, "--out", ref).returncode == 0
    assert run_main("train", "mine.json", "--out", ref, *more).returncode == 0
    assert run_main("train", "mine.json", *one, *data).returncode == 0  # into runs/mine
    (tmp_path / "mine.json").unlink()

    p = run_main("train", "mine", *more)
    assert p.returncode == 0, p.stderr
    assert metric_rows(Path("runs/mine")) == metric_rows(ref)
    p = run_main("evaluate", "runs/mine", *data, "--no-verify", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["loss"] == pytest.approx(float(metric_rows(ref)[-1]["val_loss"]))
    p = run_main("report", "runs/mine", ref, "--out", "rep", "--json")
    assert p.returncode == 0, p.stderr
    assert {r["model"] for r in json.loads(p.stdout)["runs"]} == {"mine"}

    _write(tmp_path / "mine.json", {**mine, "dense": [32, 16], "dropout": 0.25})
    p = run_main("train", "mine.json", "--resume", "--force", "--epochs", "3", *data)
    assert p.returncode == 2
    assert "model_config.dense: checkpoint has [32, 32], this run asks [32, 16]" in p.stderr
    assert "model_config.dropout: checkpoint has 0.5, this run asks 0.25" in p.stderr
    assert len(metric_rows(Path("runs/mine"))) == 2


@pytest.mark.slow
def test_a_report_of_runs_of_two_files(synthetic_dir, tmp_path):
    data = ["--data-dir", str(synthetic_dir)]
    for name, widths in (("narrow", [4, 8, 8, 8, 4]), ("wide", [16, 16, 16, 16, 16])):
        shape = _write(tmp_path / f"{name}.json", _shape(TINY, name=name, widths=widths))
        p = run_main("train", shape, *TINY_ARGS, *data, "--out", tmp_path / name)
        assert p.returncode == 0, p.stderr
    p = run_main("report", tmp_path / "wide", tmp_path / "narrow", "--out", tmp_path / "rep",
                 "--json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    runs = {r["model"]: r for r in summary["runs"]}
    assert list(runs) == ["narrow", "wide"]  # the user's own variants, by name
    wide = resolve_variant(str(tmp_path / "wide.json"))
    assert runs["wide"]["params"] == layer_table(wide).params
    assert runs["narrow"]["params"] < runs["wide"]["params"]
    assert not runs["wide"]["in_post"] and runs["wide"]["published_params"] is None
    md = (tmp_path / "rep" / "report.md").read_text()
    post_rows = [line for line in md.splitlines() if "not in the post" in line]
    assert any("`narrow`" in line for line in post_rows)
    assert any("`wide`" in line for line in post_rows)
    assert (tmp_path / "rep" / "model_size.png").is_file()


@pytest.mark.slow
def test_a_study_of_the_five_presets_and_a_file(synthetic_dir, tmp_path):
    data = ["--data-dir", str(synthetic_dir)]
    mine = _write(tmp_path / "mine.json", _shape(TINY, name="mine", batch_norm=True))
    out = tmp_path / "study"
    flags = ["--epochs", "1", "--batch-size", "16", "--limit-train", "16", "--limit-test", "10",
             "--device", "cpu", "--precision", "fp32", "--no-verify", "--quiet"]  # fmt: skip
    p = run_main("study", "--models", f"all,{mine}", *flags, *data, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    runs = json.loads(p.stdout)["runs"]
    assert [r["model"] for r in runs] == [*PRESETS, "mine"]
    assert [r["in_post"] for r in runs] == [True] * 5 + [False]
    study = json.loads((out / "study.json").read_text())
    assert study["models"] == [*PRESETS, "mine"] and study["variants"]["mine"]["batch_norm"]
    md = (out / "report.md").read_text()
    assert "| `mine` | not in the post |" in md
    # the study continues from its own record, the file gone
    mine.unlink()
    p = run_main("study", "--out", out, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "[6/6] mine: finished earlier, skipped" in p.stdout


@pytest.mark.real_data
@pytest.mark.slow
def test_a_file_of_a_presets_shape_trains_to_the_presets_metrics(cifar10_dir, tmp_path):
    """CPU, fp32, the same seed: the file (a name of its own, the shape of alexnet_thinner_4)
    and the preset compute the same run."""
    same = _write(tmp_path / "same.json", _shape(THINNER_4, name="my_thinner_4"))
    flags = ["--epochs", "2", "--batch-size", "32", "--limit-train", "96", "--limit-test", "50",
             "--seed", "3", "--device", "cpu", "--precision", "fp32", "--no-verify", "--quiet",
             "--no-progress", "--data-dir", str(cifar10_dir)]  # fmt: skip
    for model, out in (("alexnet_thinner_4", "preset"), (same, "file")):
        p = run_main("train", model, *flags, "--out", tmp_path / out)
        assert p.returncode == 0, p.stderr
    assert metric_rows(tmp_path / "file") == metric_rows(tmp_path / "preset")
    config = json.loads((tmp_path / "file" / "config.json").read_text())
    assert config["model"] == "my_thinner_4" and config["model_config"]["name"] == "my_thinner_4"
    a, b = load_model(tmp_path / "file"), load_model(tmp_path / "preset")
    for (name, p_), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p_, q), name
