"""``models`` and ``summary``: the variants as tables."""

from __future__ import annotations

from ..models import PRESETS
from ..variants import layer_table, shape_json
from .flags import model_name, print_json

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    m = sub.add_parser(
        "models",
        help="the five variants: parameters, MACs, size",
        description="The five variants of the post. With --config, one variant's shape as "
        "the JSON file that MODEL accepts everywhere: save it, edit it (widths, dense, "
        "conv_init, l2, dropout, stem, batch_norm, and a name of its own) and train it.",
    )
    m.add_argument("--json", action="store_true", help="a JSON list of objects")
    m.add_argument(
        "--config",
        type=model_name,
        metavar="NAME",
        help="print the shape of the variant NAME (a preset, or a JSON file) as JSON",
    )
    m.set_defaults(func=cmd_models)

    s = sub.add_parser("summary", help="a Keras-like layer table of one variant")
    s.add_argument(
        "model",
        type=model_name,
        metavar="MODEL",
        help="variant: a preset (see 'models') or a JSON file of a shape",
    )
    s.add_argument("--json", action="store_true", help="the layers as a JSON object")
    s.set_defaults(func=cmd_summary)


def cmd_models(args) -> int:
    if args.config is not None:
        print(shape_json(args.config), end="")
        return 0
    rows, sizes = [], []
    for name, cfg in PRESETS.items():
        t = layer_table(name)
        sizes.append(t.size_mb)  # rounded once, as printed (summary prints the same)
        rows.append(
            {
                "name": name,
                "params": t.params,
                "published_params": cfg.published_params,
                "macs": t.macs,
                "size_mb": round(t.size_mb, 2),
                "stem": cfg.stem,
                "widths": list(cfg.widths),
                "dense": list(cfg.dense),
                "conv_init": cfg.conv_init,
                "l2": cfg.l2,
            }
        )
    if args.json:
        print_json(rows)
        return 0
    print(f"{'model':<22}{'params':>13}{'MACs/image':>13}{'fp32 MB':>10}  init, L2")
    for r, mb in zip(rows, sizes):
        extra = r["conv_init"] + (f", L2 {r['l2']:g}" if r["l2"] else "")
        print(f"{r['name']:<22}{r['params']:>13,}{r['macs'] / 1e9:>12.3f}G{mb:>10.1f}  {extra}")
    return 0


def cmd_summary(args) -> int:
    t = layer_table(args.model)
    name = args.model.name
    if args.json:
        layers = [
            {
                "name": r.name,
                "type": r.kind,
                "output_shape": list(r.output_shape),
                "params": r.params,
                "non_trainable_params": r.non_trainable,
                "macs": r.macs,
            }
            for r in t.rows
        ]
        print_json(
            {
                "name": name,
                "layers": layers,
                "params": t.params,
                "non_trainable_params": t.non_trainable,
                "macs": t.macs,
            }
        )
        return 0
    line = "_" * 66
    print(f'Model: "{name}"')
    print(line)
    print(f"{'Layer (type)':<29}{'Output Shape':<26}{'Param #':>11}")
    print("=" * 66)
    for i, r in enumerate(t.rows):
        shape = "(None, " + ", ".join(str(d) for d in r.output_shape) + ")"
        params = r.params + r.non_trainable  # as Keras counts them
        print(f"{r.name + ' (' + r.kind + ')':<29}{shape:<26}{params:>11,}")
        print("=" * 66 if i == len(t.rows) - 1 else line)
    print(f"Total params: {t.params + t.non_trainable:,}")
    print(f"Trainable params: {t.params:,}")
    print(f"Non-trainable params: {t.non_trainable:,}")
    print(f"MACs per image: {t.macs:,}   float32 size: {t.size_mb:.1f} MB")
    return 0
