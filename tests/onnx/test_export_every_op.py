"""Every registered op type, every one of its examples(): the one-layer model exports to ONNX and ONNX
Runtime agrees with cnngraph's forward (batch 2 and, the batch being dynamic, batch 3), or the exporter
refuses with an OnnxError that names the op type. No other exception, no mismatch."""
from __future__ import annotations

import re
import warnings
import zlib

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

import cnngraph
from cnngraph.conformance import InputSample
from cnngraph.onnx import OnnxError, export_onnx

# Known problems, each with its reason: (op type, example index) -> reason. xfail(strict=True), so a fix
# turns the case red until its entry goes.
KNOWN: dict[tuple[str, int], str] = {}


def _cases():
    reg = cnngraph.get_registry()
    out = []
    for op_type in sorted(reg.ops):
        for i, (params, shapes) in enumerate(reg.ops[op_type].examples() or []):
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[(op_type, i)])] if (op_type, i) in KNOWN else []
            out.append(pytest.param(op_type, i, dict(params), [InputSample.parse(s) for s in shapes],
                                    id=f"{op_type}-{i}", marks=marks))
    return out


def _spec(op_type, params, samples):
    inputs = {}
    for k, s in enumerate(samples):
        entry = {"shape": list(s.shape)}
        if s.dtype == "int":
            entry["dtype"] = "int64"
        inputs[f"x{k}"] = entry
    return {"name": f"one_{op_type}", "inputs": inputs or {"unused": {"shape": [1]}},
            "layers": [{"id": "op", "type": op_type, "inputs": list(inputs), **params}], "outputs": ["op"]}


def _random_params(model, rng):
    for name in model.params:
        shape = model.params[name].shape
        if name.endswith("running_var"):
            model.params[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            model.params[name] = rng.standard_normal(shape).astype(np.float32)


def _feeds(spec, samples, rng, batch):
    if not samples:
        return {"unused": rng.standard_normal((batch, 1)).astype(np.float32)}
    return {f"x{k}": s.draw(rng, batch, np.float32) for k, s in enumerate(samples)}


@pytest.mark.parametrize("op_type,index,params,samples", _cases())
def test_every_op_exports_or_is_refused_clearly(op_type, index, params, samples):
    rng = np.random.default_rng(zlib.crc32(f"{op_type}-{index}".encode()))
    spec = _spec(op_type, params, samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # constant without inputs: the placeholder input feeds nothing
        model = cnngraph.compile(spec, seed=0)
    _random_params(model, rng)
    try:
        proto = export_onnx(model)
    except OnnxError as exc:
        assert op_type in str(exc), f"the refusal does not name the op type '{op_type}': {exc}"
        newer = re.search(r"needs --opset (\d+) or newer", str(exc))
        if newer is None:
            return
        proto = export_onnx(model, opset=int(newer.group(1)))   # what it asks for must then work
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["op"]
    for batch in (2, 3):
        feeds = _feeds(spec, samples, rng, batch)
        want = model.forward(feeds, outputs=names)["op"]
        got = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
        assert got.shape == want.shape, f"batch {batch}: ONNX Runtime gives {got.shape}, cnngraph {want.shape}"
        scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=1.0))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=f"batch {batch}")
