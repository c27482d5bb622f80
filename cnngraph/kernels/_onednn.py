"""Float32 convolutions (grouped and depthwise too) and max pooling through oneDNN's C API (ctypes), when its library is installed.

oneDNN (Intel's deep-learning primitives, the library PyTorch's CPU convolutions use) ships on PyPI as
``onednn-cpu-gomp``, a dependency of cnngraph on x86-64 Linux, which puts ``libdnnl.so.3`` under
``<prefix>/lib``. Its JIT ``brgconv`` kernels run on NumPy's memory in place: activations are given to it
channels-last (NHWC), the layout those kernels want, and conv outputs come back as NCHW-*shaped* views of
NHWC buffers, so a chain of conv -> relu/add/pool -> conv passes the layout along without transposing
copies (NumPy's element-wise ops keep their input's memory order). Weights are reordered into the blocked
layout the kernel chose on every call (a few hundred KiB at most; small ones in NumPy, see _Reorder), read-only
ones once.

Measured on 2 cores (AVX-512 Xeon): 3x3 convolutions of 16-64 channels at 210-280 GFLOP/s against 60-105 for
the NumPy im2col path. Off with CNNGRAPH_ONEDNN=0; CNNGRAPH_ONEDNN_LIB names another libdnnl.so.3 (oneDNN
3.x); OMP_NUM_THREADS sets its threads (default: the usable cores).
"""
from __future__ import annotations

import contextlib
import ctypes as C
import functools
import math
import os
import sys
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np

from ._parallel import channels_last, flat

__all__ = ["available", "describe", "disabled", "usable", "forward", "backward", "max_pool_forward",
           "max_pool_backward", "pool_usable"]

_F32, _CPU, _TAG_ANY = 3, 1, 1
_FORWARD_TRAINING, _FORWARD_INFERENCE = 64, 96
_CONVOLUTION_DIRECT, _ELTWISE_RELU = 0x1, 0x20
_POOLING_MAX = 0x1ff
_QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD, _QUERY_WORKSPACE_MD = 131, 132, 135
_QUERY_STRIDES, _QUERY_NDIMS, _QUERY_DIMS, _QUERY_PADDED_DIMS, _QUERY_FORMAT_KIND = 14, 256, 257, 260, 262
_QUERY_INNER_NBLKS, _QUERY_INNER_BLKS, _QUERY_INNER_IDXS, _FORMAT_BLOCKED = 263, 264, 265, 2
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS, ARG_WORKSPACE = 1, 17, 33, 41, 64
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS, ARG_DIFF_BIAS = 129, 145, 161, 169
_Dims = C.c_int64 * 12
_vp = C.c_void_p


class _Arg(C.Structure):
    _fields_ = [("arg", C.c_int), ("memory", _vp)]


class OneDNNError(RuntimeError):
    pass


def _candidates():
    env = os.environ.get("CNNGRAPH_ONEDNN_LIB")
    if env:
        return [env]
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))])
    return [str(Path(p) / "lib" / "libdnnl.so.3") for p in prefixes] + ["libdnnl.so.3"]


class _Api:
    """The loaded library, one CPU engine and stream, and the argument types of the calls used."""

    def __init__(self, lib, path):
        self.lib, self.path = lib, path
        sig = {
            "dnnl_engine_create": [C.POINTER(_vp), C.c_int, C.c_size_t],
            "dnnl_stream_create": [C.POINTER(_vp), _vp, C.c_uint],
            "dnnl_stream_wait": [_vp],
            "dnnl_memory_desc_create_with_tag": [C.POINTER(_vp), C.c_int, _Dims, C.c_int, C.c_int],
            "dnnl_memory_desc_create_with_strides": [C.POINTER(_vp), C.c_int, _Dims, C.c_int, _Dims],
            "dnnl_memory_desc_get_size": [_vp],
            "dnnl_convolution_forward_primitive_desc_create":
                [C.POINTER(_vp), _vp, C.c_int, C.c_int, _vp, _vp, _vp, _vp, _Dims, _Dims, _Dims, _Dims, _vp],
            "dnnl_convolution_backward_data_primitive_desc_create":
                [C.POINTER(_vp), _vp, C.c_int, _vp, _vp, _vp, _Dims, _Dims, _Dims, _Dims, _vp, _vp],
            "dnnl_convolution_backward_weights_primitive_desc_create":
                [C.POINTER(_vp), _vp, C.c_int, _vp, _vp, _vp, _vp, _Dims, _Dims, _Dims, _Dims, _vp, _vp],
            "dnnl_pooling_forward_primitive_desc_create":
                [C.POINTER(_vp), _vp, C.c_int, C.c_int, _vp, _vp, _Dims, _Dims, _Dims, _Dims, _Dims, _vp],
            "dnnl_pooling_backward_primitive_desc_create":
                [C.POINTER(_vp), _vp, C.c_int, _vp, _vp, _Dims, _Dims, _Dims, _Dims, _Dims, _vp, _vp],
            "dnnl_reorder_primitive_desc_create": [C.POINTER(_vp), _vp, _vp, _vp, _vp, _vp],
            "dnnl_primitive_desc_query_md": [_vp, C.c_int, C.c_int],
            "dnnl_memory_desc_query": [_vp, C.c_int, _vp],
            "dnnl_primitive_desc_query": [_vp, C.c_int, C.c_int, _vp],
            "dnnl_primitive_create": [C.POINTER(_vp), _vp],
            "dnnl_memory_create": [C.POINTER(_vp), _vp, _vp, _vp],
            "dnnl_memory_set_data_handle": [_vp, _vp],
            "dnnl_primitive_execute": [_vp, _vp, C.c_int, C.POINTER(_Arg)],
            "dnnl_primitive_attr_create": [C.POINTER(_vp)],
            "dnnl_primitive_attr_set_post_ops": [_vp, _vp],
            "dnnl_post_ops_create": [C.POINTER(_vp)],
            "dnnl_post_ops_append_eltwise": [_vp, C.c_int, C.c_float, C.c_float],
            "dnnl_post_ops_append_sum": [_vp, C.c_float, C.c_int32, C.c_int],
        }
        for name, argtypes in sig.items():
            getattr(lib, name).argtypes = argtypes
        lib.dnnl_primitive_desc_query_md.restype = _vp
        lib.dnnl_memory_desc_get_size.restype = C.c_size_t
        self.engine, self.stream = _vp(), _vp()
        self.check(lib.dnnl_engine_create(C.byref(self.engine), _CPU, 0), "creating the CPU engine")
        self.check(lib.dnnl_stream_create(C.byref(self.stream), self.engine, 1), "creating a stream")
        # Primitives use per-primitive scratchpads: one call at a time (concurrent graph branches queue here).
        self.lock = threading.Lock()
        self._bound = {}    # see execute

    @staticmethod
    def check(status, what):
        if status != 0:
            raise OneDNNError(f"oneDNN failed {what} (status {status})")

    def md(self, shape, strides=None):
        """A float32 memory descriptor: with ``strides`` (in elements) a plain layout, else 'any'."""
        m = _vp()
        if strides is None:
            self.check(self.lib.dnnl_memory_desc_create_with_tag(C.byref(m), len(shape), _Dims(*shape), _F32, _TAG_ANY),
                       "creating a memory descriptor")
        else:
            self.check(self.lib.dnnl_memory_desc_create_with_strides(
                C.byref(m), len(shape), _Dims(*shape), _F32, _Dims(*strides)), "creating a memory descriptor")
        return m

    def primitive(self, pd):
        p = _vp()
        self.check(self.lib.dnnl_primitive_create(C.byref(p), pd), "creating a primitive")
        return p

    def reorder(self, src_md, dst_md):
        pd = _vp()
        self.check(self.lib.dnnl_reorder_primitive_desc_create(C.byref(pd), src_md, self.engine, dst_md,
                                                               self.engine, None), "creating a reorder")
        return self.primitive(pd)

    def execute(self, primitive, args):
        """Run ``primitive`` on {arg id: (memory descriptor, contiguous array)}. The memory objects of a primitive's
        arguments are made once and pointed at each call's arrays (a tiny call: 17 -> 6 us)."""
        lib = self.lib
        key = (primitive.value, tuple(args))
        bound = self._bound.get(key)
        if bound is None:
            mems = []
            for arg, (md, _) in args.items():
                m = _vp()
                self.check(lib.dnnl_memory_create(C.byref(m), md, self.engine, None), "wrapping an array")
                mems.append(m)
            bound = self._bound[key] = (mems, (_Arg * len(mems))(*[_Arg(a, m) for a, m in zip(args, mems)]))
        mems, packed = bound
        for m, (_, array) in zip(mems, args.values()):
            lib.dnnl_memory_set_data_handle(m, array.ctypes.data)
        self.check(lib.dnnl_primitive_execute(primitive, self.stream, len(mems), packed), "executing")
        self.check(lib.dnnl_stream_wait(self.stream), "waiting for the stream")


@functools.lru_cache(maxsize=1)
def _api():
    if os.environ.get("CNNGRAPH_ONEDNN", "1") == "0":
        return None
    for path in _candidates():
        try:
            return _Api(C.CDLL(path), path)
        except OSError:
            continue
        except (AttributeError, OneDNNError) as e:    # not oneDNN 3.x, or it would not start
            warnings.warn(f"{path}: not a usable oneDNN 3.x library ({e}); convolutions run on NumPy", stacklevel=2)
            return None
    if os.environ.get("CNNGRAPH_ONEDNN_LIB"):
        warnings.warn(f"CNNGRAPH_ONEDNN_LIB={os.environ['CNNGRAPH_ONEDNN_LIB']}: cannot be loaded; convolutions "
                      f"run on NumPy", stacklevel=2)
    return None


def available() -> bool:
    """Whether oneDNN was found (and not switched off with CNNGRAPH_ONEDNN=0)."""
    return _api() is not None


@contextlib.contextmanager
def disabled():
    """Within the block, convolutions run on the NumPy kernels (for tests and float32 A/B comparisons)."""
    global _api
    saved, _api = _api, (lambda: None)
    try:
        yield
    finally:
        _api = saved


class _Version(C.Structure):
    _fields_ = [("major", C.c_int), ("minor", C.c_int), ("patch", C.c_int), ("hash", C.c_char_p)]


def describe() -> str:
    """Which kernels run float32 convolutions, for benchmark reports and `cnngraph bench`."""
    api = _api()
    if api is None:
        why = "off: CNNGRAPH_ONEDNN=0" if os.environ.get("CNNGRAPH_ONEDNN") == "0" else "not installed"
        return f"NumPy im2col + BLAS (oneDNN {why})"
    api.lib.dnnl_version.restype = C.POINTER(_Version)
    v = api.lib.dnnl_version().contents
    return f"oneDNN {v.major}.{v.minor}.{v.patch} ({api.path})"


def usable(x) -> bool:
    """Whether a convolution of x runs on oneDNN: a float32 NumPy array, library present."""
    return isinstance(x, np.ndarray) and x.dtype == np.float32 and available()


def _nhwc(a, mask=None):
    """``a`` (N, C, H, W) with channels-last memory: itself when it already is, else a copy; with ``mask``
    (a's shape) a * (mask > 0), a relu's gradient, written channels-last."""
    t = a.transpose(0, 2, 3, 1)
    if mask is not None:
        out = np.empty(t.shape, dtype=np.float32)
        return np.multiply(t, mask.transpose(0, 2, 3, 1) > 0, out=out)
    return t if t.flags.c_contiguous else np.ascontiguousarray(t)


def _nhwc_md(api, shape):
    n, c, h, w = shape
    return api.md(shape, (h * w * c, 1, w * c, c))


def _plain_md(api, shape):
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return api.md(shape, tuple(reversed(strides)))


def _chosen_md(api, pd, query):
    """The memory descriptor of the (blocked) layout a primitive chose for its weights or their gradient."""
    return _vp(api.lib.dnnl_primitive_desc_query_md(pd, query, 0))


class _Reorder:
    """Weights between our plain layout and the blocked one a primitive chose (``md``). Small ones are a NumPy
    transposed copy: on oneDNN a reorder of a few thousand floats took 15-30 us, mostly starting its threads
    (five a digits training step); big ones, or a layout NumPy cannot express, run oneDNN's reorder primitive."""

    NUMPY_UP_TO = 1 << 13     # elements (measured: 4608 floats 3.8 against 9.4 us; 36864 28 against 18)

    def __init__(self, api, plain_md, md, to_blocked):
        self.api, self.plain_md, self.md, self.to_blocked = api, plain_md, md, to_blocked
        self.size = api.lib.dnnl_memory_desc_get_size(md) // 4
        self.primitive = api.reorder(plain_md, md) if to_blocked else api.reorder(md, plain_md)
        self.view = self._numpy_view() if self.size <= self.NUMPY_UP_TO else None
        if self.view is not None:
            _, split, axes, _ = self.view
            self._blocked_shape, self._unblock = tuple(split[a] for a in axes), tuple(np.argsort(axes))

    def _query(self, what, count):
        api, dims = self.api, C.POINTER(_Dims)()
        api.check(api.lib.dnnl_memory_desc_query(self.md, what, C.byref(dims)), "querying a layout")
        return list(dims.contents)[:count]

    def _numpy_view(self):
        """(padded dims, the padded array's dims split into outer part and inner blocks, the axis order of the
        blocked memory), checked against oneDNN's own reorder on random weights; None when they differ."""
        lib, n, kind, nblks = self.api.lib, C.c_int(), C.c_int(), C.c_int()
        for what, value in ((_QUERY_NDIMS, n), (_QUERY_FORMAT_KIND, kind), (_QUERY_INNER_NBLKS, nblks)):
            self.api.check(lib.dnnl_memory_desc_query(self.md, what, C.byref(value)), "querying a layout")
        if kind.value != _FORMAT_BLOCKED:
            return None
        n, nblks = n.value, nblks.value
        dims, padded, strides = (self._query(q, n) for q in (_QUERY_DIMS, _QUERY_PADDED_DIMS, _QUERY_STRIDES))
        blocks, block_dims = self._query(_QUERY_INNER_BLKS, nblks), self._query(_QUERY_INNER_IDXS, nblks)
        split, outer_axes, block_axes = [], [], {}
        for d in range(n):   # dim d becomes (outer, its blocks in listed order): earlier-listed are more significant
            mine = [k for k in range(nblks) if block_dims[k] == d]
            outer_axes.append(len(split))
            split.append(padded[d] // math.prod(blocks[k] for k in mine))
            for k in mine:
                block_axes[k] = len(split)
                split.append(blocks[k])
        order = sorted(range(n), key=lambda d: -strides[d])
        axes = [outer_axes[d] for d in order] + [block_axes[k] for k in range(nblks)]
        view = (tuple(padded), tuple(split), tuple(axes), tuple(dims))
        w = np.random.default_rng(0).standard_normal(dims, dtype=np.float32)
        mine = np.empty(self.size, np.float32)
        try:
            self._numpy_to_blocked(w, mine, view)
        except ValueError:     # sizes that do not add up: not a dense blocked layout
            return None
        if self.to_blocked:    # oneDNN's own reorder must write the same buffer ...
            theirs = np.empty(self.size, np.float32)
            with self.api.lock:
                self.api.execute(self.primitive, {ARG_SRC: (self.plain_md, w), ARG_DST: (self.md, theirs)})
            same = np.array_equal(mine, theirs)
        else:                  # ... or read ours back as w
            back = np.empty_like(w)
            with self.api.lock:
                self.api.execute(self.primitive, {ARG_SRC: (self.md, mine), ARG_DST: (self.plain_md, back)})
            same = np.array_equal(back, w)
        return view if same else None

    @staticmethod
    def _numpy_to_blocked(w, out, view):
        padded, split, axes, dims = view
        if padded != dims:
            full = np.zeros(padded, np.float32)
            full[tuple(slice(0, d) for d in dims)] = w
            w = full
        t = w.reshape(split).transpose(axes)
        np.copyto(out.reshape(t.shape), t)

    def blocked(self, w):
        """w (plain) in the blocked layout, as a new flat buffer."""
        out = np.empty(self.size, dtype=np.float32)
        if self.view is not None:
            self._numpy_to_blocked(np.ascontiguousarray(w).reshape(self.view[3]), out, self.view)
        else:
            self.api.execute(self.primitive, {ARG_SRC: (self.plain_md, np.ascontiguousarray(w)), ARG_DST: (self.md, out)})
        return out

    def plain(self, blocked, out):
        """The flat blocked buffer written into ``out`` (plain)."""
        if self.view is None:
            self.api.execute(self.primitive, {ARG_SRC: (self.md, blocked), ARG_DST: (self.plain_md, out)})
            return
        padded, split, axes, dims = self.view
        full = blocked.reshape(self._blocked_shape).transpose(self._unblock).reshape(padded)
        if padded != dims:
            full = full[tuple(slice(0, d) for d in dims)]
        np.copyto(out.reshape(dims), full)


class _Geometry:
    """One convolution's memory descriptors and strides/dilation/padding, in oneDNN's terms."""

    def __init__(self, x_shape, w_shape, has_bias, stride, padding, dilation, out, groups):
        api = self.api = _api()
        top, bottom, left, right = padding
        self.dims = (_Dims(*stride), _Dims(*(d - 1 for d in dilation)), _Dims(top, left), _Dims(bottom, right))
        self.x_shape, self.w_shape, self.y_shape = x_shape, w_shape, (x_shape[0], w_shape[0]) + tuple(out)
        # grouped: oneDNN's weights are (G, O/G, C/G, kh, kw), the same memory as ours (O, C/G, kh, kw)
        self.w_dims = (groups, w_shape[0] // groups) + tuple(w_shape[1:]) if groups > 1 else tuple(w_shape)
        self.src, self.dst = _nhwc_md(api, x_shape), _nhwc_md(api, self.y_shape)
        self.w_plain, self.bias = _plain_md(api, self.w_dims), api.md((w_shape[0],), (1,)) if has_bias else None

    def forward_pd(self, training, attr=None):
        api, pd = self.api, _vp()
        api.check(api.lib.dnnl_convolution_forward_primitive_desc_create(
            C.byref(pd), api.engine, _FORWARD_TRAINING if training else _FORWARD_INFERENCE, _CONVOLUTION_DIRECT,
            self.src, api.md(self.w_dims), self.bias, self.dst, *self.dims, attr),
            f"creating a convolution of {self.x_shape} with {self.w_shape}")
        return pd

    def weights(self, w, reorder):
        """w (O, C, kh, kw) in the blocked layout of ``reorder`` (a _Reorder): reordered on every call (training
        updates w in place), except for read-only arrays (an inference snapshot's, see cnngraph.passes), reordered
        once and kept while w lives (ResNet-50 at batch 1 reordered 100 MB of weights per image otherwise)."""
        key = (id(w), reorder.md.value)
        kept = _frozen.get(key)
        if kept is not None and kept[0]() is w:
            return kept[1]
        blocked = reorder.blocked(w)
        if not w.flags.writeable:
            _frozen[key] = (weakref.ref(w, lambda _, key=key: _frozen.pop(key, None)), blocked)
        return blocked


_frozen: dict = {}   # (id of a read-only weight array, layout) -> (weak reference to it, its blocked copy)


class _Forward:
    """The forward primitive of one geometry, with bias and optional residual-sum and relu post-ops."""

    def __init__(self, geometry, training, relu, residual):
        self.g, api = geometry, geometry.api
        pd = geometry.forward_pd(training, _post_ops(api, relu, residual))
        self.primitive = api.primitive(pd)
        self.w_md = _chosen_md(api, pd, _QUERY_WEIGHTS_MD)
        self.w_reorder = _Reorder(api, geometry.w_plain, self.w_md, to_blocked=True)

    def __call__(self, x, w, b, residual):
        g = self.g
        N, O, Ho, Wo = g.y_shape
        y = np.empty((N, Ho, Wo, O), dtype=np.float32)
        if residual is not None:    # the sum post-op adds the convolution to what dst holds
            np.copyto(y, residual.transpose(0, 2, 3, 1))
        args = {ARG_SRC: (g.src, _nhwc(x)), ARG_WEIGHTS: (self.w_md, g.weights(w, self.w_reorder)),
                ARG_DST: (g.dst, y)}
        if b is not None:
            args[ARG_BIAS] = (g.bias, np.ascontiguousarray(b))
        g.api.execute(self.primitive, args)
        return y.transpose(0, 3, 1, 2)


def _post_ops(api, relu, residual):
    if not (relu or residual):
        return None
    ops, attr = _vp(), _vp()
    api.check(api.lib.dnnl_post_ops_create(C.byref(ops)), "creating post-ops")
    if residual:
        api.check(api.lib.dnnl_post_ops_append_sum(ops, 1.0, 0, 0), "adding a sum post-op")
    if relu:
        api.check(api.lib.dnnl_post_ops_append_eltwise(ops, _ELTWISE_RELU, 0.0, 0.0), "adding a relu post-op")
    api.check(api.lib.dnnl_primitive_attr_create(C.byref(attr)), "creating attributes")
    api.check(api.lib.dnnl_primitive_attr_set_post_ops(attr, ops), "setting post-ops")
    return attr


class _Backward:
    """The backward-data and backward-weights primitives of one geometry."""

    def __init__(self, geometry):
        self.g, api = geometry, geometry.api
        lib, g = api.lib, geometry
        hint = g.forward_pd(training=True)
        pd = _vp()
        api.check(lib.dnnl_convolution_backward_data_primitive_desc_create(
            C.byref(pd), api.engine, _CONVOLUTION_DIRECT, g.src, api.md(g.w_dims), g.dst, *g.dims, hint, None),
            "creating a convolution's backward-data pass")
        self.data = api.primitive(pd)
        self.w_md = _chosen_md(api, pd, _QUERY_WEIGHTS_MD)
        self.w_reorder = _Reorder(api, g.w_plain, self.w_md, to_blocked=True)
        pd = _vp()
        api.check(lib.dnnl_convolution_backward_weights_primitive_desc_create(
            C.byref(pd), api.engine, _CONVOLUTION_DIRECT, g.src, api.md(g.w_dims), g.bias, g.dst, *g.dims,
            hint, None), "creating a convolution's backward-weights pass")
        self.weights = api.primitive(pd)
        self.dw_md = _chosen_md(api, pd, _QUERY_DIFF_WEIGHTS_MD)
        self.dw_reorder = _Reorder(api, g.w_plain, self.dw_md, to_blocked=False)

    def __call__(self, gy, x, w, need_dx, mask):
        g, api = self.g, self.g.api
        N, C_, H, W = g.x_shape
        gy = _nhwc(gy, mask)
        dx = None
        if need_dx:
            dx = np.empty((N, H, W, C_), dtype=np.float32)
            api.execute(self.data, {ARG_DIFF_DST: (g.dst, gy), ARG_DIFF_SRC: (g.src, dx),
                                    ARG_WEIGHTS: (self.w_md, g.weights(w, self.w_reorder))})
            dx = dx.transpose(0, 3, 1, 2)
        dw_blocked = np.empty(self.dw_reorder.size, dtype=np.float32)
        args = {ARG_SRC: (g.src, _nhwc(x)), ARG_DIFF_DST: (g.dst, gy), ARG_DIFF_WEIGHTS: (self.dw_md, dw_blocked)}
        db = None
        if g.bias is not None:
            db = np.empty(g.w_shape[0], dtype=np.float32)
            args[ARG_DIFF_BIAS] = (g.bias, db)
        api.execute(self.weights, args)
        dw = np.empty(g.w_shape, dtype=np.float32)
        self.dw_reorder.plain(dw_blocked, dw)
        return dx, dw, db


@functools.lru_cache(maxsize=None)   # primitives live as long as the process: one set per geometry seen
def _geometry(*key):
    return _Geometry(*key)


@functools.lru_cache(maxsize=None)
def _forward(geometry, training, relu, residual):
    return _Forward(geometry, training, relu, residual)


@functools.lru_cache(maxsize=None)
def _backward(geometry):
    return _Backward(geometry)


class _MaxPool:
    """Max pooling of channels-last float32 arrays; in training, its workspace (the argmax of each window) feeds
    the backward primitive."""

    def __init__(self, x_shape, out, kernel, stride, padding, training):
        api = self.api = _api()
        (N, C_, H, W), (Ho, Wo), (kh, kw), (sh, sw) = x_shape, out, kernel, stride
        top, bottom, left, right = padding
        # oneDNN checks Ho == (H - kh + top + bottom) // sh + 1: ceil mode's overhang counts as bottom padding
        bottom = bottom if (H - kh + top + bottom) // sh + 1 == Ho else (Ho - 1) * sh + kh - H - top
        right = right if (W - kw + left + right) // sw + 1 == Wo else (Wo - 1) * sw + kw - W - left
        self.x_shape, self.y_shape = x_shape, (N, C_, Ho, Wo)
        self.src, self.dst = _nhwc_md(api, x_shape), _nhwc_md(api, self.y_shape)
        dims = (_Dims(sh, sw), _Dims(kh, kw), _Dims(0, 0), _Dims(top, left), _Dims(bottom, right))
        pd = _vp()
        api.check(api.lib.dnnl_pooling_forward_primitive_desc_create(
            C.byref(pd), api.engine, _FORWARD_TRAINING if training else _FORWARD_INFERENCE, _POOLING_MAX,
            self.src, self.dst, *dims, None), f"creating a max pooling of {x_shape}")
        self.forward_primitive = api.primitive(pd)
        if training:
            self.workspace = _chosen_md(api, pd, _QUERY_WORKSPACE_MD)
            bwd = _vp()
            api.check(api.lib.dnnl_pooling_backward_primitive_desc_create(
                C.byref(bwd), api.engine, _POOLING_MAX, self.src, self.dst, *dims, pd, None),
                "creating a max pooling's backward pass")
            self.backward_primitive = api.primitive(bwd)

    def forward(self, x, training):
        """(y, workspace or None); y an NCHW-shaped view of a channels-last buffer."""
        N, C_, Ho, Wo = self.y_shape
        y = np.empty((N, Ho, Wo, C_), dtype=np.float32)
        args = {ARG_SRC: (self.src, _nhwc(x)), ARG_DST: (self.dst, y)}
        ws = None
        if training:
            ws = np.empty(self.api.lib.dnnl_memory_desc_get_size(self.workspace), dtype=np.uint8)
            args[ARG_WORKSPACE] = (self.workspace, ws)
        self.api.execute(self.forward_primitive, args)
        return y.transpose(0, 3, 1, 2), ws

    def backward(self, gy, ws):
        N, C_, H, W = self.x_shape
        dx = np.empty((N, H, W, C_), dtype=np.float32)
        self.api.execute(self.backward_primitive, {ARG_DIFF_DST: (self.dst, _nhwc(gy)), ARG_WORKSPACE: (self.workspace, ws),
                                                   ARG_DIFF_SRC: (self.src, dx)})
        return dx.transpose(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def _max_pool(*key):
    return _MaxPool(*key)


def max_pool_forward(x, out, kernel, stride, padding, training):
    """(y, saved or None) of max pooling a channels-last float32 x (see pool_usable); ``saved`` feeds
    max_pool_backward. (None, None) where oneDNN has no primitive for this geometry."""
    try:
        pool = _max_pool(x.shape, tuple(out), tuple(kernel), tuple(stride), tuple(padding), training)
    except OneDNNError:
        return None, None
    with pool.api.lock:
        y, ws = pool.forward(x, training)
    _nan_windows(y)
    return y, ((pool, ws) if training else None)


_LOWEST = np.finfo(np.float32).min


def _nan_windows(y):
    """oneDNN's max skips NaN, starting from the lowest float: a window of NaN only (a layer whose weights became
    NaN gives nothing else) would come out as -3.4e38, finite garbage that hides the divergence from the loss
    check. Such windows are made NaN, as PyTorch's are (one min() over the output, 4x smaller than the input)."""
    values = flat(y)     # (y is channels-last: a view of its buffer)
    if values.size and values.min() == _LOWEST:
        np.copyto(values, np.float32(np.nan), where=values == _LOWEST)


def max_pool_backward(gy, saved):
    pool, ws = saved
    with pool.api.lock:
        return pool.backward(np.asarray(gy, dtype=np.float32), ws)


def pool_usable(x, dilation) -> bool:
    """Whether a max pooling of x runs on oneDNN: a channels-last float32 NumPy array (a oneDNN conv's output),
    no dilation, library present."""
    return tuple(dilation) == (1, 1) and x.dtype == np.float32 and channels_last(x) and available()


def forward(x, w, b, stride, padding, dilation, groups, out, training, relu=False, residual=None):
    """y = conv(x, w) + b (+ residual), relu'd if asked: an NCHW-shaped view of a channels-last buffer; None where
    oneDNN has no primitive for this geometry (the caller's NumPy kernel runs instead)."""
    try:
        g = _geometry(x.shape, w.shape, b is not None, tuple(stride), tuple(padding), tuple(dilation), tuple(out),
                      groups)
        primitive = _forward(g, training, relu, residual is not None)
    except OneDNNError:
        return None
    with g.api.lock:
        return primitive(x, w, b, residual)


def backward(gy, x, w, has_bias, stride, padding, dilation, groups, out, need_dx, mask=None):
    """(dx or None, dw, db or None) of conv(x, w) (+ bias when ``has_bias``) given gy, the gradient of its output;
    with ``mask`` (the output of a forward with relu) the gradient is gy * (mask > 0). None where oneDNN has no
    backward primitive for this geometry."""
    try:
        g = _geometry(x.shape, w.shape, has_bias, tuple(stride), tuple(padding), tuple(dilation), tuple(out), groups)
        primitives = _backward(g)
    except OneDNNError:
        return None
    with g.api.lock:
        return primitives(gy, x, w, need_dx, mask)
