"""ONNX graphs that move the batch axis (attention: (N, L, E) -> (L, N, E) -> (L, N*heads, d)) import as batch-first
layers plus a layout (cnngraph/onnx/layouts.py): PyTorch's nn.MultiheadAttention, nn.TransformerEncoderLayer and
DETR's decoder (queries repeated over the batch: a constant whose shape holds the batch size), exported by
torch.onnx, match PyTorch forward and backward and export back; single ops on moved tensors match ONNX Runtime;
what cannot be expressed is refused with the shape it met."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import helper

from cnngraph.onnx import OnnxError, export_onnx, import_onnx
from onnx_build import compare, make_model, ort_run, rand

torch = pytest.importorskip("torch")   # the reference these tests compare with
nn = torch.nn
N = helper.make_node


class Attention(nn.Module):
    """A conv stem, then self-attention over the pixels (ViT-hybrid style), pooled to classes."""

    def __init__(self, batch_first: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.att = nn.MultiheadAttention(16, 2, batch_first=batch_first)
        self.batch_first = batch_first
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)   # (N, HW, C)
        if not self.batch_first:
            t = t.transpose(0, 1)
        a, _ = self.att(t, t, t, need_weights=False)
        if not self.batch_first:
            a = a.transpose(0, 1)
        return self.fc(a.mean(1))


class Encoder(nn.Module):
    """Patch embedding, one transformer encoder layer, mean over tokens."""

    def __init__(self, activation: str, norm_first: bool):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                              norm_first=norm_first)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.enc(t).mean(1))


class ViT(nn.Module):
    """Patches, a class token and positions, two encoder layers (GELU), the class token's head."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 17, 16))
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, activation="gelu")
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.enc(t)[:, 0])


class KeyValueDims(nn.Module):
    """Attention with kdim/vdim != embed_dim (separate projections) whose averaged weights are used too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.query = nn.Linear(8, 16)
        self.att = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        t = torch.relu(self.conv(x)).flatten(2).transpose(1, 2)
        a, w = self.att(self.query(t), t, t)
        return self.fc(a.mean(1)) + w.mean((1, 2)).unsqueeze(1)


class DETR(nn.Module):
    """DETR: a conv backbone's (HW, N, d) memory, learned queries repeated over the batch (sequence first), a
    zeros_like target, a two-layer decoder, class and box heads; or a target broadcast up from (Q, 1, d)."""

    def __init__(self, target: str = "repeat"):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1))
        self.query_embed = nn.Embedding(6, 32)
        self.pos = nn.Parameter(torch.randn(16, 1, 32) * 0.3)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0)
        self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0), 2, norm=nn.LayerNorm(32))
        self.cls, self.box = nn.Linear(32, 5), nn.Linear(32, 4)
        self.target = target

    def forward(self, x):
        f = self.backbone(x)
        mem = self.enc(f.flatten(2).permute(2, 0, 1) + self.pos)
        if self.target == "repeat":
            q = self.query_embed.weight.unsqueeze(1).repeat(1, f.shape[0], 1)   # (Q, N, d)
            h = self.dec(torch.zeros_like(q) + q, mem)
        else:   # a computed (1, N, d) widened to (Q, N, d) by a constant
            h = self.dec(torch.zeros(6, 1, 32) + mem[:1] * 0 + self.query_embed.weight.unsqueeze(1), mem)
        h = h.transpose(0, 1)
        return torch.cat([self.cls(h), self.box(h).sigmoid()], -1)


class SequenceFirstViT(nn.Module):
    """A class token expanded to (1, N, E) and concatenated along the sequence, batch_first=False."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).permute(2, 0, 1)   # (L, N, E)
        t = torch.cat([self.cls.expand(-1, x.shape[0], -1), t], 0)
        return self.head(self.enc(t)[0])


class CrissCross(nn.Module):
    """Attention along H for every (n, w) as a batch of N*W, with a diagonal mask tiled over that batch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        f = self.conv(x)
        n, c, h, w = f.shape
        cols = f.permute(0, 3, 2, 1).reshape(n * w, h, c)                       # (N*W, H, C)
        mask = (-1e4 * torch.eye(h)).unsqueeze(0).repeat(n * w, 1, 1)
        att = (cols @ cols.transpose(1, 2) + mask).softmax(-1)
        return (att @ cols).reshape(n, w, h, c).permute(0, 3, 2, 1) + f


NETS = {
    "detr_queries_repeated": (DETR, (3, 16, 16)),
    "detr_target_widened": (lambda: DETR("widened"), (3, 16, 16)),
    "vit_sequence_first_class_token": (SequenceFirstViT, (3, 16, 16)),
    "criss_cross_tiled_mask": (CrissCross, (3, 6, 5)),
    "vit_two_layers_class_token": (ViT, (3, 16, 16)),
    "mha_kdim_vdim_with_weights": (KeyValueDims, (3, 8, 8)),
    "mha_batch_first": (lambda: Attention(True), (3, 8, 8)),
    "mha_sequence_first": (lambda: Attention(False), (3, 8, 8)),
    "encoder_relu": (lambda: Encoder("relu", False), (3, 16, 16)),
    "encoder_gelu_norm_first": (lambda: Encoder("gelu", True), (3, 16, 16)),
}


def exported(name, opset, path):
    make, shape = NETS[name]
    torch.manual_seed(0)
    net = make().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, *shape),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return net, shape


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("name", sorted(NETS))
def test_torch_attention_imports_matches_forward_and_backward_and_exports_back(name, opset, tmp_path):
    net, shape = exported(name, opset, tmp_path / "m.onnx")
    m = import_onnx(str(tmp_path / "m.onnx"))
    if not name.startswith("detr"):   # (torch folds DETR's query_embed.weight.unsqueeze(1) into an unnamed constant)
        assert sum(np.size(m.params[n]) for n in m.trainable_names) == sum(p.numel() for p in net.parameters())
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)   # another batch size
    xt = torch.tensor(x, requires_grad=True)
    yt = net(xt)
    y = m.forward({"x": x}, training=True)["y"]
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    gy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(m.backward({"y": gy})["x"], xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    proto = export_onnx(m)   # batch-first layers: plain ONNX again
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_allclose(ort_run(proto, {"x": x})["y"], yt.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_imported_attention_trains(tmp_path):
    exported("encoder_relu", 17, tmp_path / "m.onnx")
    m = import_onnx(str(tmp_path / "m.onnx"))
    x = rand(4, 3, 16, 16)
    before = m.forward({"x": x})["y"].copy()
    y = m.forward({"x": x}, training=True)["y"]
    grads = m.backward({"y": np.ones_like(y)}, input_grads=False)
    assert all(np.isfinite(g).all() for g in grads.values()) and any(np.abs(g).max() > 0 for g in grads.values())
    for name, g in grads.items():
        m.params[name] = m.params[name] - 0.1 * g
    assert np.abs(m.forward({"x": x})["y"] - before).max() > 1e-4


def _shape_of(x, nodes, prefix="s"):
    """Nodes computing Shape(x) and its first entry (the batch size), as exporters write it."""
    return [N("Shape", [x], [f"{prefix}.shape"]),
            N("Slice", [f"{prefix}.shape", "zero", "one"], [f"{prefix}.n"])] + nodes


ZERO_ONE = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64)}

# name: (nodes, input shapes, initializers); every graph ends batch-first in "y"
CASES = {
    "time_major_softmax_over_time": (
        [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Softmax", ["t"], ["s"], axis=0),
         N("Relu", ["s"], ["r"]), N("Transpose", ["r"], ["y"], perm=[1, 0, 2])], {"x": (2, 5, 4)}, {}),
    "bias_and_per_step_scale_on_moved": (
        [N("Transpose", ["x"], ["t"], perm=[1, 2, 0]), N("Add", ["t", "b"], ["a"]), N("Mul", ["a", "w"], ["m"]),
         N("Transpose", ["m"], ["y"], perm=[2, 0, 1])], {"x": (2, 5, 4)},
        {"b": rand(5, 4, 1), "w": rand(4, 1)}),
    "merge_batch_with_channels_then_split": (
        _shape_of("x", [N("Mul", ["s.n", "c"], ["nc"]), N("Concat", ["nc", "hw"], ["t1"], axis=0),
                        N("Reshape", ["x", "t1"], ["flat"]), N("ReduceMean", ["flat"], ["mean"], axes=[1]),
                        N("Sub", ["flat", "mean"], ["centred"]), N("Softmax", ["centred"], ["sm"], axis=1),
                        N("Concat", ["s.n", "chw"], ["t2"], axis=0), N("Reshape", ["sm", "t2"], ["y"])]),
        {"x": (2, 3, 4, 5)}, {**ZERO_ONE, "c": np.array([3], np.int64), "hw": np.array([20], np.int64),
                              "chw": np.array([3, 4, 5], np.int64)}),
    "unsqueeze_before_batch_gather_slice_split": (
        [N("Unsqueeze", ["x", "ax0"], ["u"]), N("Transpose", ["u"], ["t"], perm=[2, 1, 0, 3]),
         N("Squeeze", ["t", "ax2"], ["sq"]), N("Gather", ["sq", "idx"], ["g"], axis=0),
         N("Slice", ["g", "st", "en", "axs"], ["sl"]), N("Split", ["sl", "parts"], ["p1", "p2"], axis=0),
         N("Concat", ["p2", "p1"], ["c"], axis=0), N("Transpose", ["c"], ["y"], perm=[1, 0, 2])],
        {"x": (2, 6, 4)}, {"ax0": np.array([0], np.int64), "ax2": np.array([2], np.int64),
                           "idx": np.array([5, 0, 3, 3, 1], np.int64), "st": np.array([1], np.int64),
                           "en": np.array([4], np.int64), "axs": np.array([2], np.int64),
                           "parts": np.array([2, 3], np.int64)}),
    "two_arrangements_added": (
        [N("Transpose", ["x"], ["a"], perm=[1, 0, 2]), N("Transpose", ["x"], ["z"], perm=[0, 2, 1]),
         N("Relu", ["z"], ["zr"]), N("Transpose", ["zr"], ["b"], perm=[2, 0, 1]), N("Add", ["a", "b"], ["s"]),
         N("LayerNormalization", ["s", "g", "be"], ["ln"], axis=-1), N("Transpose", ["ln"], ["y"], perm=[1, 0, 2])],
        {"x": (2, 5, 4)}, {"g": rand(4), "be": rand(4)}),
    "time_major_matmul_and_gemm": (
        _shape_of("x", [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("MatMul", ["t", "w"], ["p"]),
                        N("Mul", ["s.n", "five"], ["n5"]), N("Concat", ["n5", "six"], ["t1"], axis=0),
                        N("Reshape", ["p", "t1"], ["rows"]), N("Gemm", ["rows", "b", "c"], ["o"], transB=1,
                                                              alpha=0.5, beta=2.0),
                        N("Concat", ["five", "s.n", "three"], ["t2"], axis=0), N("Reshape", ["o", "t2"], ["back"]),
                        N("ReduceSum", ["back", "ax0"], ["y"], keepdims=0)]),
        {"x": (2, 5, 4)}, {**ZERO_ONE, "w": rand(4, 6), "five": np.array([5], np.int64),
                           "six": np.array([6], np.int64), "three": np.array([3], np.int64), "b": rand(3, 6),
                           "c": rand(3), "ax0": np.array([0], np.int64)}),
}


I64 = (lambda *v: np.array(v, np.int64))
CASES.update({   # found by an adversarial review
    "softmax_opset11_over_trailing_axes": (
        [N("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]), N("Softmax", ["t"], ["s"], axis=2),
         N("Transpose", ["s"], ["y"], perm=[1, 0, 2, 3])], {"x": (2, 5, 3, 4)}, {}, 11),
    "regroup_sizes_that_do_not_divide": (
        _shape_of("x", [N("Transpose", ["x"], ["t"], perm=[1, 2, 0]), N("Concat", ["four", "fifteen", "s.n"], ["tg"],
                                                                         axis=0),
                        N("Reshape", ["t", "tg"], ["r"]), N("Transpose", ["r"], ["y"], perm=[2, 0, 1])]),
        {"x": (2, 6, 10)}, {**ZERO_ONE, "four": I64(4), "fifteen": I64(15)}),
    "constant_widens_two_computed": (
        [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Unsqueeze", ["t", "ax1"], ["u"]), N("Relu", ["u"], ["a"]),
         N("Sigmoid", ["u"], ["b"]), N("Sum", ["a", "b", "c"], ["s"]), N("Transpose", ["s"], ["y"], perm=[2, 0, 1, 3])],
        {"x": (2, 5, 4)}, {"ax1": I64(1), "c": rand(1, 3, 1, 1)}),
    "whole_batch_slice_on_moved": (
        [N("Transpose", ["x"], ["t"], perm=[1, 2, 0, 3]), N("Slice", ["t", "st", "en", "ax"], ["s"]),
         N("Transpose", ["s"], ["y"], perm=[2, 0, 1, 3])], {"x": (2, 5, 3, 4)},
        {"st": I64(0, 1), "en": I64(2**62, 3), "ax": I64(2, 0)}),
})


@pytest.mark.parametrize("case", sorted(CASES))
def test_moved_batch_ops_match_onnxruntime(case):
    nodes, inputs, inits, *opset = CASES[case]
    model = make_model(nodes, inputs, inits, opset=opset[0] if opset else 17)
    feeds = {k: rand(3, *shape[1:]) for k, shape in inputs.items()}
    m = compare(model, feeds)
    proto = export_onnx(m)
    np.testing.assert_allclose(ort_run(proto, feeds)["y"], m.forward(feeds)["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nodes, inits, message", [
    ([N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Add", ["t", "b"], ["y0"]),
      N("Transpose", ["y0"], ["y"], perm=[1, 0, 2])], {"b": rand(5, 2, 4)},
     r"constant 'b' of shape \(5, 2, 4\) varies along the \(moved\) batch axis of \(5, N, 4\)"),
    ([N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Softmax", ["t"], ["y0"], axis=1),
      N("Transpose", ["y0"], ["y"], perm=[1, 0, 2])], {}, r"Softmax along the \(moved\) batch axis of \(5, N, 4\)"),
    ([N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("LpNormalization", ["t"], ["y0"], axis=-1),
      N("Transpose", ["y0"], ["y"], perm=[1, 0, 2])], {}, "LpNormalization"),
    ([N("Transpose", ["x"], ["t"], perm=[1, 2, 0]), N("Conv", ["t", "w"], ["y"])], {"w": rand(2, 5, 1)},
     r"the input \(5, 4, N\) has its batch axis \(N\) moved by an earlier Transpose or Reshape; a Conv on it"),
])
def test_what_a_moved_batch_axis_cannot_do_is_refused_with_the_shape(nodes, inits, message):
    with pytest.raises(OnnxError, match=message):
        import_onnx(make_model(nodes, {"x": (2, 5, 4)}, inits))


def test_fixed_batch_exports_are_told_to_export_a_dynamic_batch():
    """A fixed-batch export bakes N * heads into a Reshape (5, 2 * 2, 4): the message names the cause; a batch-1
    model's Squeeze without axes (which drops the batch) is refused as the plain import refuses it."""
    nodes = [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Reshape", ["t", "s"], ["y"])]
    with pytest.raises(OnnxError, match=r"exported with a fixed batch size \(2\): export it with a dynamic batch"):
        import_onnx(make_model(nodes, {"x": (2, 5, 8)}, {"s": I64(5, 4, 4)}, dynamic_batch=False))
    nodes = [N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Squeeze", ["t"], ["q"]), N("Unsqueeze", ["q", "z"], ["y"])]
    with pytest.raises(OnnxError, match="Squeeze without axes removes the batch axis of this batch-1 model"):
        import_onnx(make_model(nodes, {"x": (1, 5, 4)}, {"z": I64(0)}, dynamic_batch=False))


def test_a_parameter_read_through_gather_imports_fixed_with_a_warning():
    """Swin's relative position bias (a table indexed by a constant 2-D index, entries repeated) folds to a
    constant: said, not silent. A Slice of a parameter stays trainable (a ViT's pos_embed[:, :L])."""
    index = np.array([[0, 1], [1, 0]], np.int64)
    nodes = [N("Gather", ["rel.table", "index"], ["bias"], axis=0), N("Add", ["x", "bias"], ["a"]),
             N("Slice", ["pos.embed", "st", "en", "ax"], ["pos"]), N("Add", ["a", "pos"], ["y"])]
    inits = {"rel.table": rand(3), "index": index, "pos.embed": rand(1, 2, 4), "st": np.array([0], np.int64),
             "en": np.array([2], np.int64), "ax": np.array([2], np.int64)}
    with pytest.warns(UserWarning, match=r"ONNX node 'bias' \(Gather\) computes a constant from parameter "
                                         r"'rel.table'; it imports as a fixed value"):
        m = compare(make_model(nodes, {"x": (2, 2, 2)}, inits), {"x": rand(3, 2, 2)})
    assert [np.shape(m.params[n]) for n in m.trainable_names] == [(2, 2)]   # the slice of pos.embed


def test_cli_imports_checks_and_runs_an_attention_model(tmp_path, capsys):
    """`cnngraph import-onnx --check` on nn.MultiheadAttention (sequence first) writes a spec that validates and runs."""
    from cnngraph.cli import main
    net, shape = exported("mha_sequence_first", 17, tmp_path / "m.onnx")
    assert main(["import-onnx", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.yaml"), "--check"]) == 0
    assert "check vs ONNX Runtime" in capsys.readouterr().out
    x = rand(2, *shape)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(tmp_path / "m.yaml"), "--params", str(tmp_path / "m.npz"), "--input",
                 str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), net(torch.tensor(x)).detach().numpy(), rtol=1e-4,
                               atol=1e-5)
