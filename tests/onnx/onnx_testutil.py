"""Helpers for the ONNX tests: one-layer specs and float64 finite-difference gradient checks."""
from __future__ import annotations

import numpy as np

import cnngraph

from gradcheck import central_difference


def one_layer(layer: dict, shapes: list) -> dict:
    inputs = {f"x{i}": {"shape": list(s)} for i, s in enumerate(shapes)}
    return {"name": "one", "inputs": inputs or {"unused": {"shape": [1]}},
            "layers": [{"id": "op", "inputs": list(inputs), **layer}], "outputs": ["op"]}


def gradcheck(spec: dict, feeds: dict, samples: int = 20, eps: float = 1e-6, rtol: float = 1e-5, seed: int = 0,
              fill_params=True):
    model = cnngraph.compile(spec, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    if fill_params:
        for name in model.trainable_names:
            model.params[name] = rng.standard_normal(model.params[name].shape)
    feeds = {k: v.astype(np.float64) for k, v in feeds.items()}
    out = model.forward(feeds, training=True)["op"]
    w = rng.standard_normal(out.shape)
    grads = model.backward({"op": w})

    def f():
        return float(np.sum(model.forward(feeds)["op"] * w))

    targets = dict(feeds)
    targets.update({n: model.params[n] for n in model.trainable_names})
    for name, arr in targets.items():
        flat = arr.reshape(-1)
        for i in rng.choice(flat.size, size=min(samples, flat.size), replace=False):
            num = central_difference(f, flat, i, eps)
            ana = grads[name].reshape(-1)[i]
            assert abs(ana - num) <= 1e-8 + rtol * max(abs(num), abs(ana), 1e-3), f"{name}[{i}]: {ana} vs {num}"
