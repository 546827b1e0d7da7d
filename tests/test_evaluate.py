"""evaluate: loss, accuracy and confusion over batches; flip test-time augmentation (the mean of
a picture's and its mirror's softmax) in the library and through evaluate --tta."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alexnet_cifar import build_model
from alexnet_cifar.augment import normalize
from alexnet_cifar.cli import main
from alexnet_cifar.engine.evaluate import evaluate_model, evaluate_with_tta

from .helpers import probs_of, write_binary_folder


def test_flip_tta_is_the_mean_of_the_two_softmaxes():
    torch.manual_seed(2)
    model = build_model("alexnet").eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (10, 32, 32, 3), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (10,), generator=g)
    ev = evaluate_model(model, x, y, tta_flip=True, loss_clip_eps=0)
    with torch.no_grad():
        xf = normalize(x)
        p = (torch.softmax(model(xf), 1) + torch.softmax(model(xf.flip(-1)), 1)) / 2
    want_ce = float(-torch.log(p[torch.arange(10), y]).mean())
    assert ev.cross_entropy == pytest.approx(want_ce, rel=1e-5)
    assert ev.accuracy == pytest.approx(float((p.argmax(1) == y).float().mean()))


def test_tta_is_the_mean_of_image_and_mirror_softmax(tiny_model):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 16)
    plain, tta = evaluate_with_tta(tiny_model, x, y, batch_size=16)
    reference = evaluate_model(tiny_model, x, y, batch_size=16)
    assert plain.accuracy == reference.accuracy and plain.loss == pytest.approx(reference.loss)
    assert np.array_equal(plain.confusion, reference.confusion)
    # independently: mirror the uint8 pictures (width is axis 2 in N, H, W, C)
    p = 0.5 * (probs_of(tiny_model, x) + probs_of(tiny_model, x[:, :, ::-1]))
    assert tta.accuracy == pytest.approx(float((p.argmax(1) == y).mean()))
    ce = -np.log(np.clip(p[np.arange(16), y], 1e-7, 1 - 1e-7)).mean()
    assert tta.cross_entropy == pytest.approx(ce, rel=1e-5)
    assert tta.loss == pytest.approx(ce + float(tiny_model.l2_penalty().detach()), rel=1e-5)
    assert tta.confusion.sum() == 16
    # the flip matters for these pictures, and not at all for mirror-symmetric ones
    assert tta.cross_entropy != pytest.approx(plain.cross_entropy, rel=1e-3)
    sym = np.concatenate([x[:, :, :16], x[:, :, :16][:, :, ::-1]], axis=2)
    plain_s, tta_s = evaluate_with_tta(tiny_model, sym, y)
    assert tta_s.cross_entropy == pytest.approx(plain_s.cross_entropy, rel=1e-5)


def test_evaluate_tta_command(tiny_run, tiny_model, tmp_path, capsys):
    data = tmp_path / "data"
    labels, pixels = write_binary_folder(data, n_per_file=12)["test_batch.bin"]
    # The test images as the model sees them (NHWC), and their prediction computed here: the
    # mean of the softmax of each image and of its mirror image.
    x = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    plain_p = probs_of(tiny_model, x)
    tta_p = (plain_p + probs_of(tiny_model, x[:, :, ::-1])) / 2

    def expected(p):
        picked = np.clip(p[np.arange(len(labels)), labels], 1e-7, 1 - 1e-7)  # Keras' clip
        confusion = np.zeros((10, 10), dtype=int)
        np.add.at(confusion, (labels, p.argmax(1)), 1)
        return float(np.mean(-np.log(picked))), float(np.mean(p.argmax(1) == labels)), confusion

    args = ["evaluate", str(tiny_run), "--data-dir", str(data), "--no-verify", "--device", "cpu"]
    assert main([*args, "--json"]) == 0
    plain_only = json.loads(capsys.readouterr().out)
    assert "tta" not in plain_only
    assert main([*args, "--json", "--tta"]) == 0
    both = json.loads(capsys.readouterr().out)
    for key in ("loss", "accuracy", "per_class_accuracy", "confusion_matrix", "n", "classes"):
        assert both[key] == plain_only[key], key  # the plain report is unchanged
    for report, p in ((both, plain_p), (both["tta"], tta_p)):
        loss, accuracy, confusion = expected(p)  # the model has no L2 term
        assert report["n"] == 12
        assert report["loss"] == pytest.approx(loss, rel=1e-5)
        assert report["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert np.array_equal(report["confusion_matrix"], confusion)
    assert both["tta_loss"] == pytest.approx(expected(tta_p)[0], rel=1e-5)
    assert both["tta_accuracy"] == pytest.approx(expected(tta_p)[1], abs=1e-12)
    assert main([*args, "--tta"]) == 0
    text = capsys.readouterr().out
    tta_accuracy, plain_accuracy = expected(tta_p)[1], expected(plain_p)[1]
    assert (
        f"flip-averaged (--tta): loss {expected(tta_p)[0]:.4f}  accuracy {tta_accuracy:.4f}  "
        f"({tta_accuracy - plain_accuracy:+.4f} against the plain prediction)"
    ) in text


def test_a_run_folder_is_evaluated_on_its_own_test_subset_and_seed(tiny_run, tiny_model, tmp_path):
    """A run trained on --limit-test 20 --seed 3 is evaluated on those 20 images by default
    (as its result.json was), and says so; other flags are allowed and said to differ."""
    from alexnet_cifar.data import load_cifar10

    from .helpers import run_main

    data = tmp_path / "data"
    write_binary_folder(data, n_per_file=100)
    config = {"model": "tiny", "limit_test": 20, "seed": 3, "limit_train": 50, "recipe": {}}
    (tiny_run / "config.json").write_text(json.dumps(config))
    args = ["evaluate", tiny_run, "--data-dir", data, "--no-verify", "--device", "cpu"]

    def evaluated(*flags) -> dict:
        p = run_main(*args, "--json", *flags)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    own = evaluated()
    subset = load_cifar10(data, verify=False).subset(None, 20, 3)
    want = evaluate_model(tiny_model, subset.x_test, subset.y_test, batch_size=500)
    assert own["n"] == 20 and own["loss"] == pytest.approx(want.loss, rel=1e-6)
    assert own["test_set"] == {"limit_test": 20, "seed": 3, "the_runs_own": True}
    assert evaluated("--seed", "0")["test_set"]["the_runs_own"] is False
    assert evaluated("--limit-test", "20", "--seed", "3")["loss"] == own["loss"]

    first = run_main(*args).stdout.splitlines()[0]
    assert "20 test images" in first and "the run's own test set" in first, first
    assert "--limit-test 20" in first and "--seed 3" in first
    other = run_main(*args, "--limit-test", "30").stdout.splitlines()[0]
    assert "30 test images" in other and "not the run's, tested on" in other, other
    assert "--limit-test 20 --seed 3" in other
