"""export: ONNX run by onnxruntime and TorchScript match PyTorch on random and real images."""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from alexnet_cifar.augment import normalize
from alexnet_cifar.cli import main
from alexnet_cifar.data import CLASSES

from .helpers import confident_model, make_run

TOL = 1e-4


def torch_probs(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=1).numpy()


def onnx_probs(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


# thinner_4 has both things an exporter could get wrong: max-pools padded asymmetrically with
# -inf (TensorFlow "same" on even sizes: 0 before, 1 after) and an 8x8x64 map flattened in
# (H, W, C) order. (alexnet's 11x11 stride-4 conv pads with the same Pad op, with zeros; its
# export takes twice as long and is measured by hand, see the README.)
@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    model = confident_model("alexnet_thinner_4", seed=7)
    d = tmp_path_factory.mktemp("onnx")
    run = make_run(d / "run", model)
    out = d / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    return model, out


@pytest.mark.real_data
@pytest.mark.slow
def test_onnx_matches_pytorch(onnx_export, cifar10):
    model, path = onnx_export
    gen = torch.Generator().manual_seed(0)
    cases = {
        "random, batch 1": torch.randn(1, 3, 32, 32, generator=gen),
        "random, batch 37": torch.randn(37, 3, 32, 32, generator=gen) * 2,
        "real test images": normalize(torch.from_numpy(cifar10.x_test[:64])).contiguous(),
    }
    for what, x in cases.items():
        got, want = onnx_probs(path, x), torch_probs(model, x)
        diff = float(np.abs(got - want).max())
        print(f"ONNX vs PyTorch, {model.config.name}, {what}: max |difference| {diff:.2e}")
        assert got.shape == (len(x), 10)
        assert np.allclose(got.sum(1), 1, atol=1e-5)  # probabilities, not logits
        assert diff <= TOL, what
    # the outputs vary with the input, so agreement is not agreement on a constant
    assert np.abs(want - want.mean(0)).max() > 0.1


@pytest.mark.slow
def test_onnx_file_describes_itself(onnx_export):
    model, path = onnx_export
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opset = {o.domain: o.version for o in proto.opset_import}[""]
    assert opset >= 17
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == "input" and out.name == "probabilities"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # the batch dimension is free
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["model"] == model.config.name
    assert json.loads(meta["mean"]) == pytest.approx([125.307, 122.95, 113.865])


@pytest.mark.real_data
@pytest.mark.slow
def test_torchscript_matches_pytorch(tmp_path, cifar10, capsys):
    model = confident_model("alexnet_thinner_4", seed=8)
    run = make_run(tmp_path / "run", model)
    out = tmp_path / "model.ts"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max |difference| to PyTorch" in capsys.readouterr().out
    with warnings.catch_warnings():  # TorchScript is deprecated; what it gives is checked
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(out))
    for x in (torch.randn(3, 3, 32, 32), normalize(torch.from_numpy(cifar10.x_test[:64]))):
        with torch.no_grad():
            got = loaded(x.contiguous()).numpy()
        assert np.allclose(got.sum(1), 1, atol=1e-5)
        diff = float(np.abs(got - torch_probs(model, x)).max())
        print(f"TorchScript vs PyTorch: max |difference| {diff:.2e}")
        assert diff <= TOL


def test_export_without_onnx_packages_says_what_to_install(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run", confident_model("alexnet_thinner_4"))
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now fails
    rc = main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install 'alexnet-cifar[export]'" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_mistakes(tmp_path, capsys):
    run = make_run(tmp_path / "run", confident_model("alexnet_thinner_4"))
    args = ["--format", "onnx", "--out", str(tmp_path / "x.onnx")]
    assert main(["export", str(tmp_path / "nothing"), *args]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "no/x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--format", "tflite", "--out", "x"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
