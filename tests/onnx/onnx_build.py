"""Build small ONNX models with onnx.helper and compare cnngraph's import with ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cnngraph.onnx import import_onnx

RNG = np.random.default_rng(0)


def make_model(nodes, inputs: dict, inits: dict | None = None, outputs=("y",), opset=17, dynamic_batch=True):
    ins = []
    for name, shape in inputs.items():
        shape = list(shape)
        if dynamic_batch:
            shape[0] = "N"
        ins.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, "g", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    # (outputs carry no shape, which the checker rejects; ONNX Runtime validates the model instead)
    return model


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def compare(model, feeds, rtol=1e-5, atol=1e-5):
    want = ort_run(model, feeds)
    m = import_onnx(model)
    got = m.forward(feeds)
    assert set(got) == set(want), (set(got), set(want))
    for k in want:
        assert got[k].shape == want[k].shape, (k, got[k].shape, want[k].shape)
        np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=atol, err_msg=k)
    return m


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)
