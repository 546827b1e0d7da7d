"""predict on image files of every kind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from alexnet_cifar.augment import SEED_MEAN
from alexnet_cifar.cli import main
from alexnet_cifar.interchange.predict import load_image

from .helpers import make_run, probs_of, run_cli


def predict_json(*args, capsys):
    rc = main(["predict", *map(str, args), "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    return rc, json.loads(captured.out), captured.err


def test_32x32_png_is_predicted_as_training_normalises_it(tiny_run, tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    rc, out, err = predict_json(tiny_run, tmp_path / "a.png", "--top-k", "10", capsys=capsys)
    assert rc == 0 and "resized" not in err
    (r,) = out
    assert r["file"] == str(tmp_path / "a.png") and r["resized"] is False
    assert len(r["top_k"]) == 10
    got = np.zeros(10)
    for t in r["top_k"]:
        got[t["index"]] = t["probability"]
        assert set(t) >= {"class", "probability"}
    assert got.sum() == pytest.approx(1.0, abs=1e-9)
    want = probs_of(tiny_model, pixels[None])[0]
    assert np.abs(got - want).max() < 1e-5
    probs = [t["probability"] for t in r["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert r["predicted"] == r["top_k"][0]["class"] == run_classes(tiny_run)[int(want.argmax())]


def run_classes(run):
    return json.loads((run / "result.json").read_text())["classes"]


def test_every_mode_and_size(tiny_run, tmp_path, capsys):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (60, 100, 3), dtype=np.uint8))
    files = {
        "rgb.png": rgb,
        "rgba.png": rgb.convert("RGBA"),
        "grey.png": rgb.convert("L"),
        "palette.png": rgb.convert("P"),
        "bilevel.png": rgb.convert("1"),
        "grey16.png": Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)),
        "photo.jpg": rgb,
        "cmyk.jpg": rgb.convert("CMYK"),
        "small.png": rgb.resize((8, 8)),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    rc, out, err = predict_json(tiny_run, *(tmp_path / n for n in files), capsys=capsys)
    assert rc == 0, err
    assert [r["file"] for r in out] == [str(tmp_path / n) for n in files]
    for r in out:
        assert len(r["top_k"]) == 3  # the default
        assert all(0.0 <= t["probability"] <= 1.0 for t in r["top_k"])
        assert r["resized"] is True
    assert err.count("resized") == len(files)
    assert out[0]["original_size"] == [100, 60] and out[-1]["original_size"] == [8, 8]
    modes = {r["file"].rsplit("/", 1)[1]: r["mode"] for r in out}
    assert modes["rgba.png"] == "RGBA" and modes["grey16.png"].startswith("I")
    assert modes["palette.png"] == "P" and modes["bilevel.png"] == "1"


def test_text_says_when_it_resizes(tiny_run, tmp_path):
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "same.png")
    Image.new("RGB", (100, 60), (200, 30, 30)).save(tmp_path / "wide.png")
    p = run_cli("predict", str(tiny_run), str(tmp_path / "same.png"), str(tmp_path / "wide.png"))
    assert p.returncode == 0, p.stderr
    same, wide = p.stdout.split(str(tmp_path / "wide.png"))
    assert "resized" not in same
    assert "resized from 100x60 to 32x32" in wide
    assert len(same.strip().splitlines()) == 1 + 3  # the file line, then the top 3


def test_conversions(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    # opaque RGBA and RGB agree; grey gives three equal channels
    img.convert("RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(load_image(tmp_path / "opaque.png").pixels, pixels)
    img.convert("L").save(tmp_path / "grey.png")
    grey = load_image(tmp_path / "grey.png").pixels
    assert np.array_equal(grey[..., 0], np.asarray(img.convert("L")))
    assert np.array_equal(grey[..., 0], grey[..., 2])
    # transparent pixels become the training mean colour (0 after normalisation)
    clear = np.zeros((32, 32, 4), np.uint8)
    clear[..., :3] = 255
    Image.fromarray(clear).save(tmp_path / "clear.png")
    assert np.array_equal(load_image(tmp_path / "clear.png").pixels[0, 0], np.round(SEED_MEAN))
    # 16-bit grey keeps its brightness instead of saturating
    Image.fromarray(np.full((32, 32), 32768, np.uint16)).save(tmp_path / "g16.png")
    assert abs(int(load_image(tmp_path / "g16.png").pixels[0, 0, 0]) - 128) <= 1
    Image.fromarray(np.full((32, 32), 0.5, np.float32)).save(tmp_path / "f.tiff")  # 0..1 floats
    assert abs(int(load_image(tmp_path / "f.tiff").pixels[0, 0, 0]) - 128) <= 1
    # a larger image is shrunk to 32x32 and keeps its colour
    Image.new("RGB", (640, 480), (10, 200, 90)).save(tmp_path / "big.jpg", quality=95)
    big = load_image(tmp_path / "big.jpg")
    assert big.pixels.shape == (32, 32, 3) and big.resized and big.original_size == (640, 480)
    assert np.abs(big.pixels.astype(int) - [10, 200, 90]).max() <= 3


def test_unreadable_file_is_reported_and_the_rest_predicted(tiny_run, tmp_path, capsys):
    Image.new("RGB", (32, 32), (0, 0, 255)).save(tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    files = [tmp_path / "good.png", tmp_path / "notes.png", tmp_path / "missing.jpg"]
    rc, out, err = predict_json(tiny_run, *files, capsys=capsys)
    assert rc == 2 and "Traceback" not in err
    assert "notes.png: not an image" in err and "missing.jpg: no such file" in err
    assert [r["file"] for r in out] == [str(f) for f in files]
    assert "top_k" in out[0] and "error" in out[1] and "error" in out[2]
    assert main(["predict", str(tiny_run), *map(str, files), "--device", "cpu"]) == 2  # text mode
    captured = capsys.readouterr()
    assert str(files[0]) in captured.out and "not an image" in captured.err
    assert "2 of 3 files could not be read" in captured.err


def test_top_k_and_class_names(tiny_model, tmp_path, capsys):
    names = [f"thing{i}" for i in range(10)]
    run = make_run(tmp_path / "run", tiny_model, classes=names)
    Image.new("RGB", (32, 32), (90, 90, 90)).save(tmp_path / "x.png")
    rc, out, _ = predict_json(run, tmp_path / "x.png", "--top-k", "50", capsys=capsys)
    assert rc == 0 and len(out[0]["top_k"]) == 10  # no more than there are classes
    assert {t["class"] for t in out[0]["top_k"]} == set(names)
    with pytest.raises(SystemExit):
        main(["predict", str(run), str(tmp_path / "x.png"), "--top-k", "0"])
    assert main(["predict", str(tmp_path / "norun"), str(tmp_path / "x.png")]) == 2


def test_images_are_resized_to_the_models_input_side(tmp_path, capsys):
    # The side comes from the model (config.image_size), not from a constant of its own: a
    # model built for 48x48 inputs gets 48x48 pictures, and a 48x48 file is not resized.
    from dataclasses import replace

    from .helpers import TINY, confident_model

    model = confident_model(replace(TINY, image_size=48), seed=3)
    run = make_run(tmp_path / "run48", model)
    pixels = np.random.default_rng(4).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "same.png")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "small.png")
    assert load_image(tmp_path / "same.png", 48).pixels.shape == (48, 48, 3)
    assert not load_image(tmp_path / "same.png", 48).resized
    assert load_image(tmp_path / "same.png").pixels.shape == (32, 32, 3)  # the presets' side
    rc, out, err = predict_json(run, tmp_path / "same.png", tmp_path / "small.png", capsys=capsys)
    assert rc == 0, err
    same, small = out
    assert same["resized"] is False and small["resized"] is True
    assert "small.png resized from 32x32 to 48x48" in err
    got = {t["index"]: t["probability"] for t in same["top_k"]}
    want = probs_of(model, pixels[None])[0]
    for i, p in got.items():
        assert p == pytest.approx(want[i], abs=1e-5)
