"""keras_io and keras_files: import-keras and export-keras against real Keras 3 files and Keras
2's HDF5 layout. Reading a file (keras_files) and mapping it onto a preset (keras_io) are tested
together here: nearly every check needs both.

Keras 3 (torch backend) runs in one subprocess (tests/keras_reference.py), so its backend setting
never reaches this process. It builds the seed's models, saves them every way it can, predicts
on random inputs, and loads the files export-keras writes. Keras 2 needs TensorFlow, which the
test environment does not have; its files are written here with h5py in exactly the layout
Keras 2's ``model.save`` and ``save_weights`` use, from the same weights, so Keras 3's
predictions are the reference for them too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from alexnet_cifar import build_model, load_model
from alexnet_cifar.cli import main
from alexnet_cifar.interchange.keras_io import (
    export_keras_weights,
    keras_to_state_dict,
    matching_presets,
    read_keras_weights,
)
from alexnet_cifar.models import AlexNet, get_config
from alexnet_cifar.training.checkpoint import save_model_file

from .helpers import confident_model, write_binary_folder

HERE = Path(__file__).resolve().parent
TOL = 1e-4
KERAS_MODELS = [
    "alexnet_thinner_4",
    "alexnet",
    "nested:alexnet_thinner_4",
    "channels_first:alexnet_thinner_4",
]
KERAS_FORMATS = [".h5", ".weights.h5", ".keras"]


@pytest.fixture(scope="module")
def keras_dir(tmp_path_factory):
    """Keras' files and predictions, and Keras' predictions with our exported weights."""
    d = tmp_path_factory.mktemp("keras")
    ours = confident_model("alexnet_thinner_4", seed=1)
    x = np.random.default_rng(5).normal(0, 1, (8, 32, 32, 3)).astype(np.float32)
    checks = []
    for suffix in ("ours.weights.h5", "ours.h5"):
        export_keras_weights(ours, d / suffix)
        np.save(d / f"{suffix}.x.npy", x)
        checks.append(f"check:alexnet_thinner_4:{d / suffix}")
    with torch.no_grad():
        np.save(
            d / "ours.probs.npy", torch.softmax(ours(torch.from_numpy(x).permute(0, 3, 1, 2)), 1)
        )
    p = subprocess.run(
        [sys.executable, str(HERE / "keras_reference.py"), str(d), *KERAS_MODELS, *checks],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "torch" in p.stdout  # Keras ran on its torch backend
    return d


def reference(keras_dir: Path, name: str):
    d = np.load(keras_dir / (name.replace(":", "-") + ".npz"))
    return d["x"], d["probs"], [d[f"w{i}"] for i in range(16)]


def our_probs(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
        return torch.softmax(model.eval()(x), dim=1).numpy()


@pytest.mark.slow
def test_keras_reference_is_discriminating(keras_dir):
    # Confident outputs that change with the input: a wrong mapping cannot stay under 1e-4.
    for name in KERAS_MODELS:
        _, probs, _ = reference(keras_dir, name)
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        assert probs.max(1).mean() > 0.5, name
        assert np.abs(probs - probs.mean(0)).max() > 0.05, name


# Every format for thinner_4 (slim stem, an 8x8x64 map before the dense head); alexnet (11x11/4
# stem) as model.save writes it (its .weights.h5 is read in test_weights_map_exactly); the
# nested and channels-first variants where their layouts differ (.keras holds a .weights.h5).
PARITY_CASES = [
    (name, fmt)
    for name in KERAS_MODELS
    for fmt in KERAS_FORMATS
    if name == "alexnet_thinner_4" or fmt == ".h5" or (":" in name and fmt == ".weights.h5")
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), PARITY_CASES)
def test_import_matches_keras_predictions(keras_dir, tmp_path, name, fmt, capsys):
    x, want, _ = reference(keras_dir, name)
    preset = name.split(":")[-1]
    src = keras_dir / (name.replace(":", "-") + fmt)
    args = ["import-keras", str(src), "--model", preset, "--out", str(tmp_path / "run")]
    if name.startswith("channels_first") and fmt == ".weights.h5":
        args += ["--flatten", "chw"]  # a weights-only file carries no model config
    assert main(args) == 0, capsys.readouterr().err
    model = load_model(tmp_path / "run")
    assert model.config.name == preset
    diff = np.abs(our_probs(model, x) - want).max()
    print(f"Keras vs ours, {name}{fmt}: max |difference| {diff:.2e}")
    assert diff <= TOL


@pytest.mark.slow
def test_flatten_order_matters_and_wrong_order_is_caught(keras_dir):
    # thinner_4 ends on an 8x8x64 map: reading it in (C, H, W) order must break parity.
    x, want, _ = reference(keras_dir, "alexnet_thinner_4")
    kw = read_keras_weights(keras_dir / "alexnet_thinner_4.h5")
    assert kw.flatten_order == "HWC"
    cfg = get_config("alexnet_thinner_4")
    kw.flatten_order = "CHW"
    wrong = AlexNet(cfg)
    wrong.load_state_dict(keras_to_state_dict(kw, cfg))
    assert np.abs(our_probs(wrong, x) - want).max() > 0.1
    # and the channels-first model's config is read: its files say CHW by themselves
    assert read_keras_weights(keras_dir / "channels_first-alexnet_thinner_4.h5").flatten_order == (
        "CHW"
    )
    assert read_keras_weights(
        keras_dir / "channels_first-alexnet_thinner_4.keras"
    ).flatten_order == ("CHW")


@pytest.mark.slow
def test_weights_map_exactly(keras_dir):
    # Kernel (kh, kw, in, out) -> (out, in, kh, kw); dense (in, out) -> (out, in); biases as is.
    _, _, arrays = reference(keras_dir, "alexnet")
    cfg = get_config("alexnet")
    state = keras_to_state_dict(read_keras_weights(keras_dir / "alexnet.weights.h5"), cfg)
    names = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "fc3"]
    for i, n in enumerate(names):
        kernel, bias = arrays[2 * i], arrays[2 * i + 1]
        w = state[f"layers.{n}.weight"].numpy()
        want = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        assert w.shape == want.shape and np.array_equal(w, want), n
        assert np.array_equal(state[f"layers.{n}.bias"].numpy(), bias), n


# ---------------------------------------------------------------------- Keras 2's layout

K2_MODEL_CONFIG = {
    "class_name": "Model",
    "config": {
        "name": "model_2",
        "layers": [
            {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 32, 32, 3]}},
            {"class_name": "Conv2D", "config": {"data_format": "channels_last"}},
            {"class_name": "Flatten", "config": {"data_format": "channels_last"}},
        ],
    },
}


def write_keras2_h5(path: Path, arrays, *, whole_model=True, as_bytes=True, first=6):
    """What Keras 2.x writes: ``model.save`` (weights under model_weights) or ``save_weights``.

    Layer names count up through a session, so the second model built is conv2d_6 ... conv2d_10:
    HDF5 lists conv2d_10 first, and only the layer_names attribute has the real order.
    """
    convs = [f"conv2d_{first + i}" for i in range(5)]
    denses = [f"dense_{first - 2 + i}" for i in range(3)]
    pools = [f"max_pooling2d_{first + i}" for i in range(3)]
    drops = [f"dropout_{first - 2 + i}" for i in range(2)]
    stem = arrays[0].shape[0] == 11  # alexnet's conv 11x11 has a pool after it
    order = ["input_2", convs[0]] + ([pools[0]] if stem else [])
    order += [convs[1], pools[1], convs[2], convs[3], convs[4], pools[2], "flatten_2"]
    order += [denses[0], drops[0], denses[1], drops[1], denses[2]]
    weighted = dict(zip(convs + denses, zip(arrays[0::2], arrays[1::2])))

    def enc(names):
        return np.array([n.encode() for n in names]) if as_bytes else names

    with h5py.File(path, "w") as f:
        if whole_model:
            f.attrs["keras_version"] = b"2.2.4" if as_bytes else "2.2.4"
            f.attrs["backend"] = b"tensorflow"
            f.attrs["model_config"] = json.dumps(K2_MODEL_CONFIG).encode()
            f.attrs["training_config"] = b"{}"
            g = f.create_group("model_weights")
            opt = f.create_group("optimizer_weights/training/SGD")
            opt.attrs["weight_names"] = enc(["training/SGD/Variable:0"])
            opt.create_dataset("Variable:0", data=np.zeros((3, 3, 3, 24), np.float32))
        else:
            g = f
        g.attrs["layer_names"] = enc(order)
        g.attrs["backend"] = b"tensorflow"
        g.attrs["keras_version"] = b"2.2.4"
        for name in sorted(order):  # created alphabetically, as Keras 2 sorts them too
            lg = g.create_group(name)
            if name in weighted:
                wn = [f"{name}/kernel:0", f"{name}/bias:0"]
                lg.attrs["weight_names"] = enc(wn)
                for n, a in zip(wn, weighted[name]):
                    lg.create_dataset(n, data=a)
            else:
                lg.attrs["weight_names"] = np.array([], dtype="S1") if as_bytes else []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "whole_model", "as_bytes"),
    [
        ("alexnet", True, True),  # the seed's own model.save('alexnet.h5')
        ("alexnet_thinner_4", True, True),
        ("alexnet_thinner_4", True, False),  # names written as str, as newer h5py writers do
        ("alexnet_thinner_4", False, True),  # save_weights: the layer groups at the root
    ],
)
def test_keras2_h5_matches_keras_predictions(keras_dir, tmp_path, name, whole_model, as_bytes):
    x, want, arrays = reference(keras_dir, name)
    src = tmp_path / "alexnet.h5"
    write_keras2_h5(src, arrays, whole_model=whole_model, as_bytes=as_bytes)
    with h5py.File(src) as f:  # the trap is set: alphabetical order is not creation order
        g = f["model_weights"] if whole_model else f
        assert list(g.keys())[0] == "conv2d_10"
    kw = read_keras_weights(src)
    assert kw.format == "keras2-h5" and kw.keras_version == "2.2.4"
    assert [layer.name for layer in kw.layers][:2] == ["conv2d_6", "conv2d_7"]
    assert main(["import-keras", str(src), "--out", str(tmp_path / "run")]) == 0
    model = load_model(tmp_path / "run")
    assert model.config.name == name  # found from the shapes
    diff = np.abs(our_probs(model, x) - want).max()
    print(f"Keras vs ours, Keras 2 layout {name}: max |difference| {diff:.2e}")
    assert diff <= TOL


def test_keras2_attribute_chunks(tmp_path):
    # Keras 2 splits attributes over 64 KB into layer_names0, layer_names1, ...
    cfg = get_config("alexnet_thinner_4")
    torch.manual_seed(0)
    model = build_model("alexnet_thinner_4")
    src = tmp_path / "w.h5"
    export_keras_weights(model, src)
    with h5py.File(src, "a") as f:
        names = list(f.attrs["layer_names"])
        del f.attrs["layer_names"]
        f.attrs["layer_names0"] = np.array(names[:4])
        f.attrs["layer_names1"] = np.array(names[4:])
    state = keras_to_state_dict(read_keras_weights(src), cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k


# ---------------------------------------------------------------------- refusals


@pytest.mark.slow
def test_wrong_model_is_refused_with_shapes_and_a_hint(keras_dir, tmp_path, capsys):
    src = keras_dir / "alexnet_thinner_4.h5"
    rc = main(["import-keras", str(src), "--model", "alexnet", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "'conv2d'" in err and "(3, 3, 3, 24)" in err and "(11, 11, 3, 96)" in err
    assert "looks like alexnet_thinner_4" in err
    assert not (tmp_path / "r" / "model.pt").exists()


def test_each_preset_is_recognised(tmp_path):
    # every preset has its own kernel shapes (the two slim ones share theirs)
    expected = {
        "alexnet": ["alexnet"],
        "alexnet_thinner_2": ["alexnet_thinner_2"],
        "alexnet_thinner_4": ["alexnet_thinner_4"],
        "alexnet_slim": ["alexnet_slim", "alexnet_slim_regular"],
    }
    for name, want in expected.items():
        with torch.device("meta"):
            model = build_model(name)
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["layer_names"] = np.array([b"c%d" % i for i in range(8)])
            layers = model.convs() + model.denses()
            for i, layer in enumerate(layers):
                o, *rest = layer.weight.shape
                shape = (*rest[1:], rest[0], o) if rest[1:] else (rest[0], o)
                g = f.create_group(f"c{i}")
                g.attrs["weight_names"] = np.array([b"c%d/kernel:0" % i, b"c%d/bias:0" % i])
                g.create_dataset(f"c{i}/kernel:0", shape=shape, dtype="f4")
                g.create_dataset(f"c{i}/bias:0", shape=(o,), dtype="f4")
        assert matching_presets(read_keras_weights(path)) == want, name


def test_not_a_keras_file(tmp_path, capsys):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("data", data=np.zeros(3))
    for path, words in [(text, "not an HDF5 file"), (other, "not one Keras writes")]:
        assert main(["import-keras", str(path), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    assert main(["import-keras", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")]) == 2
    assert "no Keras file" in capsys.readouterr().err


@pytest.mark.slow
def test_existing_model_is_not_overwritten(keras_dir, tmp_path, capsys):
    src = str(keras_dir / "alexnet_thinner_4.weights.h5")
    out = str(tmp_path / "run")
    assert main(["import-keras", src, "--out", out]) == 0
    assert main(["import-keras", src, "--out", out]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["import-keras", src, "--out", out, "--force"]) == 0


# ---------------------------------------------------------------------- the run folder


@pytest.mark.slow
def test_imported_run_folder(keras_dir, tmp_path, capsys):
    src = keras_dir / "alexnet_thinner_4.h5"
    out = tmp_path / "run"
    assert main(["import-keras", str(src), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "alexnet_thinner_4" and result["params"] == 5_488_106
    config = json.loads((out / "config.json").read_text())
    assert config["imported_from"] == "Keras" and config["model"] == "alexnet_thinner_4"
    assert config["source"]["format"] == "keras3-legacy-h5"
    assert config["model_config"]["widths"] == [24, 64, 96, 96, 64]
    assert json.loads((out / "result.json").read_text())["classes"][3] == "cat"
    # evaluate, predict and export accept it (those commands have their own tests)
    model = load_model(out)
    assert not model.training
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
    assert main(["predict", str(out), str(png), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top_k"][0]["class"] in result["classes"]
    ts = tmp_path / "m.ts"
    assert main(["export", str(out), "--format", "torchscript", "--out", str(ts)]) == 0
    assert ts.stat().st_size > 20e6
    assert "wrote alexnet_thinner_4 as torchscript" in capsys.readouterr().out
    data = tmp_path / "data"
    write_binary_folder(data, n_per_file=10)
    args = ["evaluate", str(out), "--data-dir", str(data), "--no-verify", "--json", "--tta"]
    assert main([*args, "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "alexnet_thinner_4" and report["n"] == report["tta"]["n"] == 10


# ---------------------------------------------------------------------- export to Keras


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["ours.weights.h5", "ours.h5"])
def test_export_keras_loads_in_keras(keras_dir, suffix):
    # Keras 3's model.load_weights read the file in the subprocess and predicted with it.
    want = np.load(keras_dir / "ours.probs.npy")
    got = np.load(keras_dir / f"{suffix}.probs.npy")
    diff = np.abs(got - want).max()
    print(f"export-keras {suffix}: Keras vs ours max |difference| {diff:.2e}")
    assert want.max(1).mean() > 0.5 and diff <= TOL


@pytest.mark.slow
def test_export_keras_round_trip(tmp_path, capsys):
    torch.manual_seed(3)
    model = build_model("alexnet_thinner_4")
    run = tmp_path / "run"
    run.mkdir()
    save_model_file(run / "model.pt", model.config.to_dict(), model.state_dict(), {})
    for suffix in ("w.weights.h5", "w.h5"):
        out = tmp_path / suffix
        assert main(["export-keras", str(run), "--out", str(out)]) == 0
        back = tmp_path / f"back-{suffix}"
        assert main(["import-keras", str(out), "--out", str(back)]) == 0
        state = load_model(back).state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(state[k], v), (suffix, k)
    assert main(["export-keras", str(run), "--out", str(tmp_path / "w.txt")]) == 2
    assert ".h5" in capsys.readouterr().err


def test_read_keras_weights_takes_only_the_file():
    # Its size limit was never used: keras_io checks every shape against the preset before it
    # reads an array (open_keras_weights), so the parameter went.
    import inspect

    assert list(inspect.signature(read_keras_weights).parameters) == ["path"]
