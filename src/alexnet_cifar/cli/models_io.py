"""Commands on a trained model: ``predict``, ``export``, ``import-keras``, ``export-keras``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..augment import SEED_MEAN, SEED_STD
from ..distributed import resolve_device
from ..errors import SettingError
from ..interchange.export import (
    INSTALL_HINT,
    check_onnx,
    check_torchscript,
    example_input,
    export_onnx,
    export_torchscript,
    onnxruntime_available,
)
from ..interchange.keras_io import export_keras_weights, import_keras
from ..interchange.predict import ImageError, Prediction, load_image, predict_images
from ..training.checkpoint import load_model, read_state, resolve_weights_file
from ..training.runlog import class_names
from .flags import add_device, add_run_path, folder, int_at_least, model_name, print_json

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="the top classes of your own pictures (PNG, JPEG, ...)",
        description="Predict the classes of image files with a trained model. Any size and "
        "mode (RGBA, grey, palette, 16-bit) is converted to RGB (transparency over the "
        "training mean colour) and resized to 32x32 (bicubic, aspect ratio not kept), then "
        "normalised as in training. A file that cannot be read is reported and the others "
        "are still predicted; the exit status is then 2.",
    )
    add_run_path(p)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument(
        "--top-k", type=int_at_least(1, "--top-k"), default=3, help="classes to show (3)"
    )
    add_device(p)
    p.add_argument("--json", action="store_true", help="a JSON list, one object per file")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser(
        "export",
        help="write a trained model as ONNX or TorchScript",
        description="Write a trained model for another runtime. Input 'input': float32 "
        f"(N, 3, 32, 32), RGB on 0..255 normalised per channel with mean {SEED_MEAN} and std "
        f"{SEED_STD}; output 'probabilities': float32 (N, classes), softmax. The batch size N "
        f"is free. ONNX needs {INSTALL_HINT}.",
    )
    add_run_path(e)
    e.add_argument("--format", choices=("onnx", "torchscript"), required=True, help="file format")
    e.add_argument("--out", type=folder, required=True, metavar="FILE", help="the file to write")
    e.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the file on random inputs against PyTorch",
    )
    e.set_defaults(func=cmd_export)

    k = sub.add_parser(
        "import-keras",
        help="turn the seed's Keras weights (.h5, .weights.h5, .keras) into a run folder",
        description="Read the weights of the seed's Keras model: a Keras 2 model.save('x.h5') "
        "or save_weights file, a Keras 3 .h5, .weights.h5 or .keras file. Every kernel is "
        "checked against the model's shapes and converted (Conv2D HWIO to OIHW, Dense in/out "
        "transposed). The run folder gets model.pt, config.json and result.json, and works "
        "with evaluate, predict and export.",
    )
    k.add_argument("file", type=Path, metavar="FILE", help="Keras .h5, .weights.h5 or .keras")
    k.add_argument(
        "--model",
        type=model_name,
        metavar="NAME",
        help="the variant the file holds: a preset's name or a JSON file of a shape "
        "(default: the preset found from the kernel shapes)",
    )
    k.add_argument("--out", type=folder, required=True, metavar="RUN_DIR", help="run folder")
    k.add_argument(
        "--flatten",
        choices=("auto", "hwc", "chw"),
        default="auto",
        help="order of the flattened features the first dense layer reads: hwc for "
        "channels-last Keras models (the seed's), chw for channels-first convolutions; auto "
        "(default) reads it from the model config in .h5 and .keras files, else hwc",
    )
    k.add_argument("--force", action="store_true", help="replace a model already in RUN_DIR")
    k.add_argument("--json", action="store_true", help="print result.json")
    k.set_defaults(func=cmd_import_keras)

    x = sub.add_parser(
        "export-keras",
        help="write a model's weights for the seed's Keras code (.h5 or .weights.h5)",
        description="Write the weights in a file that the seed's Keras model loads with "
        "model.load_weights(FILE): FILE ending in .weights.h5 gets Keras 3's layout, any other "
        ".h5 the layout of Keras 2's save_weights (which Keras 3 reads too).",
    )
    add_run_path(x)
    x.add_argument("--out", type=folder, required=True, metavar="FILE", help=".h5 or .weights.h5")
    x.set_defaults(func=cmd_export_keras)


def _model_and_classes(path, dev="cpu"):
    model = load_model(path, device=dev)
    meta = read_state(resolve_weights_file(path)).get("meta") or {}
    return model, class_names(path, model.config.num_classes, meta)


def cmd_predict(args) -> int:
    model, classes = _model_and_classes(args.path, resolve_device(args.device))
    k = min(args.top_k, len(classes))
    side = model.config.image_size  # every image is resized to the model's input
    loaded, errors = [], {}
    for i, f in enumerate(args.images):
        try:
            loaded.append((i, f, load_image(f, side)))
        except ImageError as e:
            errors[i] = str(e)
            print(f"error: {e}", file=sys.stderr)
    probs = predict_images(model, [im for _, _, im in loaded])
    records: list[dict] = [
        {"file": str(f), "error": errors.get(i)} for i, f in enumerate(args.images)
    ]
    for (i, f, im), p in zip(loaded, probs):
        pr = Prediction(str(f), p, im.original_size, im.mode, im.resized)
        top = pr.top_k(classes, k)
        records[i] = {
            "file": pr.file,
            "predicted": top[0]["class"],
            "top_k": top,
            "resized": pr.resized,
            "original_size": list(pr.original_size),
            "mode": pr.mode,
        }
    if args.json:
        for r in records:
            if r.get("resized"):
                w, h = r["original_size"]
                print(f"note: {r['file']} resized from {w}x{h} to {side}x{side}", file=sys.stderr)
        print_json(records)
    else:
        for r in records:
            if "error" in r:
                continue
            w, h = r["original_size"]
            note = f"  (resized from {w}x{h} to {side}x{side})" if r["resized"] else ""
            print(f"{r['file']}: {r['predicted']}{note}")
            for t in r["top_k"]:
                print(f"  {t['class']:<12}{t['probability']:.4f}")
    if errors:
        if len(args.images) > 1:  # one file: its own error line says it all
            print(
                f"error: {len(errors)} of {len(args.images)} files could not be read as images",
                file=sys.stderr,
            )
        return 2
    return 0


def cmd_export(args) -> int:
    model, classes = _model_and_classes(args.path)
    if args.out.is_dir():
        raise SettingError(f"--out {args.out} is a folder; give a file name")
    if not args.out.parent.exists():
        raise SettingError(f"the folder of --out {args.out} does not exist")
    if args.format == "onnx":
        export_onnx(model, args.out, classes)
    else:
        export_torchscript(model, args.out)
    size = args.out.stat().st_size / 1e6
    line = f"wrote {model.config.name} as {args.format} to {args.out} ({size:.1f} MB)"
    if not args.no_check:
        x = example_input(model, 8)
        if args.format == "torchscript":
            line += f"; max |difference| to PyTorch {check_torchscript(args.out, model, x):.2e}"
        elif onnxruntime_available():
            line += f"; max |difference| to PyTorch {check_onnx(args.out, model, x):.2e}"
        else:
            line += "; onnxruntime is not installed, so the file was not run"
    print(line)
    return 0


def cmd_import_keras(args) -> int:
    result = import_keras(args.file, args.out, args.model, force=args.force, flatten=args.flatten)
    if args.json:
        print_json(result)
    else:
        print(
            f"imported {result['source_format']} file {args.file} as {result['model']} "
            f"({result['params']:,} parameters) into {args.out}"
        )
    return 0


def cmd_export_keras(args) -> int:
    if not str(args.out).endswith(".h5"):
        raise SettingError(f"--out {args.out} must end in .h5 or .weights.h5")
    model = load_model(args.path)
    fmt = export_keras_weights(model, args.out)
    print(f"wrote {model.config.name} weights ({fmt}) to {args.out}")
    return 0
