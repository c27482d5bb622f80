"""A tiny digits CNN trained in about a second with the Model API (shared by the viz tests)."""
from __future__ import annotations

import numpy as np

import cnngraph
from cnngraph.train.data import DataConfig, load_dataset
from cnngraph.train.optim import build_optimizer

TINY_DIGITS = {
    "name": "tiny_digits",
    "inputs": {"image": {"shape": [1, 8, 8]}},
    "layers": [
        {"id": "conv1", "type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
        {"id": "act1", "type": "relu"},
        {"id": "conv2", "type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"id": "act2", "type": "relu"},
        {"id": "pool", "type": "max_pool2d", "kernel_size": 2},
        {"id": "flat", "type": "flatten"},
        {"id": "logits", "type": "dense", "out_features": 10},
    ],
    "outputs": ["logits"],
    "train": {"data": {"dataset": "digits"}},
}


def train_tiny_digits(steps: int = 60, batch: int = 32, seed: int = 0):
    """(model, dataset, test accuracy) after a few SGD steps on the bundled digits."""
    ds = load_dataset(DataConfig(dataset="digits"), (1, 8, 8), seed=seed)
    model = cnngraph.compile(TINY_DIGITS, seed=seed)
    opt = build_optimizer({"type": "sgd", "lr": 0.05, "momentum": 0.9})
    rng = np.random.default_rng(seed)
    x, y = ds.train
    weights = {n: model.params._data[n] for n in model.trainable_names}
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        logits = model.forward({"image": x[idx]}, training=True)["logits"]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(batch), y[idx]] -= 1.0
        grads = model.backward({"logits": p / batch}, input_grads=False)
        opt.step(weights, grads, 0.05)
    xt, yt = ds.test
    acc = float((model.predict(xt).argmax(axis=1) == yt).mean())
    return model, ds, acc
