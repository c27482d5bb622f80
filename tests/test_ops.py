"""Every built-in op: forward against PyTorch, backward against float64 finite differences."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import cnngraph
from gradcheck import check_gradients, one_layer_spec

RNG = np.random.default_rng(42)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# (layer dict, per-sample input shapes, int inputs {name: num classes}, training mode)
CASES = {
    "conv2d": ({"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, [(3, 6, 6)], {}, False),
    "conv2d_stride_dilation": ({"type": "conv2d", "out_channels": 4, "kernel_size": [3, 2], "stride": 2,
                                "dilation": [1, 2], "padding": [1, 2]}, [(2, 7, 8)], {}, False),
    "conv2d_groups": ({"type": "conv2d", "out_channels": 6, "kernel_size": 3, "groups": 3, "padding": "same"},
                      [(3, 5, 5)], {}, False),
    "conv2d_asym": ({"type": "conv2d", "out_channels": 2, "kernel_size": 2, "padding": [0, 1, 1, 0]}, [(2, 4, 5)], {}, False),
    "conv_transpose2d": ({"type": "conv_transpose2d", "out_channels": 3, "kernel_size": 3, "stride": 2,
                          "padding": 1, "output_padding": 1}, [(4, 4, 5)], {}, False),
    "conv_transpose2d_asym": ({"type": "conv_transpose2d", "out_channels": 2, "kernel_size": [2, 3],
                               "stride": [1, 2], "dilation": [2, 1], "padding": [0, 1, 2, 1], "bias": False},
                              [(3, 4, 3)], {}, False),
    "conv_transpose2d_groups": ({"type": "conv_transpose2d", "out_channels": 6, "kernel_size": 3, "stride": 2,
                                 "padding": 1, "output_padding": 1, "groups": 2}, [(4, 4, 5)], {}, False),
    "conv_transpose2d_depthwise": ({"type": "conv_transpose2d", "out_channels": 3, "kernel_size": [2, 3],
                                    "stride": [2, 1], "dilation": [1, 2], "groups": 3, "bias": False},
                                   [(3, 4, 3)], {}, False),
    "dense": ({"type": "dense", "out_features": 5}, [(7,)], {}, False),
    "max_pool2d": ({"type": "max_pool2d", "kernel_size": 2}, [(2, 6, 6)], {}, False),
    "max_pool2d_ceil": ({"type": "max_pool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
                        [(2, 6, 7)], {}, False),
    "avg_pool2d": ({"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1}, [(2, 7, 7)], {}, False),
    "avg_pool2d_nopad": ({"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": 1,
                          "count_include_pad": False, "ceil_mode": True}, [(2, 6, 6)], {}, False),
    "max_pool2d_dilated_asym": ({"type": "max_pool2d", "kernel_size": 2, "stride": 1, "dilation": 2,
                                 "padding": [1, 0, 0, 1]}, [(2, 6, 6)], {}, False),
    "avg_pool2d_asym": ({"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": [1, 0, 0, 1],
                         "ceil_mode": True}, [(2, 6, 7)], {}, False),
    "avg_pool2d_asym_nopad": ({"type": "avg_pool2d", "kernel_size": 3, "stride": 2, "padding": [1, 0, 0, 1],
                               "count_include_pad": False, "ceil_mode": True}, [(2, 6, 7)], {}, False),
    # 3-D (C, D, H, W) volumes: plugins/window3d.py, and batch norm / global pooling over D, H and W
    "conv3d": ({"type": "conv3d", "out_channels": 4, "kernel_size": 3, "padding": 1}, [(2, 4, 4, 5)], {}, False),
    "conv3d_stride_dilation_groups": ({"type": "conv3d", "out_channels": 4, "kernel_size": [2, 3, 2],
                                       "stride": [2, 1, 2], "dilation": [2, 1, 1], "groups": 2, "padding": [1, 0, 1],
                                       "bias": False}, [(4, 6, 5, 5)], {}, False),
    "conv3d_depthwise_asym": ({"type": "conv3d", "out_channels": 6, "kernel_size": 3, "groups": 3,
                               "padding": [1, 0, 0, 1, 2, 1]}, [(3, 4, 4, 5)], {}, False),
    "conv3d_depthwise_strided_dilated": ({"type": "conv3d", "out_channels": 4, "kernel_size": [3, 2, 3], "groups": 4,
                                          "stride": [2, 1, 2], "dilation": [2, 1, 1], "padding": [1, 0, 1]},
                                         [(4, 7, 6, 5)], {}, False),
    "conv3d_same": ({"type": "conv3d", "out_channels": 3, "kernel_size": [2, 3, 4], "padding": "same"},
                    [(2, 3, 4, 5)], {}, False),
    "conv_transpose3d": ({"type": "conv_transpose3d", "out_channels": 3, "kernel_size": 3, "stride": 2,
                          "padding": 1, "output_padding": 1}, [(2, 3, 2, 3)], {}, False),
    "conv_transpose3d_asym_dilated": ({"type": "conv_transpose3d", "out_channels": 2, "kernel_size": [2, 3, 2],
                                       "stride": [2, 1, 3], "dilation": [1, 2, 1], "output_padding": [1, 0, 2],
                                       "padding": [1, 0, 0, 2, 1, 1], "bias": False}, [(3, 2, 3, 2)], {}, False),
    "conv_transpose3d_groups": ({"type": "conv_transpose3d", "out_channels": 4, "kernel_size": 2, "stride": 2,
                                 "groups": 2}, [(4, 2, 2, 3)], {}, False),
    "conv_transpose3d_depthwise": ({"type": "conv_transpose3d", "out_channels": 3, "kernel_size": [3, 2, 2],
                                    "stride": [1, 2, 1], "dilation": [2, 1, 2], "padding": [1, 0, 1],
                                    "output_padding": [1, 1, 0], "groups": 3}, [(3, 3, 2, 3)], {}, False),
    "max_pool3d": ({"type": "max_pool3d", "kernel_size": 2}, [(2, 4, 4, 4)], {}, False),
    "max_pool3d_ceil_dilated": ({"type": "max_pool3d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                                 "dilation": [1, 1, 2]}, [(2, 6, 5, 8)], {}, False),
    "max_pool3d_asym": ({"type": "max_pool3d", "kernel_size": [2, 3, 2], "stride": 1,
                         "padding": [1, 0, 0, 1, 1, 0]}, [(2, 3, 4, 3)], {}, False),
    "avg_pool3d": ({"type": "avg_pool3d", "kernel_size": 3, "stride": 2, "padding": 1}, [(2, 5, 5, 5)], {}, False),
    "avg_pool3d_nopad_ceil": ({"type": "avg_pool3d", "kernel_size": 3, "stride": [2, 1, 2], "padding": 1,
                               "count_include_pad": False, "ceil_mode": True}, [(2, 6, 4, 7)], {}, False),
    "avg_pool3d_asym_nopad": ({"type": "avg_pool3d", "kernel_size": [2, 3, 2], "stride": 2,
                               "padding": [1, 0, 0, 1, 1, 0], "count_include_pad": False, "ceil_mode": True},
                              [(2, 5, 6, 5)], {}, False),
    "global_avg_pool3d": ({"type": "global_avg_pool2d"}, [(3, 2, 3, 4)], {}, False),
    "global_max_pool3d": ({"type": "global_max_pool2d"}, [(3, 2, 3, 4)], {}, False),
    "batch_norm3d_train": ({"type": "batch_norm2d", "momentum": 0.3}, [(3, 2, 3, 3)], {}, True),
    "batch_norm3d_eval": ({"type": "batch_norm2d"}, [(3, 2, 3, 3)], {}, False),
    "global_avg_pool2d": ({"type": "global_avg_pool2d"}, [(3, 4, 5)], {}, False),
    "global_max_pool2d": ({"type": "global_max_pool2d"}, [(3, 4, 5)], {}, False),
    "batch_norm2d_train": ({"type": "batch_norm2d"}, [(3, 4, 4)], {}, True),
    "batch_norm2d_eval": ({"type": "batch_norm2d"}, [(3, 4, 4)], {}, False),
    "group_norm": ({"type": "group_norm", "num_groups": 2}, [(4, 3, 3)], {}, False),
    "group_norm_instance": ({"type": "group_norm", "num_groups": 3, "eps": 1e-3}, [(3, 2, 5)], {}, True),
    "group_norm_plain_flat": ({"type": "group_norm", "num_groups": 1, "affine": False}, [(6,)], {}, False),
    "layer_norm": ({"type": "layer_norm"}, [(3, 4, 5)], {}, False),
    "layer_norm_chw": ({"type": "layer_norm", "axes": 3, "eps": 1e-3}, [(2, 3, 4)], {}, True),
    "layer_norm_plain": ({"type": "layer_norm", "axes": 2, "affine": False}, [(4, 3, 2)], {}, False),
    "dropout_train": ({"type": "dropout", "p": 0.3}, [(4, 5)], {}, True),
    "flatten": ({"type": "flatten"}, [(2, 3, 4)], {}, False),
    "upsample2d_nearest": ({"type": "upsample2d", "scale_factor": [2, 3]}, [(2, 3, 4)], {}, False),
    "upsample2d_nearest_frac": ({"type": "upsample2d", "scale_factor": 1.5}, [(2, 3, 4)], {}, False),
    "upsample2d_bilinear": ({"type": "upsample2d", "scale_factor": 2, "mode": "bilinear"}, [(2, 3, 4)], {}, False),
    "upsample2d_bilinear_corners": ({"type": "upsample2d", "scale_factor": [2.5, 1.5], "mode": "bilinear",
                                     "align_corners": True}, [(2, 3, 4)], {}, False),
    "upsample2d_bicubic": ({"type": "upsample2d", "scale_factor": [2, 1.5], "mode": "bicubic"}, [(2, 3, 4)], {}, False),
    "upsample2d_bicubic_corners": ({"type": "upsample2d", "scale_factor": 2.5, "mode": "bicubic",
                                    "align_corners": True}, [(2, 4, 3)], {}, False),
    "upsample2d_size_nearest_down": ({"type": "upsample2d", "size": [4, 5], "mode": "nearest"}, [(2, 12, 12)], {}, False),
    "upsample2d_size_nearest_odd": ({"type": "upsample2d", "size": [13, 7]}, [(2, 12, 12)], {}, False),
    "upsample2d_size_bilinear": ({"type": "upsample2d", "size": [13, 5], "mode": "bilinear"}, [(2, 12, 12)], {}, False),
    "upsample2d_size_bicubic_corners": ({"type": "upsample2d", "size": 7, "mode": "bicubic", "align_corners": True},
                                        [(2, 5, 4)], {}, False),
    "upsample2d_bicubic_down": ({"type": "upsample2d", "scale_factor": 0.6, "mode": "bicubic"}, [(2, 7, 5)], {}, False),
    "pixel_shuffle": ({"type": "pixel_shuffle", "upscale_factor": 2}, [(8, 3, 2)], {}, False),
    "pixel_shuffle_dcr": ({"type": "pixel_shuffle", "upscale_factor": 3, "mode": "dcr"}, [(18, 2, 3)], {}, False),
    "relu": ({"type": "relu"}, [(3, 4)], {}, False),
    "leaky_relu": ({"type": "leaky_relu", "negative_slope": 0.2}, [(3, 4)], {}, False),
    "prelu": ({"type": "prelu"}, [(3, 4, 5)], {}, False),
    "prelu_shared": ({"type": "prelu", "shared": True}, [(3, 4)], {}, False),
    "elu": ({"type": "elu", "alpha": 0.7}, [(3, 4)], {}, False),
    "softplus": ({"type": "softplus"}, [(3, 4)], {}, False),
    "softplus_beta_threshold": ({"type": "softplus", "beta": 2.0, "threshold": 1.5}, [(3, 4)], {}, False),
    "gelu": ({"type": "gelu"}, [(3, 4)], {}, False),
    "gelu_tanh": ({"type": "gelu", "approximate": "tanh"}, [(3, 4)], {}, False),
    "selu": ({"type": "selu"}, [(3, 4)], {}, False),
    "selu_params": ({"type": "selu", "alpha": 1.5, "scale": 2.0}, [(3, 4)], {}, False),
    "celu": ({"type": "celu", "alpha": 0.5}, [(3, 4)], {}, False),
    "softsign": ({"type": "softsign"}, [(3, 4)], {}, False),
    "unary_sqrt": ({"type": "unary", "fn": "sqrt"}, [(3, 4)], {}, False),
    "unary_exp": ({"type": "unary", "fn": "exp"}, [(3, 4)], {}, False),
    "unary_log": ({"type": "unary", "fn": "log"}, [(3, 4)], {}, False),
    "unary_abs": ({"type": "unary", "fn": "abs"}, [(3, 4)], {}, False),
    "unary_neg": ({"type": "unary", "fn": "neg"}, [(3, 4)], {}, False),
    "unary_reciprocal": ({"type": "unary", "fn": "reciprocal"}, [(3, 4)], {}, False),
    "unary_erf": ({"type": "unary", "fn": "erf"}, [(3, 4)], {}, False),
    "maximum": ({"type": "maximum"}, [(2, 3, 4), (2, 1, 4)], {}, False),
    "maximum_rank": ({"type": "maximum"}, [(3, 4), (4,)], {}, False),
    "minimum": ({"type": "minimum"}, [(2, 3, 4), (1, 3, 1)], {}, False),
    "pow_square": ({"type": "pow", "exponent": 2.0}, [(3, 4)], {}, False),
    "pow_sqrt": ({"type": "pow", "exponent": 0.5}, [(3, 4)], {}, False),
    "pow_negative": ({"type": "pow", "exponent": -1.5}, [(3, 4)], {}, False),
    "pow_cube": ({"type": "pow", "exponent": 3.0}, [(3, 4)], {}, False),
    "reduce_mean_channels": ({"type": "reduce", "axes": [1], "keepdims": True}, [(4, 3, 3)], {}, False),
    "reduce_sum": ({"type": "reduce", "op": "sum", "axes": [-1, 2]}, [(2, 3, 4)], {}, False),
    "reduce_max_channels": ({"type": "reduce", "op": "max", "axes": [1], "keepdims": True}, [(4, 3, 3)], {}, False),
    "reduce_max_all": ({"type": "reduce", "op": "max", "axes": [1, 2]}, [(3, 4)], {}, False),
    "tanh": ({"type": "tanh"}, [(3, 4)], {}, False),
    "sigmoid": ({"type": "sigmoid"}, [(3, 4)], {}, False),
    "softmax": ({"type": "softmax"}, [(5,)], {}, False),
    "softmax_axis": ({"type": "softmax", "axis": -1}, [(2, 3, 4)], {}, False),
    "log_softmax": ({"type": "log_softmax"}, [(5,)], {}, False),
    "add": ({"type": "add"}, [(2, 3, 3), (2, 3, 3), (2, 3, 3)], {}, False),
    "concat": ({"type": "concat"}, [(2, 3, 3), (1, 3, 3)], {}, False),
    "concat_last": ({"type": "concat", "axis": -1}, [(2, 3, 3), (2, 3, 1)], {}, False),
    "embedding": ({"type": "embedding", "num_embeddings": 6, "embedding_dim": 3}, [(2, 4)], {"x0": 6}, False),
    "embedding_scalar_index": ({"type": "embedding", "num_embeddings": 4, "embedding_dim": 5}, [()], {"x0": 4}, False),
    "cross_entropy": ({"type": "cross_entropy"}, [(5,), ()], {"x1": 5}, False),
    "cross_entropy_smooth": ({"type": "cross_entropy", "label_smoothing": 0.1}, [(5,), ()], {"x1": 5}, False),
    "cross_entropy_soft": ({"type": "cross_entropy", "label_smoothing": 0.2}, [(5,), (5,)], {}, False),
    "binary_cross_entropy": ({"type": "binary_cross_entropy"}, [(4,), (4,)], {}, False),
    "mse": ({"type": "mse"}, [(4,), (4,)], {}, False),
    "cross_entropy_sum": ({"type": "cross_entropy", "reduction": "sum"}, [(5,), ()], {"x1": 5}, False),
    "binary_cross_entropy_sum": ({"type": "binary_cross_entropy", "reduction": "sum"}, [(4,), (4,)], {}, False),
    "mse_sum": ({"type": "mse", "reduction": "sum"}, [(4,), (4,)], {}, False),
    # per-pixel (segmentation) cross-entropy: logits (C, H, W) against masks (H, W) or probabilities
    "cross_entropy_pixels": ({"type": "cross_entropy", "label_smoothing": 0.1}, [(3, 4, 5), (4, 5)], {"x1": 3}, False),
    "cross_entropy_pixels_soft": ({"type": "cross_entropy"}, [(3, 2, 4), (3, 2, 4)], {}, False),
    "cross_entropy_weighted": ({"type": "cross_entropy", "weight": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.1},
                               [(4,), ()], {"x1": 4}, False),
    "cross_entropy_ignore": ({"type": "cross_entropy", "ignore_index": 2, "weight": [1.0, 0.5, 2.0]},
                             [(3, 3, 4), (3, 4)], {"x1": 3}, False),
}


def _positive(layer):
    """Ops defined (or differentiable) for positive inputs only in these cases."""
    return (layer.get("fn") in ("sqrt", "log", "reciprocal")
            or (layer["type"] == "pow" and layer["exponent"] != int(layer["exponent"])))


def _feeds(shapes, ints, batch=3, layer=None):
    feeds = {}
    for i, s in enumerate(shapes):
        name = f"x{i}"
        if name in ints:
            feeds[name] = RNG.integers(0, ints[name], size=(batch, *s))
        elif name == "x1" and len(shapes) == 2 and shapes[0] == shapes[1] and len(s) == 1:
            feeds[name] = RNG.uniform(0, 1, (batch, *s)).astype(np.float32)   # loss targets
        else:
            feeds[name] = rand(batch, *s)
    if layer is not None and _positive(layer):
        feeds["x0"] = (np.abs(feeds["x0"]) + 0.5).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_matches_finite_differences(case):
    layer, shapes, ints, training = CASES[case]
    spec = one_layer_spec(layer, shapes, ints)
    feeds = _feeds(shapes, ints, layer=layer)
    if layer["type"] in ("max_pool2d", "max_pool3d", "global_max_pool2d", "relu", "leaky_relu", "prelu", "softplus"):
        # keep values away from ties/kinks so finite differences are well defined
        # (k + 0.5) / 7 - 2 is never 0 (the kink of relu, leaky_relu and prelu), never ties and never
        # softplus_beta_threshold's switch at 0.75
        feeds["x0"] = ((RNG.permutation(feeds["x0"].size).reshape(feeds["x0"].shape) + 0.5) / 7.0 - 2).astype(np.float32)
    check_gradients(spec, feeds, training=training)


def test_every_registered_builtin_op_has_a_case():
    builtin = {t for t, cls in cnngraph.get_registry().ops.items() if cls.plugin.startswith("cnngraph.plugins.")}
    covered = {layer["type"] for layer, *_ in CASES.values()}
    assert builtin - covered <= {t for t in builtin if t not in (
        "conv2d", "dense", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "global_max_pool2d", "batch_norm2d",
        "dropout", "flatten", "relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid", "softmax", "log_softmax", "add",
        "concat", "cross_entropy", "binary_cross_entropy", "mse")}


# ---- forward parity with PyTorch --------------------------------------------------------------
torch = pytest.importorskip("torch")
from cnngraph.torchref import torch_layer  # noqa: E402


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_torch(case):
    layer, shapes, ints, training = CASES[case]
    if layer["type"] == "dropout":
        pytest.skip("random; covered by test_dropout_statistics")
    model = cnngraph.compile(one_layer_spec(layer, shapes, ints), seed=1)
    feeds = _feeds(shapes, ints, batch=4, layer=layer)
    if layer["type"] in ("prelu", "group_norm", "layer_norm") and "op.weight" in model.params:   # not the constant init
        model.params["op.weight"] = rand(*model.params["op.weight"].shape)
    if layer["type"] in ("group_norm", "layer_norm") and "op.bias" in model.params:
        model.params["op.bias"] = rand(*model.params["op.bias"].shape)
    if layer["type"] == "batch_norm2d":
        model.params["op.running_mean"] = rand(shapes[0][0])
        model.params["op.running_var"] = RNG.uniform(0.5, 2, shapes[0][0]).astype(np.float32)
        model.params["op.weight"] = rand(shapes[0][0])
    ours = model.forward(feeds, training=training)["op"]
    params = {k.split(".", 1)[1]: torch.from_numpy(np.asarray(v)) for k, v in model.params.items()}
    ref = torch_layer(layer, [torch.from_numpy(feeds[f"x{i}"]) for i in range(len(shapes))], params, training).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["prelu", "prelu_shared", "softplus", "softplus_beta_threshold", "group_norm",
                                  "group_norm_instance", "group_norm_plain_flat", "pixel_shuffle", "pixel_shuffle_dcr",
                                  "layer_norm", "layer_norm_chw", "layer_norm_plain", "selu", "selu_params", "celu",
                                  "softsign", "unary_sqrt", "unary_exp", "unary_log", "unary_abs", "unary_neg",
                                  "unary_reciprocal", "unary_erf", "maximum", "maximum_rank", "minimum", "pow_square",
                                  "pow_sqrt", "pow_negative", "pow_cube", "reduce_mean_channels", "reduce_sum",
                                  "reduce_max_channels", "reduce_max_all",
                                  "cross_entropy_pixels_soft", *(c for c in CASES if "3d" in c)])
def test_forward_and_gradients_match_torch_in_float64(case):
    """The newer ops against torch autograd in float64, with random (not the initial constant) weights."""
    from cnngraph.torchref import torch_graph
    layer, shapes, ints, training = CASES[case]
    model = cnngraph.compile(one_layer_spec(layer, shapes, ints), dtype="float64", seed=1)
    for name in model.trainable_names:
        model.params[name] = RNG.standard_normal(model.params[name].shape)
    feeds = {k: v.astype(np.float64) * 3 for k, v in _feeds(shapes, ints, batch=4, layer=layer).items()}
    out = model.forward(feeds, training=training, grad=True)["op"]
    gy = RNG.standard_normal(out.shape)
    grads = model.backward({"op": gy})
    ref, leaves, inputs = torch_graph(model, feeds, training=training)
    np.testing.assert_allclose(out, ref["op"].detach().numpy(), rtol=1e-12, atol=1e-12)
    ref["op"].backward(torch.from_numpy(gy))
    for name, t in {**leaves, **inputs}.items():
        if not t.requires_grad:   # a buffer: batch norm's running statistics (test_batch_norm_running_stats_...)
            continue
        np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("shape,torch_bn", [((3, 4, 4), "BatchNorm2d"), ((3, 2, 4, 3), "BatchNorm3d")])
def test_batch_norm_running_stats_match_torch(shape, torch_bn):
    model = cnngraph.compile(one_layer_spec({"type": "batch_norm2d", "momentum": 0.2}, [shape]))
    bn = getattr(torch.nn, torch_bn)(3, momentum=0.2)
    for _ in range(3):
        x = rand(5, *shape)
        model.forward({"x0": x}, training=True)
        bn.train()(torch.from_numpy(x))
    np.testing.assert_allclose(model.params["op.running_mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.params["op.running_var"], bn.running_var.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_refuses_one_value_per_channel_in_training_and_ignores_an_empty_batch():
    from cnngraph.errors import RunError
    model = cnngraph.compile(one_layer_spec({"type": "batch_norm2d"}, [(3,)]))
    with pytest.raises(RunError, match=r"more than one value per channel in training, found input shape \(1, 3\)"):
        model.forward({"x0": rand(1, 3)}, training=True)
    np.testing.assert_array_equal(model.forward({"x0": rand(1, 3)})["op"].shape, (1, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no mean of an empty slice
        y = model.forward({"x0": rand(0, 3)}, training=True, grad=True)["op"]
        grads = model.backward({"op": np.ones_like(y)})
    assert y.shape == (0, 3) and grads["x0"].shape == (0, 3) and not grads["op.weight"].any()
    np.testing.assert_array_equal(model.params["op.running_mean"], np.zeros(3))   # as torch: untouched
    np.testing.assert_array_equal(model.params["op.running_var"], np.ones(3))


def test_dropout_statistics_and_inference_identity():
    model = cnngraph.compile(one_layer_spec({"type": "dropout", "p": 0.25}, [(1000,)]), seed=3)
    x = np.ones((20, 1000), np.float32)
    y = model.forward({"x0": x}, training=True)["op"]
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(model.forward({"x0": x})["op"], x)


def test_dtype_is_preserved_in_float64():
    model = cnngraph.compile("specs/lenet5.yaml", dtype="float64")
    out = model.forward(RNG.standard_normal((2, 1, 28, 28)))["logits"]
    assert out.dtype == np.float64


@pytest.mark.parametrize("case", ["conv2d", "conv2d_asym", "conv2d_stride_dilation", "max_pool2d_ceil", "avg_pool2d"])
def test_forward_is_repeatable_after_backward(case):
    """Kernels reuse scratch buffers: a backward in between must not change the next forward."""
    layer, shapes, ints, _ = CASES[case]
    model = cnngraph.compile(one_layer_spec(layer, shapes, ints))
    feeds = _feeds(shapes, ints, batch=5)
    first = model.forward(feeds)["op"].copy()
    out = model.forward(feeds, grad=True)["op"]
    model.backward({"op": np.ones_like(out)})
    np.testing.assert_array_equal(model.forward(feeds)["op"], first)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_big_elementwise_passes_in_pieces_match_numpy(threads, monkeypatch):
    """relu and add split arrays above kernels._parallel.BLOCKS_FROM into pieces over the threads;
    the results equal one NumPy call exactly, NaN and the last partial piece included."""
    from cnngraph.kernels._parallel import BLOCK, BLOCKS_FROM
    from cnngraph.op import Context
    from cnngraph.registry import get_registry
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", threads)
    rng = np.random.default_rng(0)
    n = BLOCKS_FROM + 3 * BLOCK + 7
    x, b, gy = (rng.standard_normal(n).astype(np.float32).reshape(1, -1) for _ in range(3))
    x[0, 5] = np.nan
    ops = get_registry().ops
    relu, add = ops["relu"](), ops["add"]()
    ctx = Context(training=True, grad=True)
    y = relu.forward(ctx, [x], {})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    (g,), _ = relu.backward(ctx, gy)
    np.testing.assert_array_equal(g, gy * (np.maximum(x, 0) > 0))
    s = add.forward(Context(), [x, b], {}, relu=True)
    np.testing.assert_array_equal(s, np.maximum(x + b, 0))
    assert s is not x          # no overwrite allowed without the runner's say-so


@pytest.mark.parametrize("params", [
    {"weight": [0.5, 2.0, 1.0]}, {"ignore_index": 1}, {"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.2},
    {"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.1, "ignore_index": 255},
    {"weight": [0.5, 2.0, 1.0], "label_smoothing": 0.1, "ignore_index": 2, "reduction": "sum"}])
def test_cross_entropy_class_weights_and_ignored_targets_match_torch(params):
    """Per pixel, with a void label (255) that is no class: the value and both gradients as torch's."""
    from cnngraph.op import Context
    op_cls = cnngraph.get_registry().ops["cross_entropy"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 5))
    t = rng.integers(0, 3, (2, 4, 5))
    t[0, 0, :3] = 255 if params.get("ignore_index") == 255 else t[0, 0, :3]
    op = op_cls(op_cls.Params(**params))
    ctx = Context(training=True, grad=True)
    ctx.needs_input_grad = (True, False)
    value = op.forward(ctx, [x, t], {})
    (gx, _), _ = op.backward(ctx, 1.0)
    tx = torch.tensor(x, requires_grad=True)
    kw = {k: v for k, v in params.items() if k in ("ignore_index", "label_smoothing", "reduction")}
    if "weight" in params:
        kw["weight"] = torch.tensor(params["weight"], dtype=torch.float64)
    ref = torch.nn.functional.cross_entropy(tx, torch.tensor(t), **kw)
    ref.backward()
    assert float(value) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_cross_entropy_with_every_target_ignored_is_zero_not_nan():
    """A batch of void pixels only (or weights of 0) has nothing to learn from: loss and gradient 0."""
    from cnngraph.op import Context
    op_cls = cnngraph.get_registry().ops["cross_entropy"]
    for params, t in (({"ignore_index": 255}, np.full((2, 3, 3), 255)), ({"weight": [0.0, 0.0, 0.0]}, np.zeros((2, 3, 3), int))):
        op = op_cls(op_cls.Params(**params))
        ctx = Context(training=True, grad=True)
        ctx.needs_input_grad = (True, False)
        value = op.forward(ctx, [np.random.default_rng(0).standard_normal((2, 3, 3, 3)), t], {})
        (gx, _), _ = op.backward(ctx, 1.0)
        assert float(value) == 0.0 and not gx.any()


def test_a_class_weight_per_output_class_is_checked_before_training(tmp_path):
    spec = {"name": "w", "inputs": {"image": {"shape": [1, 8, 8]}},
            "layers": [{"id": "flat", "type": "flatten"}, {"id": "logits", "type": "dense", "out_features": 10}],
            "outputs": ["logits"],
            "train": {"data": {"dataset": "digits", "limit": 64}, "epochs": 1,
                      "loss": {"type": "cross_entropy", "output": "logits", "weight": [1.0, 2.0]}}}
    with pytest.raises(cnngraph.SpecError, match=r"weight has 2 values, but loss output 'logits' gives 10 classes"):
        cnngraph.train(spec, out=tmp_path / "r", quiet=True)
