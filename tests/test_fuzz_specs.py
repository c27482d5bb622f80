"""Fuzz: mutated valid specs either compile and run, or fail with a located SpecError — never anything else."""
from __future__ import annotations

import copy

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnngraph
from cnngraph import SpecError

BASES = [yaml.safe_load(open(p)) for p in ("specs/lenet5.yaml", "specs/resnet_small.yaml")]
for base in BASES:
    base.pop("train", None)

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(-2, 2, allow_nan=False),
                   st.sampled_from(["same", "valid", "relu", "conv1", "image", "", "x" * 3]),
                   st.lists(st.integers(-1, 5), max_size=5))
KEYS = st.sampled_from(["id", "type", "inputs", "out_channels", "kernel_size", "stride", "padding", "dilation",
                        "groups", "out_features", "p", "axis", "bogus", "negative_slope", "ceil_mode"])
TYPES = st.sampled_from(["conv2d", "dense", "relu", "add", "concat", "flatten", "max_pool2d", "batch_norm2d",
                         "global_avg_pool2d", "softmax", "dropout", "cross_entropy", "nonsense"])


@st.composite
def mutated(draw):
    spec = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 4))):
        layers = spec["layers"]
        i = draw(st.integers(0, len(layers) - 1))
        kind = draw(st.sampled_from(["set", "delete", "type", "dup", "drop", "inputs", "top"]))
        if kind == "set":
            layers[i][draw(KEYS)] = draw(VALUES)
        elif kind == "delete" and layers[i]:
            layers[i].pop(draw(st.sampled_from(sorted(layers[i]))))
        elif kind == "type":
            layers[i]["type"] = draw(TYPES)
        elif kind == "dup":
            layers.insert(i, copy.deepcopy(layers[i]))
        elif kind == "drop" and len(layers) > 1:
            layers.pop(i)
        elif kind == "inputs":
            ids = [layer.get("id", "?") for layer in layers] + ["image", "ghost"]
            layers[i]["inputs"] = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3))
        elif kind == "top":
            spec[draw(st.sampled_from(["inputs", "outputs", "name", "extra"]))] = draw(VALUES)
    return spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=mutated())
def test_mutated_specs_compile_or_fail_with_location(spec, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        model = cnngraph.compile(path)
    except SpecError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.file == str(path) and p.line is not None and p.message, p
        return
    feeds = {n: np.zeros((2, *s.shape), np.float32 if s.dtype != "int64" else np.int64)
             for n, s in model.spec.inputs.items()}
    try:
        model.forward(feeds)
    except cnngraph.RunError as exc:   # e.g. a loss fed by zeros targets it rejects: named, not a crash
        assert "while running" in str(exc)
