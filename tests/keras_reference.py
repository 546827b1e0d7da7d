"""Keras side of the import tests; run as a script in its own process (Keras 3, torch backend).

    python keras_reference.py OUT_DIR PRESET [PRESET ...]

For each preset it builds the seed's model with Keras layers (Conv2D and MaxPooling2D with
padding="same", Flatten, Dense, Dropout, softmax at the end), gives it random weights that make
confident, input-dependent predictions, saves it every way Keras 3 saves weights, and writes
Keras' own predictions on random inputs:

    OUT_DIR/PRESET.h5           model.save(...h5)       (Keras 3's legacy HDF5 file)
    OUT_DIR/PRESET.weights.h5   model.save_weights(...)  (Keras 3's weights file)
    OUT_DIR/PRESET.keras        model.save(...keras)
    OUT_DIR/PRESET.npz          x (N, 32, 32, 3) float32 inputs, probs (N, 10) Keras' outputs,
                                and kernel_i / bias_i: the weights in the model's layer order

Extra variants, asked for by name: "nested:PRESET" (the seed's model inside a Sequential) and
"channels_first:PRESET" (the convolutions channels-first, Flatten left at its default, so the
flattened features come in (C, H, W) order). "check:PRESET:FILE" loads FILE into the seed's
model with ``model.load_weights`` and writes its predictions on FILE.x.npy to FILE.probs.npy.
Keras runs in this process only, so the backend choice never reaches the test process.
"""

from __future__ import annotations

import os
import sys

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402

SHAPES = {
    # stem, conv widths, dense widths
    "alexnet": ("imagenet", (96, 256, 384, 384, 256), (4096, 4096)),
    "alexnet_slim": ("slim", (96, 256, 384, 384, 256), (4096, 4096)),
    "alexnet_slim_regular": ("slim", (96, 256, 384, 384, 256), (4096, 4096)),
    "alexnet_thinner_2": ("slim", (48, 128, 192, 192, 64), (1024, 1024)),
    "alexnet_thinner_4": ("slim", (24, 64, 96, 96, 64), (1024, 1024)),
}


def seed_model(preset: str, data_format: str = "channels_last"):
    import keras
    from keras import layers

    stem, widths, dense = SHAPES[preset]
    fmt = {"data_format": data_format}
    shape = (32, 32, 3) if data_format == "channels_last" else (3, 32, 32)
    inp = keras.Input(shape=shape)

    def conv(x, filters, size, strides=1):
        return layers.Conv2D(
            filters, size, strides=strides, padding="same", activation="relu", **fmt
        )(x)

    def pool(x):
        return layers.MaxPooling2D(pool_size=3, strides=2, padding="same", **fmt)(x)

    if stem == "imagenet":
        x = pool(conv(inp, widths[0], 11, strides=4))
    else:
        x = conv(inp, widths[0], 3)
    x = pool(conv(x, widths[1], 5))
    for w in widths[2:]:
        x = conv(x, w, 3)
    x = pool(x)
    x = layers.Flatten()(x)  # default data_format: flattens the tensor as it is laid out
    x = layers.Dropout(0.5)(layers.Dense(dense[0], activation="relu")(x))
    x = layers.Dropout(0.5)(layers.Dense(dense[1], activation="relu")(x))
    out = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def randomize(model, rng, x) -> list[np.ndarray]:
    """He-normal kernels and small random biases; then the last layer is set so that its logits
    on ``x`` are centred and spread (std 4): confident predictions that differ by input."""
    import keras

    weighted = [layer for layer in model.layers if layer.get_weights()]
    for layer in weighted:
        kernel, bias = layer.get_weights()
        fan_in = int(np.prod(kernel.shape[:-1]))
        kernel = rng.normal(0.0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32)
        bias = rng.normal(0.0, 0.05, bias.shape).astype(np.float32)
        layer.set_weights([kernel, bias])
    last = weighted[-1]
    features = keras.Model(model.inputs, last.input)
    h = np.asarray(features.predict(x, verbose=0), dtype=np.float64)
    kernel, _ = last.get_weights()
    logits = h @ kernel
    scale = 4.0 / max(logits.std(0).mean(), 1e-12)
    last.set_weights(
        [(kernel * scale).astype(np.float32), (-logits.mean(0) * scale).astype(np.float32)]
    )
    return [a for layer in weighted for a in layer.get_weights()]


def main(out_dir: str, names: list[str]) -> None:
    import keras

    rng = np.random.default_rng(0)
    for name in names:
        if name.startswith("check:"):
            _, preset, path = name.split(":", 2)
            model = seed_model(preset)
            model.load_weights(path)
            x = np.load(path + ".x.npy")
            np.save(path + ".probs.npy", np.asarray(model.predict(x, verbose=0)))
            continue
        variant, _, preset = name.rpartition(":")
        data_format = "channels_first" if variant == "channels_first" else "channels_last"
        model = seed_model(preset, data_format)
        x = rng.normal(0.0, 1.0, (16, 32, 32, 3)).astype(np.float32)
        x_keras = x if data_format == "channels_last" else x.transpose(0, 3, 1, 2)
        arrays = randomize(model, rng, x_keras)
        if variant == "nested":
            model = keras.Sequential([keras.Input(shape=(32, 32, 3)), model])
        probs = np.asarray(model.predict(x_keras, verbose=0))
        stem = os.path.join(out_dir, name.replace(":", "-"))
        model.save(stem + ".h5")
        model.save_weights(stem + ".weights.h5")
        model.save(stem + ".keras")
        weights = {f"w{i}": a for i, a in enumerate(arrays)}
        np.savez(stem + ".npz", x=x, probs=probs, **weights)
        print(stem, keras.__version__, keras.backend.backend())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
