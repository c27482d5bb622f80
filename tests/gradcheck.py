"""Test helpers: build one-layer models and compare gradients with float64 finite differences."""
from __future__ import annotations

import numpy as np

import cnngraph

__all__ = ["one_layer_spec", "check_gradients", "central_difference", "numeric_gradient"]


def one_layer_spec(layer: dict, input_shapes: list, int_inputs: dict | None = None) -> dict:
    """Spec dict with inputs x0, x1, … (int64 for those in int_inputs) feeding one layer."""
    int_inputs = int_inputs or {}
    inputs = {}
    for i, shape in enumerate(input_shapes):
        name = f"x{i}"
        inputs[name] = {"shape": list(shape), "dtype": "int64" if name in int_inputs else "float32"}
    layer = {"id": "op", "inputs": list(inputs), **layer}
    return {"name": "one", "inputs": inputs, "layers": [layer], "outputs": ["op"]}


def central_difference(f, arr, idx, eps: float = 1e-6) -> float:
    """(f() at arr[idx] + eps - f() at arr[idx] - eps) / (2 eps), arr[idx] restored afterwards."""
    old = arr[idx]
    arr[idx] = old + eps
    up = f()
    arr[idx] = old - eps
    down = f()
    arr[idx] = old
    return (up - down) / (2 * eps)


def numeric_gradient(f, arr, eps: float = 1e-6):
    """Central differences of f() with respect to every element of arr (float64 arrays)."""
    g = np.zeros_like(arr)
    for i in np.ndindex(arr.shape):
        g[i] = central_difference(f, arr, i, eps)
    return g


def _objective(model, feeds, weights, training):
    out = model.forward(feeds, training=training, grad=False)["op"]
    return float(np.sum(out * weights)) if out.ndim else float(out * weights)


def check_gradients(spec: dict, feeds: dict, *, training: bool = False, samples: int = 25, eps: float = 1e-6,
                    rtol: float = 1e-5, atol: float = 1e-8, seed: int = 0) -> None:
    """Assert backward == central differences (float64) for every float input and parameter,
    on up to ``samples`` random coordinates per tensor."""
    model = cnngraph.compile(spec, dtype="float64", seed=seed)
    rng = np.random.default_rng(seed)
    feeds = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    state = model.rng.bit_generator.state
    out = model.forward(feeds, training=training, grad=True)["op"]
    weights = rng.standard_normal(out.shape)
    grads = model.backward({"op": weights})
    targets = {name: feeds[name] for name in feeds if feeds[name].dtype.kind == "f"}
    targets.update({name: model.params[name] for name in model.trainable_names})
    for name, arr in targets.items():
        flat = arr.reshape(-1)
        idx = rng.choice(flat.size, size=min(samples, flat.size), replace=False)
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            model.rng.bit_generator.state = state
            plus = _objective(model, feeds, weights, training)
            flat[i] = old - eps
            model.rng.bit_generator.state = state
            minus = _objective(model, feeds, weights, training)
            flat[i] = old
            numeric = (plus - minus) / (2 * eps)
            analytic = grads[name].reshape(-1)[i]
            assert abs(analytic - numeric) <= atol + rtol * max(abs(numeric), abs(analytic), 1e-3), (
                f"{name}[{i}]: backward {analytic!r} vs finite differences {numeric!r}")
