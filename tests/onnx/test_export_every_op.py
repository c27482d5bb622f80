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


_EXPORTS: dict[tuple[str, int], tuple] = {}


def _export(op_type, index, params, samples):
    """The case's model (random weights), spec, ONNX export (None where refused without an opset hint), the
    refusal if any and the case's generator (for the parity test's feeds); cached, so the round-trip test
    reuses the parity test's export."""
    key = (op_type, index)
    if key not in _EXPORTS:
        rng = np.random.default_rng(zlib.crc32(f"{op_type}-{index}".encode()))
        spec = _spec(op_type, params, samples)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # constant without inputs: the placeholder input feeds nothing
            model = cnngraph.compile(spec, seed=0)
        _random_params(model, rng)
        proto, refusal = None, None
        try:
            proto = export_onnx(model)
        except OnnxError as exc:
            refusal = exc
            newer = re.search(r"needs --opset (\d+) or newer", str(exc))
            if newer is not None:
                proto = export_onnx(model, opset=int(newer.group(1)))   # what it asks for must then work
        _EXPORTS[key] = (model, spec, proto, refusal, rng)
    return _EXPORTS[key]


@pytest.mark.parametrize("op_type,index,params,samples", _cases())
def test_every_op_exports_or_is_refused_clearly(op_type, index, params, samples):
    model, spec, proto, refusal, rng = _export(op_type, index, params, samples)
    if refusal is not None:
        assert op_type in str(refusal), f"the refusal does not name the op type '{op_type}': {refusal}"
    if proto is None:
        return
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


# Round-trip problems, each with its reason: (op type, example index) -> reason.
ROUND_TRIP_KNOWN: dict[tuple[str, int], str] = {
}


def _round_trip_cases():
    out = []
    for case in _cases():
        op_type, index = case.values[0], case.values[1]
        marks = ([pytest.mark.xfail(strict=True, reason=ROUND_TRIP_KNOWN[(op_type, index)])]
                 if (op_type, index) in ROUND_TRIP_KNOWN else list(case.marks))
        out.append(pytest.param(*case.values, id=case.id, marks=marks))
    return out


@pytest.mark.parametrize("op_type,index,params,samples", _round_trip_cases())
def test_every_exported_op_round_trips(op_type, index, params, samples):
    """Export -> import gives the same layer type, bit-identical weights and the same outputs (batch 2)."""
    model, spec, proto, _, _ = _export(op_type, index, params, samples)
    if proto is None:
        pytest.skip("refused by the exporter")
    back = cnngraph.import_onnx(proto)
    # (3) the same op type for the layer
    types = [layer.type for layer in back.spec.layers]
    assert types == [op_type], f"imported as {types}, exported from [{op_type}]"
    # (2) every parameter array present bit-identically among the imported layer's parameters
    theirs = back.params.numpy()
    for name, arr in model.params.numpy().items():
        same = [k for k, v in theirs.items()
                if v.dtype == arr.dtype and v.shape == arr.shape and v.tobytes() == arr.tobytes()]
        assert same, (f"{name} {arr.dtype}{arr.shape} has no bit-identical imported parameter; imported: "
                      f"{ {k: (v.dtype.name, v.shape) for k, v in theirs.items()} }")
    # (1) the same outputs at batch 2
    rng = np.random.default_rng(zlib.crc32(f"{op_type}-{index}-round".encode()))
    feeds = _feeds(spec, samples, rng, 2)
    want = model.forward(feeds, outputs=["op"])["op"]
    got = back.forward({k: feeds[k] for k in back.onnx_inputs})["op"]
    assert got.shape == want.shape, f"import gives {got.shape}, cnngraph {want.shape}"
    scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=1.0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)
