import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from alexnet_cifar import build_model
from alexnet_cifar.cli import main
from alexnet_cifar.cli.flags import flag_name
from alexnet_cifar.errors import SettingError
from alexnet_cifar.models import (
    PRESETS,
    AlexNetConfig,
    Conv2dSame,
    MaxPool2dSame,
    tf_same_padding,
)
from alexnet_cifar.variants import layer_table

PUBLISHED = {
    "alexnet": 21_622_154,
    "alexnet_slim": 87_650_186,
    "alexnet_slim_regular": 87_650_186,
    "alexnet_thinner_2": 6_074_250,
    "alexnet_thinner_4": 5_488_106,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert layer_table(name).params == PUBLISHED[name] == PRESETS[name].published_params


def test_a_preset_without_a_published_count(monkeypatch, capsys):
    # A preset the post does not show: `models` lists it with no published count (it raised
    # KeyError when the counts lived in a table of their own).
    tiny = AlexNetConfig("tiny_test", widths=(8, 8, 8, 8, 8), dense=(16, 16))
    assert tiny.published_params is None
    monkeypatch.setitem(PRESETS, "tiny_test", tiny)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny_test"]["published_params"] is None
    assert rows["tiny_test"]["params"] == layer_table("tiny_test").params
    assert rows["alexnet"]["published_params"] == PUBLISHED["alexnet"]
    assert main(["models"]) == 0
    assert "tiny_test" in capsys.readouterr().out


def test_published_count_is_not_part_of_the_shape():
    # config.json and model files record the shape; the post's count is the preset's own.
    cfg = PRESETS["alexnet"]
    assert "published_params" not in cfg.to_dict()
    assert AlexNetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"stem": "vgg"}, "stem"),
        ({"conv_init": "zeros"}, "conv_init"),
        ({"widths": (1, 2, 3)}, "widths"),
        ({"dense": (4,)}, "dense"),
        ({"num_classes": 1}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"l2": -1.0}, "l2"),
    ],
)
def test_config_errors_name_the_parameter(changes, name):
    with pytest.raises(SettingError) as e:
        AlexNetConfig(**changes)
    # the command line renders the parameter with its own flag names
    assert e.value.render(flag_name).startswith("--" + name.replace("_", "-"))
    assert str(e.value).startswith(name)


def test_models_cli_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(PUBLISHED)
    assert {r["name"]: r["params"] for r in rows} == PUBLISHED
    slim = next(r for r in rows if r["name"] == "alexnet_slim")
    assert slim["macs"] == pytest.approx(1.51e9, rel=0.01)  # PERFORMANCE.md's figure


def test_summary_cli_totals(capsys):
    assert main(["summary", "alexnet_thinner_2"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 6,074,250" in out
    assert "(None, 8, 8, 64)" in out  # the final feature map before flatten


@pytest.mark.parametrize(
    "name, maps",
    [
        (
            "alexnet",
            [
                (8, 8, 96),
                (4, 4, 96),
                (4, 4, 256),
                (2, 2, 256),
                (2, 2, 384),
                (2, 2, 384),
                (2, 2, 256),
                (1, 1, 256),
                (256,),
            ],
        ),
        (
            "alexnet_slim",
            [
                (32, 32, 96),
                (32, 32, 256),
                (16, 16, 256),
                (16, 16, 384),
                (16, 16, 384),
                (16, 16, 256),
                (8, 8, 256),
                (16384,),
            ],
        ),
    ],
)
def test_feature_map_sizes(name, maps):
    rows = layer_table(name).rows[1 : 1 + len(maps)]
    assert [r.output_shape for r in rows] == maps


def test_logits_shape_and_num_classes():
    torch.manual_seed(0)
    model = build_model("alexnet", num_classes=7).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 7)


# ---------------------------------------------------------------------- TF "same" padding


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (32, 11, 4, (3, 4)),  # conv1 of alexnet: asymmetric
        (8, 3, 2, (0, 1)),  # max-pool on even sizes: all the padding after
        (4, 3, 2, (0, 1)),
        (2, 3, 2, (0, 1)),
        (32, 3, 1, (1, 1)),
        (32, 5, 1, (2, 2)),
        (7, 3, 2, (1, 1)),
        (5, 11, 4, (5, 5)),
    ],
)
def test_tf_same_padding_values(size, kernel, stride, expected):
    assert tf_same_padding(size, kernel, stride) == expected
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    assert sum(expected) == total


def _np_conv_same(x, w, b, stride):
    """Direct loops over TensorFlow's definition: input row = out_row * stride - pad_top + i."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ph, _ = tf_same_padding(h, kh, stride)
    pw, _ = tf_same_padding(wd, kw, stride)
    oh, ow = -(-h // stride), -(-wd // stride)
    out = np.zeros((n, o, oh, ow))
    for r in range(oh):
        for q in range(ow):
            acc = np.zeros((n, o))
            for i in range(kh):
                for j in range(kw):
                    rr, qq = r * stride - ph + i, q * stride - pw + j
                    if 0 <= rr < h and 0 <= qq < wd:
                        acc += x[:, :, rr, qq] @ w[:, :, i, j].T
            out[:, :, r, q] = acc + b
    return np.maximum(out, 0)


def _np_maxpool_same(x, k, stride):
    n, c, h, w = x.shape
    ph, _ = tf_same_padding(h, k, stride)
    pw, _ = tf_same_padding(w, k, stride)
    oh, ow = -(-h // stride), -(-w // stride)
    out = np.full((n, c, oh, ow), -np.inf)
    for r in range(oh):
        for q in range(ow):
            for i in range(k):
                for j in range(k):
                    rr, qq = r * stride - ph + i, q * stride - pw + j
                    if 0 <= rr < h and 0 <= qq < w:
                        out[:, :, r, q] = np.maximum(out[:, :, r, q], x[:, :, rr, qq])
    return out


@pytest.mark.parametrize("size, kernel, stride", [(32, 11, 4), (9, 5, 1), (10, 3, 2), (7, 3, 1)])
def test_conv_same_matches_tf_definition(size, kernel, stride):
    torch.manual_seed(1)
    conv = Conv2dSame(2, 3, kernel, stride).double()
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 2, size, size, dtype=torch.float64)
    got = conv(x).detach().numpy()
    want = _np_conv_same(
        x.numpy(), conv.weight.detach().numpy(), conv.bias.detach().numpy(), stride
    )
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [8, 4, 2, 7, 16])
def test_maxpool_same_matches_tf_and_padding_never_wins(size):
    torch.manual_seed(2)
    # All values negative: a zero-padded cell would win the max at the border; -inf never does.
    x = -torch.rand(2, 3, size, size, dtype=torch.float64) - 0.5
    got = MaxPool2dSame(3, 2)(x).numpy()
    np.testing.assert_array_equal(got, _np_maxpool_same(x.numpy(), 3, 2))
    assert (got < 0).all()


# ---------------------------------------------------------------------- initialisers

HE = 0.87962566103423978


def _conv_weights(model):
    return [m.weight.detach().double().numpy().ravel() for m in model.convs()]


def test_uniform_conv_initialiser_alexnet():
    torch.manual_seed(3)
    model = build_model("alexnet")
    for w in _conv_weights(model):
        assert w.min() >= -0.05 and w.max() <= 0.05
        assert w.min() < -0.0495 and w.max() > 0.0495  # the whole range is used
        assert abs(w.std() - 0.1 / math.sqrt(12)) < 0.02 * 0.1 / math.sqrt(12)
    w = _conv_weights(model)[2]
    assert stats.kstest(w[:20000], stats.uniform(loc=-0.05, scale=0.1).cdf).pvalue > 1e-3


@pytest.mark.parametrize("name", ["alexnet_thinner_4", "alexnet_thinner_2"])
def test_he_normal_truncated_conv_initialiser(name):
    torch.manual_seed(4)
    model = build_model(name)
    for conv in model.convs():
        w = conv.weight.detach().double().numpy().ravel()
        fan_in = conv.weight[0].numel()
        target_std = math.sqrt(2.0 / fan_in)
        sigma = target_std / HE
        assert np.abs(w).max() <= 2 * sigma + 1e-7  # truncated at two sigma
        assert np.abs(w).max() > 1.9 * sigma  # ... and not narrower
        assert abs(w.std() - target_std) < 0.05 * target_std
        sample = w[:20000]
        ks = stats.kstest(sample, stats.truncnorm(-2, 2, loc=0, scale=sigma).cdf)
        assert ks.pvalue > 1e-3, (conv, ks)
        # Not the untruncated normal with the same std: the tails differ.
        if len(sample) > 5000:
            assert stats.kstest(sample, stats.norm(scale=target_std).cdf).pvalue < ks.pvalue


def test_dense_glorot_uniform_and_zero_biases():
    torch.manual_seed(5)
    model = build_model("alexnet")
    for dense in model.denses():
        fan_out, fan_in = dense.weight.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        w = dense.weight.detach().double().numpy().ravel()
        assert w.min() >= -limit and w.max() <= limit
        assert abs(w.std() - limit / math.sqrt(3)) < 0.03 * limit / math.sqrt(3)
    for m in model.convs() + model.denses():
        assert torch.count_nonzero(m.bias) == 0


def test_presets_initialisers_and_l2():
    assert PRESETS["alexnet"].conv_init == PRESETS["alexnet_slim"].conv_init == "uniform"
    for n in ["alexnet_slim_regular", "alexnet_thinner_2", "alexnet_thinner_4"]:
        assert PRESETS[n].conv_init == "he_normal" and PRESETS[n].l2 == 1e-4
    assert PRESETS["alexnet"].l2 == PRESETS["alexnet_slim"].l2 == 0


def test_l2_penalty_covers_conv_kernels_only():
    torch.manual_seed(6)
    model = build_model("alexnet_thinner_4")
    want = 1e-4 * sum(float((m.weight.detach().double() ** 2).sum()) for m in model.convs())
    assert float(model.l2_penalty().detach()) == pytest.approx(want, rel=1e-6)
    assert len(model.regularized_parameters()) == 5
    assert float(build_model("alexnet").l2_penalty()) == 0.0


def test_flatten_uses_keras_hwc_order():
    torch.manual_seed(7)
    model = build_model("alexnet_thinner_4").eval()
    feats = {}
    model.layers.pool3.register_forward_hook(lambda m, i, o: feats.__setitem__("map", o))
    model.layers.flatten.register_forward_hook(lambda m, i, o: feats.__setitem__("flat", o))
    model(torch.randn(2, 3, 32, 32))
    m = feats["map"]  # N, C, H, W
    assert torch.equal(feats["flat"], m.permute(0, 2, 3, 1).reshape(2, -1))


def test_channels_last_model_computes_the_same():
    torch.manual_seed(8)
    model = build_model("alexnet").eval()
    x = torch.randn(4, 3, 32, 32)
    a = model(x)
    b = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dropout_is_keras_inverted_dropout():
    from alexnet_cifar.models import Dropout

    torch.manual_seed(9)
    d = Dropout(0.5)
    x = torch.ones(400, 300)
    y = d(x)
    kept = y != 0
    assert set(torch.unique(y).tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    assert torch.equal(d.eval()(x), x)


def test_dropout_mask_does_not_depend_on_the_batch_split():
    from alexnet_cifar.models import Dropout

    x = torch.randn(12, 50)
    torch.manual_seed(3)
    whole = Dropout(0.5)(x)
    parts = []
    for offset, rows in [(0, 5), (5, 7)]:  # two ranks with uneven shards, same RNG state
        torch.manual_seed(3)
        d = Dropout(0.5)
        d.batch_rows, d.row_offset = 12, offset
        parts.append(d(x[offset : offset + rows]))
    assert torch.equal(torch.cat(parts), whole)
