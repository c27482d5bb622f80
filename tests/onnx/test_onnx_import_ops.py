"""Every supported ONNX operator and awkward attribute combination: cnngraph's import vs ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_build import compare, make_model, rand

N = helper.make_node
X4 = (2, 4, 9, 10)


def conv_case(opset=17, cin=4, cout=6, k=(3, 3), group=1, bias=True, **attrs):
    w = rand(cout, cin // group, *k)
    inits = {"w": w} | ({"b": rand(cout)} if bias else {})
    node = N("Conv", ["x", "w"] + (["b"] if bias else []), ["y"], group=group, **attrs)
    return [node], {"x": (2, cin, 9, 10)}, inits, opset


CASES = {
    "conv": conv_case(pads=[1, 1, 1, 1]),
    "conv_nobias_stride": conv_case(bias=False, strides=[2, 3]),
    "conv_asym_pads": conv_case(pads=[0, 1, 2, 1]),
    "conv_same_upper": conv_case(k=(4, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": conv_case(k=(4, 3), auto_pad="SAME_LOWER", strides=[2, 2]),
    "conv_valid": conv_case(auto_pad="VALID"),
    "conv_dilated": conv_case(dilations=[2, 1], pads=[2, 1, 2, 1]),
    "conv_grouped": conv_case(group=2, pads=[1, 1, 1, 1]),
    "conv_depthwise": conv_case(cout=8, group=4, k=(3, 3), pads=[1, 1, 1, 1]),
    "conv_opset7": conv_case(opset=7, kernel_shape=[3, 3]),
    "maxpool": ([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], {"x": X4}, {}, 17),
    "maxpool_default_stride": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 2])], {"x": X4}, {}, 17),
    "maxpool_ceil_pads": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                            ceil_mode=1)], {"x": X4}, {}, 17),
    "maxpool_asym": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0])],
                     {"x": X4}, {}, 17),
    "maxpool_same_upper": ([N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
                           {"x": X4}, {}, 17),
    "maxpool_same_lower": ([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")],
                           {"x": X4}, {}, 17),
    "maxpool_dilated": ([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])], {"x": X4}, {}, 12),
    "maxpool_opset8": ([N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], {"x": X4}, {}, 8),
    "avgpool": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
                {"x": X4}, {}, 17),
    "avgpool_include_pad": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                              count_include_pad=1)], {"x": X4}, {}, 17),
    "avgpool_ceil": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
                     {"x": X4}, {}, 17),
    "avgpool_ceil_pad_include": ([N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                   ceil_mode=1, count_include_pad=1)], {"x": X4}, {}, 19),
    "avgpool_asym": ([N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[1, 2], pads=[1, 0, 0, 1])],
                     {"x": X4}, {}, 17),
    "global_avg": ([N("GlobalAveragePool", ["x"], ["y"])], {"x": X4}, {}, 17),
    "global_max": ([N("GlobalMaxPool", ["x"], ["y"])], {"x": X4}, {}, 17),
    "batchnorm": ([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], {"x": X4},
                  {"s": rand(4), "b": rand(4), "m": rand(4), "v": np.abs(rand(4)) + 0.5}, 15),
    "batchnorm_opset7": ([N("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])], {"x": X4},
                         {"s": rand(4), "b": rand(4), "m": rand(4), "v": np.abs(rand(4)) + 0.5}, 7),
    "lrn": ([N("LRN", ["x"], ["y"], size=3, alpha=0.01, beta=0.7, bias=1.5)], {"x": X4}, {}, 17),
    "relu": ([N("Relu", ["x"], ["y"])], {"x": X4}, {}, 17),
    "leaky": ([N("LeakyRelu", ["x"], ["y"], alpha=0.2)], {"x": X4}, {}, 17),
    "leaky_default": ([N("LeakyRelu", ["x"], ["y"])], {"x": X4}, {}, 17),
    "elu": ([N("Elu", ["x"], ["y"], alpha=0.5)], {"x": X4}, {}, 17),
    "sigmoid": ([N("Sigmoid", ["x"], ["y"])], {"x": X4}, {}, 17),
    "tanh": ([N("Tanh", ["x"], ["y"])], {"x": X4}, {}, 17),
    "gelu20": ([N("Gelu", ["x"], ["y"])], {"x": X4}, {}, 20),
    "gelu20_tanh": ([N("Gelu", ["x"], ["y"], approximate="tanh")], {"x": X4}, {}, 20),
    "softmax13": ([N("Softmax", ["x"], ["y"], axis=1)], {"x": X4}, {}, 13),
    "softmax13_default": ([N("Softmax", ["x"], ["y"])], {"x": X4}, {}, 13),
    "softmax13_neg": ([N("Softmax", ["x"], ["y"], axis=-2)], {"x": X4}, {}, 13),
    "softmax11_flatten": ([N("Softmax", ["x"], ["y"], axis=1)], {"x": X4}, {}, 11),
    "softmax11_axis2": ([N("Softmax", ["x"], ["y"], axis=2)], {"x": X4}, {}, 11),
    "softmax11_default_2d": ([N("Softmax", ["x"], ["y"])], {"x": (3, 5)}, {}, 11),
    "logsoftmax13": ([N("LogSoftmax", ["x"], ["y"], axis=2)], {"x": X4}, {}, 13),
    "logsoftmax11_flatten": ([N("LogSoftmax", ["x"], ["y"], axis=-3)], {"x": X4}, {}, 11),
    "gemm": ([N("Gemm", ["x", "w", "b"], ["y"])], {"x": (3, 5)}, {"w": rand(5, 4), "b": rand(4)}, 17),
    "gemm_transB_alpha_beta": ([N("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)], {"x": (3, 5)},
                               {"w": rand(4, 5), "b": rand(1, 4)}, 17),
    "gemm_noC": ([N("Gemm", ["x", "w"], ["y"], transB=1)], {"x": (3, 5)}, {"w": rand(4, 5)}, 13),
    "gemm_scalarC": ([N("Gemm", ["x", "w", "b"], ["y"])], {"x": (3, 5)}, {"w": rand(5, 4), "b": rand(1)}, 17),
    "gemm_opset7": ([N("Gemm", ["x", "w", "b"], ["y"], transB=1)], {"x": (3, 5)}, {"w": rand(4, 5), "b": rand(4)}, 7),
    "matmul_dense": ([N("MatMul", ["x", "w"], ["y"])], {"x": (3, 5)}, {"w": rand(5, 4)}, 17),
    "matmul_bias_fused": ([N("MatMul", ["x", "w"], ["t"]), N("Add", ["t", "b"], ["y"])], {"x": (3, 5)},
                          {"w": rand(5, 4), "b": rand(4)}, 17),
    "matmul_3d": ([N("MatMul", ["x", "w"], ["y"])], {"x": (2, 3, 5)}, {"w": rand(5, 4)}, 17),
    "matmul_dyn": ([N("MatMul", ["x", "z"], ["y"])], {"x": (2, 3, 5), "z": (2, 5, 4)}, {}, 17),
    "add_same": ([N("Add", ["x", "z"], ["y"])], {"x": X4, "z": X4}, {}, 17),
    "add_bcast_const": ([N("Add", ["x", "c"], ["y"])], {"x": X4}, {"c": rand(4, 1, 1)}, 17),
    "add_bcast_rank4_const": ([N("Add", ["c", "x"], ["y"])], {"x": X4}, {"c": rand(1, 4, 1, 10)}, 17),
    "add_scalar": ([N("Add", ["x", "c"], ["y"])], {"x": X4}, {"c": np.float32(0.5)}, 17),
    "sub": ([N("Sub", ["c", "x"], ["y"])], {"x": X4}, {"c": rand(10)}, 17),
    "mul": ([N("Mul", ["x", "c"], ["y"])], {"x": X4}, {"c": rand(4, 1, 1)}, 17),
    "mul_dyn": ([N("Mul", ["x", "z"], ["y"])], {"x": X4, "z": (2, 4, 1, 1)}, {}, 17),
    "div": ([N("Div", ["x", "c"], ["y"])], {"x": X4}, {"c": np.abs(rand(9, 10)) + 0.5}, 17),
    "sum3": ([N("Sum", ["x", "z", "w"], ["y"])], {"x": X4, "z": X4, "w": X4}, {}, 13),
    "sum_bcast": ([N("Sum", ["x", "c", "z"], ["y"])], {"x": X4, "z": X4}, {"c": rand(10)}, 13),
    "concat": ([N("Concat", ["x", "z"], ["y"], axis=1)], {"x": X4, "z": (2, 3, 9, 10)}, {}, 17),
    "concat_neg": ([N("Concat", ["x", "z"], ["y"], axis=-1)], {"x": X4, "z": (2, 4, 9, 2)}, {}, 17),
    "flatten": ([N("Flatten", ["x"], ["y"])], {"x": X4}, {}, 17),
    "flatten_axis3": ([N("Flatten", ["x"], ["y"], axis=2)], {"x": (2, 1, 9, 10)}, {}, 17),
    "reshape_const": ([N("Reshape", ["x", "s"], ["y"])], {"x": X4}, {"s": np.array([-1, 36, 10], np.int64)}, 17),
    "reshape_zero": ([N("Reshape", ["x", "s"], ["y"])], {"x": X4}, {"s": np.array([0, 4, -1], np.int64)}, 17),
    "reshape_shape_chain": ([N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i0"], ["n"], axis=0),
                             N("Unsqueeze", ["n", "ax"], ["nu"]), N("Concat", ["nu", "m1"], ["tgt"], axis=0),
                             N("Reshape", ["x", "tgt"], ["y"])],
                            {"x": X4}, {"i0": np.array(0, np.int64), "ax": np.array([0], np.int64),
                                        "m1": np.array([-1], np.int64)}, 13),
    "transpose": ([N("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])], {"x": X4}, {}, 17),
    "squeeze13": ([N("Squeeze", ["x", "a"], ["y"])], {"x": (2, 4, 1, 10)}, {"a": np.array([-2], np.int64)}, 13),
    "squeeze11": ([N("Squeeze", ["x"], ["y"], axes=[2])], {"x": (2, 4, 1, 10)}, {}, 11),
    "unsqueeze13": ([N("Unsqueeze", ["x", "a"], ["y"])], {"x": (2, 4, 10)}, {"a": np.array([1, -1], np.int64)}, 13),
    "unsqueeze11": ([N("Unsqueeze", ["x"], ["y"], axes=[2])], {"x": (2, 4, 10)}, {}, 11),
    "dropout": ([N("Dropout", ["x"], ["y"])], {"x": X4}, {}, 13),
    "dropout_opset7": ([N("Dropout", ["x"], ["y"], ratio=0.3)], {"x": X4}, {}, 7),
    "identity": ([N("Identity", ["x"], ["t"]), N("Relu", ["t"], ["y"])], {"x": X4}, {}, 17),
    "identity_out": ([N("Identity", ["x"], ["y"])], {"x": X4}, {}, 17),
    "constant_mul": ([N("Constant", [], ["c"], value=helper.make_tensor("v", 1, [4, 1, 1], rand(4).tolist())),
                      N("Mul", ["x", "c"], ["y"])], {"x": X4}, {}, 17),
    "constant_value_float": ([N("Constant", [], ["c"], value_float=2.5), N("Mul", ["x", "c"], ["y"])], {"x": X4},
                             {}, 13),
    "constant_of_shape": ([N("ConstantOfShape", ["s"], ["c"], value=helper.make_tensor("v", 1, [1], [0.25])),
                           N("Add", ["x", "c"], ["y"])], {"x": X4}, {"s": np.array([9, 10], np.int64)}, 17),
    "pad_constant": ([N("Pad", ["x", "p", "v"], ["y"])], {"x": X4},
                     {"p": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64), "v": np.array(0.5, np.float32)}, 13),
    "pad_reflect": ([N("Pad", ["x", "p"], ["y"], mode="reflect")], {"x": X4},
                    {"p": np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64)}, 13),
    "pad_edge": ([N("Pad", ["x", "p"], ["y"], mode="edge")], {"x": X4},
                 {"p": np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64)}, 13),
    "pad_opset2": ([N("Pad", ["x"], ["y"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=1.0)], {"x": X4}, {}, 7),
    "pad_axes18": ([N("Pad", ["x", "p", "", "a"], ["y"])], {"x": X4},
                   {"p": np.array([1, 2, 3, 0], np.int64), "a": np.array([-2, -1], np.int64)}, 18),
    "conv_transpose": ([N("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1, 0, 1, 2],
                          output_padding=[1, 0])], {"x": X4}, {"w": rand(4, 3, 3, 3), "b": rand(3)}, 13),
    "conv_transpose_dilated": ([N("ConvTranspose", ["x", "w"], ["y"], dilations=[2, 1], kernel_shape=[2, 3])],
                               {"x": X4}, {"w": rand(4, 2, 2, 3)}, 11),
    "slice13": ([N("Slice", ["x", "s", "e", "a", "t"], ["y"])], {"x": X4},
                {"s": np.array([1, -7], np.int64), "e": np.array([3, 1000], np.int64),
                 "a": np.array([1, -1], np.int64), "t": np.array([1, 2], np.int64)}, 13),
    "slice13_negative_step": ([N("Slice", ["x", "s", "e", "a", "t"], ["y"])], {"x": X4},
                              {"s": np.array([-2], np.int64), "e": np.array([-(2 ** 63)], np.int64),
                               "a": np.array([2], np.int64), "t": np.array([-3], np.int64)}, 13),
    "slice13_whole_batch": ([N("Slice", ["x", "s", "e", "a"], ["y"])], {"x": X4},
                            {"s": np.array([0, 2], np.int64), "e": np.array([2 ** 63 - 1, 4], np.int64),
                             "a": np.array([0, 1], np.int64)}, 13),
    "slice9_attrs": ([N("Slice", ["x"], ["y"], starts=[0, 1], ends=[2, 100], axes=[1, 3])], {"x": X4}, {}, 9),
    "split11_attr": ([N("Split", ["x"], ["a", "b"], axis=1, split=[1, 3]), N("Concat", ["b", "a"], ["y"], axis=1)],
                     {"x": X4}, {}, 11),
    "split13_input": ([N("Split", ["x", "s"], ["a", "b"], axis=-1), N("Concat", ["b", "a"], ["y"], axis=-1)],
                      {"x": X4}, {"s": np.array([2, 8], np.int64)}, 13),
    "split13_equal": ([N("Split", ["x"], ["a", "b"], axis=1), N("Sub", ["a", "b"], ["y"])], {"x": X4}, {}, 13),
    "split18_num_outputs": ([N("Split", ["x"], ["a", "b", "c"], axis=2, num_outputs=3),
                             N("Concat", ["c", "a", "b"], ["y"], axis=2)], {"x": X4}, {}, 18),
    "upsample7_nearest": ([N("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0])], {"x": X4}, {}, 7),
    "upsample9_nearest": ([N("Upsample", ["x", "s"], ["y"])], {"x": X4}, {"s": np.array([1, 1, 2, 2], np.float32)}, 9),
    "resize10_nearest": ([N("Resize", ["x", "s"], ["y"])], {"x": X4}, {"s": np.array([1, 1, 2, 1], np.float32)}, 10),
    "resize13_linear_half_pixel": ([N("Resize", ["x", "", "s"], ["y"], mode="linear")], {"x": X4},
                                   {"s": np.array([1, 1, 1.5, 2.5], np.float32)}, 13),
    "resize13_sizes_align_corners": ([N("Resize", ["x", "", "", "z"], ["y"], mode="linear",
                                        coordinate_transformation_mode="align_corners")], {"x": X4},
                                     {"z": np.array([2, 4, 7, 9], np.int64)}, 13),
    # F.interpolate(x, size=...): sizes that are no exact ratio of the input (a float32 scale would round the output
    # size down and pick neighbouring pixels)
    "resize13_sizes_nearest_odd": ([N("Resize", ["x", "", "", "z"], ["y"], coordinate_transformation_mode="asymmetric",
                                      nearest_mode="floor")], {"x": (2, 4, 12, 12)},
                                   {"z": np.array([2, 4, 13, 7], np.int64)}, 13),
    "resize13_sizes_nearest_down": ([N("Resize", ["x", "", "", "z"], ["y"], coordinate_transformation_mode="asymmetric",
                                       nearest_mode="floor")], {"x": (2, 4, 12, 12)},
                                    {"z": np.array([2, 4, 4, 8], np.int64)}, 13),
    "resize17_sizes_linear_pytorch_half_pixel": ([N("Resize", ["x", "", "", "z"], ["y"], mode="linear",
                                                    coordinate_transformation_mode="pytorch_half_pixel")],
                                                 {"x": (2, 4, 12, 12)}, {"z": np.array([2, 4, 5, 17], np.int64)}, 17),
    "resize18_sizes_axes": ([N("Resize", ["x", "", "", "z"], ["y"], mode="linear", axes=[2, 3])],
                            {"x": (2, 4, 12, 12)}, {"z": np.array([7, 10], np.int64)}, 18),
    "resize13_cubic_half_pixel": ([N("Resize", ["x", "", "s"], ["y"], mode="cubic")], {"x": X4},
                                  {"s": np.array([1, 1, 1.5, 2.5], np.float32)}, 13),
    "resize13_cubic_corners_keys": ([N("Resize", ["x", "", "", "z"], ["y"], mode="cubic", cubic_coeff_a=-0.5,
                                       coordinate_transformation_mode="align_corners")], {"x": X4},
                                    {"z": np.array([2, 4, 7, 9], np.int64)}, 13),
    "resize18_cubic_pytorch_half_pixel_down": ([N("Resize", ["x", "", "s"], ["y"], mode="cubic",
                                                  coordinate_transformation_mode="pytorch_half_pixel")], {"x": (2, 3, 8, 7)},
                                               {"s": np.array([1, 1, 0.5, 0.75], np.float32)}, 18),
    "resize18_nearest_floor": ([N("Resize", ["x", "", "s"], ["y"], coordinate_transformation_mode="asymmetric",
                                  nearest_mode="floor")], {"x": X4}, {"s": np.array([1, 1, 3, 2], np.float32)}, 18),
    "hard_sigmoid": ([N("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], {"x": X4}, {}, 13),
    "hard_sigmoid_defaults": ([N("HardSigmoid", ["x"], ["y"])], {"x": X4}, {}, 7),
    "hard_swish": ([N("HardSwish", ["x"], ["y"])], {"x": X4}, {}, 14),
    "softplus": ([N("Softplus", ["x"], ["y"])], {"x": X4}, {}, 13),
    "prelu_per_channel": ([N("PRelu", ["x", "s"], ["y"])], {"x": X4}, {"s": rand(4, 1, 1)}, 16),
    "prelu_shared": ([N("PRelu", ["x", "s"], ["y"])], {"x": X4}, {"s": rand(1)}, 9),
    "prelu_dense": ([N("PRelu", ["x", "s"], ["y"])], {"x": (3, 5)}, {"s": rand(5)}, 13),
    "instance_norm": ([N("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)], {"x": X4},
                      {"s": rand(4), "b": rand(4)}, 13),
    "instance_norm_opset7": ([N("InstanceNormalization", ["x", "s", "b"], ["y"])], {"x": (2, 3, 5)},
                             {"s": rand(3), "b": rand(3)}, 7),
    "group_norm21": ([N("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2, epsilon=1e-4)], {"x": X4},
                     {"s": rand(4), "b": rand(4)}, 21),
    "group_norm18_per_group": ([N("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2)], {"x": X4},
                               {"s": rand(2), "b": rand(2)}, 18),
    "depth_to_space_crd": ([N("DepthToSpace", ["x"], ["y"], blocksize=2, mode="CRD")], {"x": (2, 8, 3, 5)}, {}, 13),
    "depth_to_space_dcr": ([N("DepthToSpace", ["x"], ["y"], blocksize=2)], {"x": (2, 8, 3, 5)}, {}, 13),
    "depth_to_space_opset1": ([N("DepthToSpace", ["x"], ["y"], blocksize=3)], {"x": (2, 9, 2, 2)}, {}, 7),
    "sqrt": ([N("Abs", ["x"], ["a"]), N("Sqrt", ["a"], ["y"])], {"x": X4}, {}, 13),
    "exp": ([N("Exp", ["x"], ["y"])], {"x": X4}, {}, 13),
    "log_reciprocal": ([N("Abs", ["x"], ["a"]), N("Log", ["a"], ["l"]), N("Reciprocal", ["a"], ["r"]),
                        N("Sub", ["l", "r"], ["y"])], {"x": X4}, {}, 13),
    "neg": ([N("Neg", ["x"], ["y"])], {"x": X4}, {}, 13),
    "erf": ([N("Erf", ["x"], ["y"])], {"x": X4}, {}, 13),
    "softsign": ([N("Softsign", ["x"], ["y"])], {"x": X4}, {}, 13),
    "selu_defaults": ([N("Selu", ["x"], ["y"])], {"x": X4}, {}, 13),
    "selu_attrs": ([N("Selu", ["x"], ["y"], alpha=1.5, gamma=2.0)], {"x": X4}, {}, 13),
    "celu": ([N("Celu", ["x"], ["y"], alpha=0.5)], {"x": X4}, {}, 13),
    "max2": ([N("Max", ["x", "z"], ["y"])], {"x": X4, "z": (2, 4, 1, 10)}, {}, 13),
    "max3_const": ([N("Max", ["x", "c", "z"], ["y"])], {"x": X4, "z": X4}, {"c": rand(10)}, 13),
    "min_const": ([N("Min", ["c", "x"], ["y"])], {"x": X4}, {"c": rand(4, 1, 1)}, 13),
    "min_one": ([N("Min", ["x"], ["m"]), N("Relu", ["m"], ["y"])], {"x": X4}, {}, 13),
    "pow_square": ([N("Pow", ["x", "e"], ["y"])], {"x": X4}, {"e": np.array(2, np.float32)}, 13),
    "pow_sqrt_int_exponent": ([N("Abs", ["x"], ["a"]), N("Pow", ["a", "e"], ["y"])], {"x": X4},
                              {"e": np.array([0.5], np.float32)}, 15),
    "pow_cube_int64": ([N("Pow", ["x", "e"], ["y"])], {"x": X4}, {"e": np.array(3, np.int64)}, 13),
    "reduce_mean_channels": ([N("ReduceMean", ["x"], ["y"], axes=[1])], {"x": X4}, {}, 13),
    "reduce_max_channels_keep0": ([N("ReduceMax", ["x"], ["y"], axes=[1], keepdims=0)], {"x": X4}, {}, 13),
    "reduce_sum13": ([N("ReduceSum", ["x", "a"], ["y"])], {"x": X4}, {"a": np.array([1, -1], np.int64)}, 13),
    "reduce_sum_hw": ([N("ReduceSum", ["x", "a"], ["y"], keepdims=0)], {"x": X4}, {"a": np.array([2, 3], np.int64)}, 13),
    "reduce_mean18_input": ([N("ReduceMean", ["x", "a"], ["y"])], {"x": X4}, {"a": np.array([-3], np.int64)}, 18),
    "reduce_max18_noop": ([N("ReduceMax", ["x", "a"], ["y"], noop_with_empty_axes=1)], {"x": X4},
                          {"a": np.array([], np.int64)}, 18),
    "layer_norm_last": ([N("LayerNormalization", ["x", "s", "b"], ["y"])], {"x": X4}, {"s": rand(10), "b": rand(10)},
                        17),
    "layer_norm_chw": ([N("LayerNormalization", ["x", "s", "b"], ["y"], axis=1, epsilon=1e-3)], {"x": X4},
                       {"s": rand(4, 9, 10), "b": rand(4, 9, 10)}, 17),
    "layer_norm_no_bias_bcast_scale": ([N("LayerNormalization", ["x", "s"], ["y"], axis=-2)], {"x": X4},
                                       {"s": rand(10)}, 17),
    "clip_relu6": ([N("Clip", ["x", "lo", "hi"], ["y"])], {"x": X4},
                   {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, 13),
    "clip_min_only": ([N("Clip", ["x", "lo"], ["y"])], {"x": X4}, {"lo": np.array(-0.3, np.float32)}, 13),
    "clip_opset6_attrs": ([N("Clip", ["x"], ["y"], min=-0.5, max=0.5)], {"x": X4}, {}, 7),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_onnxruntime(case):
    nodes, inputs, inits, opset = CASES[case]
    feeds = {k: rand(*s) * 3 for k, s in inputs.items()}
    model = make_model(nodes, inputs, inits, opset=opset)
    compare(model, feeds)


def test_lrn_even_size_matches_onnx_formula():
    # ONNX Runtime only implements odd sizes (and onnx.reference loops over the wrong axis), so the
    # expected values come from the operator's formula: channels c-floor((size-1)/2) … c+ceil((size-1)/2)
    import math
    from cnngraph.onnx import import_onnx
    size, alpha, beta, bias = 4, 0.3, 0.75, 1.0
    model = make_model([N("LRN", ["x"], ["y"], size=size, alpha=alpha)], {"x": (2, 7, 3, 3)})
    x = rand(2, 7, 3, 3) * 2
    sq = np.zeros_like(x)
    for c in range(7):
        lo, hi = max(0, c - math.floor((size - 1) / 2)), min(7, c + math.ceil((size - 1) / 2) + 1)
        sq[:, c] = (x[:, lo:hi] ** 2).sum(axis=1)
    want = x / (bias + alpha / size * sq) ** beta
    got = import_onnx(model).forward({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_resize_modes_without_an_upsample2d_form_are_named():
    """Linear or cubic resizing with asymmetric coordinates (old Upsample) has no cnngraph op: one clear error."""
    from cnngraph.onnx import OnnxError, import_onnx
    scales = {"s": np.array([1, 1, 2, 2], np.float32)}
    for node, opset in ((N("Upsample", ["x", "s"], ["y"], mode="linear"), 9),
                        (N("Resize", ["x", "", "s"], ["y"], mode="cubic", coordinate_transformation_mode="asymmetric"), 13)):
        with pytest.raises(OnnxError, match=r"resizing with mode '(linear|cubic)'.* is not supported "
                                            r"\(nearest asymmetric floor"):
            import_onnx(make_model([node], {"x": X4}, scales, opset=opset))


def test_prelu_slope_that_is_not_per_channel_is_named():
    from cnngraph.onnx import OnnxError, import_onnx
    model = make_model([N("PRelu", ["x", "s"], ["y"])], {"x": X4}, {"s": rand(10)}, opset=13)   # per column W
    with pytest.raises(OnnxError, match=r"PRelu node .*only a shared slope or one per channel .*\(10,\)"):
        import_onnx(model)


def test_pow_with_a_computed_exponent_and_layer_norm_over_the_batch_are_named():
    from cnngraph.onnx import OnnxError, import_onnx
    with pytest.raises(OnnxError, match=r"Pow node .*a computed exponent is not supported"):
        import_onnx(make_model([N("Pow", ["x", "z"], ["y"])], {"x": X4, "z": X4}, opset=13))
    with pytest.raises(OnnxError, match=r"Pow node .*only a scalar exponent"):
        import_onnx(make_model([N("Pow", ["x", "e"], ["y"])], {"x": X4}, {"e": rand(10)}, opset=13))
    with pytest.raises(OnnxError, match=r"LayerNormalization node .*batch axis"):
        import_onnx(make_model([N("LayerNormalization", ["x", "s"], ["y"], axis=0)], {"x": (2, 3)},
                               {"s": rand(2, 3)}, opset=17))
    with pytest.raises(OnnxError, match=r"ReduceSum node .*batch axis"):
        import_onnx(make_model([N("ReduceSum", ["x", "a"], ["y"])], {"x": X4}, {"a": np.array([0, 1], np.int64)},
                               opset=13))


def test_float32_resize_scales_come_back_as_written():
    """ONNX stores scales as float32: an exported scale_factor 0.6 imports as 0.6, not 0.6000000238418579."""
    import cnngraph
    from cnngraph.onnx.exporter import spec_to_onnx
    spec = {"name": "t", "inputs": {"x": {"shape": [2, 7, 5]}},
            "layers": [{"id": "u", "type": "upsample2d", "scale_factor": [0.6, 1.7], "mode": "bicubic"}], "outputs": ["u"]}
    model = cnngraph.compile(spec)
    back = cnngraph.import_onnx(spec_to_onnx(model.spec, model.params.numpy()))
    assert back.import_result.spec["layers"][0]["scale_factor"] == [0.6, 1.7]
