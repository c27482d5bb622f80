"""A constant (a parameter or buffer) expanded to the batch size and concatenated with a computed tensor: a ViT
class token ``torch.cat([cls.expand(N, -1, -1), t], 1)`` and CoordConv's coordinate channels import as a
``constant`` layer that the computed tensor lends its batch size to."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import helper

from onnx_build import compare, make_model, ort_run, rand

from cnngraph.onnx import OnnxError, export_onnx, import_onnx

N = helper.make_node


def vit_net(torch, tokens=1):
    class ViTish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 8, 4, stride=4)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
            self.head = torch.nn.Linear(8, 5)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)                 # (N, 4, 8)
            y = torch.cat([self.cls.expand(x.shape[0], tokens, -1), t], dim=1)
            return y, self.head(y[:, 0])

    return ViTish()


def coord_net(torch):
    class CoordConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, 6), torch.linspace(-1, 1, 7), indexing="ij")
            self.register_buffer("coords", torch.stack([ys, xs])[None])   # (1, 2, H, W)
            self.conv = torch.nn.Conv2d(5, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], 1))

    return CoordConv()


CASES = {"vit": (lambda torch: vit_net(torch), (3, 8, 8), ["y", "logits"]),
         "vit_two_tokens": (lambda torch: vit_net(torch, tokens=2), (3, 8, 8), ["y", "logits"]),
         "coordconv": (coord_net, (3, 6, 7), ["y"])}


def _export(torch, net, shape, names, path, dynamo):
    kw = {} if dynamo else {"dynamic_axes": {"x": {0: "batch"}}}
    if dynamo:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, *shape),), str(path), dynamo=dynamo, opset_version=17,
                          input_names=["x"], output_names=names, **kw)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("case", list(CASES))
def test_torch_constant_expanded_to_batch(case, dynamo, tmp_path):
    torch = pytest.importorskip("torch")
    make, shape, names = CASES[case]
    torch.manual_seed(0)
    net = make(torch).eval()
    path = tmp_path / "m.onnx"
    try:
        _export(torch, net, shape, names, path, dynamo)
    except Exception as exc:  # noqa: BLE001 - the dynamo exporter needs onnxscript and may not trace this
        if dynamo:
            pytest.skip(f"the dynamo exporter could not export this model: {type(exc).__name__}: {exc}")
        raise
    m = import_onnx(path)
    types = [layer.type for layer in m.spec.layers]
    assert "constant" in types and "concat" in types
    for n in (1, 3):
        x = torch.randn(n, *shape)
        with torch.no_grad():
            want = net(x)
        want = [w.numpy() for w in (want if isinstance(want, tuple) else (want,))]
        got = m.forward({"x": x.numpy()})
        for k, w in zip(names, want):
            assert got[k].shape == w.shape, (k, got[k].shape, w.shape)
            np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-5, err_msg=f"{k} batch {n}")
        again = ort_run(export_onnx(m), {"x": x.numpy()})
        for k in names:
            np.testing.assert_allclose(again[k], got[k], rtol=1e-5, atol=1e-5, err_msg=f"{k} round trip, batch {n}")
    # a training step: the class token (or the coordinates, a buffer that imports as trainable) gets a gradient
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    out = m.forward({"x": x}, training=True)
    grads = m.backward({k: np.ones_like(v) for k, v in out.items()})
    const = [n for n in m.trainable_names if n.split(".")[0] in {"cls", "coords"}]
    assert const, m.trainable_names
    assert all(np.abs(np.asarray(grads[n])).sum() > 0 for n in const), const
    if case.startswith("vit"):
        y, logits = net(torch.from_numpy(x))
        (y.sum() + logits.sum()).backward()
        np.testing.assert_allclose(np.asarray(grads[const[0]]).reshape(-1), net.cls.grad.numpy().reshape(-1),
                                   rtol=1e-4, atol=1e-4)


def test_fixed_constant_expanded_to_batch_matches_onnxruntime():
    """A Constant node (fixed) expanded to [Shape(x)[0], C, H, W] from (1, 1, H, 1): stored expanded, not trainable."""
    c = rand(1, 1, 5, 1)
    nodes = [N("Constant", [], ["c"], value=helper.make_tensor("cv", 1, c.shape, c.reshape(-1))),
             N("Shape", ["x"], ["sx"]), N("Expand", ["c", "sx"], ["e"]), N("Concat", ["x", "e"], ["y"], axis=1)]
    model = make_model(nodes, {"x": (2, 4, 5, 6)})
    m = compare(model, {"x": rand(3, 4, 5, 6)})
    const = [layer for layer in m.spec.layers if layer.type == "constant"]
    assert len(const) == 1 and const[0].params.shape == [4, 5, 6] and not const[0].params.trainable
    assert not m.trainable_names


def test_parameter_expanded_to_batch_matches_onnxruntime():
    nodes = [N("Shape", ["x"], ["sx"]), N("Expand", ["c", "sx"], ["y"])]
    model = make_model(nodes, {"x": (2, 4, 5, 6)}, {"c": rand(1, 4, 1, 6)})
    m = compare(model, {"x": rand(3, 4, 5, 6)})
    assert [layer.type for layer in m.spec.layers] == ["constant", "expand"]


def test_batch_size_after_the_batch_axis_is_refused():
    nodes = [N("Shape", ["x"], ["sx"]), N("Concat", ["sx", "sx"], ["s2"], axis=0), N("Expand", ["c", "s2"], ["y"])]
    model = make_model(nodes, {"x": (2, 4)}, {"c": rand(1, 1, 1, 1)})
    with pytest.raises(OnnxError, match=r"the shape \(N, 4, N, 4\) holds the batch size in 2 axes"):
        import_onnx(model)
