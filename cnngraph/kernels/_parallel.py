"""Work splitting for the NumPy fast paths: a small thread pool plus per-thread scratch buffers.

NumPy releases the GIL in copies, ufuncs and BLAS calls, so running independent batch chunks on
one thread per core (each calling single-threaded BLAS) keeps both the im2col copies and the GEMMs
parallel and every chunk's working set cache-resident. Set CNNGRAPH_KERNEL_THREADS=1 to disable.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

__all__ = ["n_workers", "workers_for", "run_parallel", "run_shards", "run_blocks", "contiguous_alike", "flat",
           "channels_last", "as_channels_last", "empty_as", "scratch", "scratch_as",
           "split_chunks", "blas_held_for", "with_blas_threads"]

_lock = threading.Lock()
_pool = None
_blas = None          # threadpoolctl controllers of NumPy's BLAS, [] when unavailable
_local = threading.local()
_MAX_ZEROED = 48


def n_workers():
    """Threads the kernels may use: 1 inside a shard of run_shards, else CNNGRAPH_KERNEL_THREADS, else
    the usable cores (at most 8)."""
    if getattr(_local, "serial", False):
        return 1
    return _threads()


FLOPS_PER_EXTRA_THREAD = 20e6   # see workers_for


def workers_for(flops: float, serial_below: float) -> int:
    """Threads for one kernel call of ``flops``: one below ``serial_below``, else one per
    FLOPS_PER_EXTRA_THREAD of work, at least two and at most n_workers(). On many cores every thread costs a
    hand-off and its share of Python work under the GIL: on 8 threads of a 16-core Xeon (alternating
    runs) the limit made LeNet-5 training at batch 256 13-33 % faster, resnet_small inference at batch
    32 8-45 %, cifarnet training 4-9 %. With 2 threads it changes nothing."""
    if flops < serial_below:
        return 1
    return max(1, min(n_workers(), max(2, int(flops // FLOPS_PER_EXTRA_THREAD))))


def _threads():
    env = os.environ.get("CNNGRAPH_KERNEL_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(_usable_cores(), 8))


@functools.lru_cache(maxsize=None)
def _usable_cores() -> int:
    """Cores this process may run on (asked once: kernels ask for every call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _blas_controllers():
    """Thread controls of the BLAS libraries loaded for NumPy/SciPy (not torch's own, which our
    threads never call); [] without threadpoolctl."""
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
            np.dot(np.ones((2, 2)), np.ones((2, 2)))   # make sure NumPy's BLAS is loaded
            ctl = ThreadpoolController().select(user_api="blas")
            _blas = [c for c in ctl.lib_controllers if not _inside_torch(c.filepath)]
        except Exception:  # pragma: no cover - threadpoolctl missing or odd BLAS
            _blas = []
    return _blas


def _inside_torch(path: str) -> bool:
    """True for a library bundled in the installed torch package (site-packages/torch/lib or
    site-packages/torch.libs), whose threads our kernels never use. Only those folders count: an
    environment merely named "torch" (/opt/torch/.venv, conda's envs/torch/lib) keeps its NumPy BLAS held."""
    folder = Path(path).parent
    if folder.name == "torch.libs":
        return folder.parent.name in ("site-packages", "dist-packages")
    return (folder.name == "lib" and folder.parent.name == "torch"
            and folder.parent.parent.name in ("site-packages", "dist-packages"))


def split_chunks(n, per_chunk, workers):
    """Split range(n) into contiguous (start, stop) chunks of about ``per_chunk`` items,
    with a chunk count that is a multiple of ``workers`` when that costs nothing (load balance)."""
    if n <= 0:
        return []
    per_chunk = max(1, min(n, per_chunk))
    count = -(-n // per_chunk)
    if workers > 1 and n >= workers:
        count = -(-count // workers) * workers
    count = min(count, n)
    base, extra = divmod(n, count)      # equal sizes, the first `extra` one longer: threads finish together
    bounds = [0]
    for i in range(count):
        bounds.append(bounds[-1] + base + (i < extra))
    return list(zip(bounds[:-1], bounds[1:]))


class _SingleThreadedBlas:
    """Holds NumPy's BLAS at one thread while any kernel runs (re-entrant across threads).

    The kernels parallelise over batch chunks themselves; BLAS threads on top would oversubscribe
    the cores, and OpenBLAS's spinning threads degrade badly (10x) when a core is busy elsewhere.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._saved = []

    def __enter__(self):
        with self._lock:
            if self._users == 0:
                blas = _blas_controllers()
                self._saved = [(c, c.num_threads) for c in blas]
                for c, _ in self._saved:
                    _set_threads(c, 1)
            self._users += 1

    def __exit__(self, *exc):
        with self._lock:
            self._users -= 1
            if self._users == 0:
                for c, n in self._saved:
                    _set_threads(c, n)
                self._saved = []


def _set_threads(controller, n: int) -> None:
    """Set a BLAS library's thread count from whichever thread holds the kernels. threadpoolctl's public
    setter ignores every thread but the first that used it (for a shared OpenBLAS pool): a model run from
    a server's worker thread kept BLAS's threads spinning on the cores of our kernel threads. The hold is
    counted across threads by _SingleThreadedBlas, so the library's own setter is safe to call here."""
    getattr(controller, "_real_set_num_threads", controller.set_num_threads)(n)


_single_blas = _SingleThreadedBlas()


def blas_held_for(batch: int, splits_one: bool = False):
    """Context for one whole forward or backward pass: BLAS at one thread throughout when the
    kernels will split this batch over their own threads.

    Toggling BLAS's threads per kernel call is cheap by itself, but every multi-threaded BLAS call
    leaves OpenBLAS's threads spinning for a while, taking the cores from our kernel threads: holding
    BLAS at one thread for the pass made cifarnet inference at batch 64 1.5x faster and a training
    step 1.1-1.2x faster (2 cores). A batch of 1 keeps BLAS's threads (most kernels run it as one chunk)
    unless ``splits_one``: the pass's heavy kernels cut a single sample over our threads themselves.
    """
    if (batch > 1 or splits_one) and n_workers() > 1 and _blas_controllers():
        return _single_blas
    return contextlib.nullcontext()


def run_parallel(fn, chunks, workers=None):
    """Run ``fn(chunk_iterator)`` on up to ``workers`` threads (default n_workers()) that pull
    chunks from one shared iterator, so a core slowed by other load simply takes fewer chunks.
    The calling thread is one of the workers. Returns the per-worker results.

    Runs serially (BLAS keeps its own threads) when threadpoolctl is missing or there is a single
    chunk, and serially with single-threaded BLAS when one worker suffices or another call already
    holds the pool.
    """
    workers = min(workers or n_workers(), len(chunks))
    if not _blas_controllers() or len(chunks) == 1:
        # one chunk (e.g. batch 1): no threads of ours, so BLAS may use all the cores itself
        return [fn(iter(chunks))]
    with _single_blas:
        if workers <= 1 or not _lock.acquire(blocking=False):
            return [fn(iter(chunks))]
        try:
            it = iter(chunks)    # list iterators are safe to share: next() holds the GIL
            futures = [_get_pool().submit(fn, it) for _ in range(workers - 1)]
            try:
                mine = fn(it)
            finally:
                others = [f.result() for f in futures]
            return [mine] + others
        finally:
            _lock.release()


def _get_pool():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="cnngraph-kernel")
    return _pool


def _serially(fn, i):
    """fn(i) with this thread's kernels on one thread (run_shards already uses every core)."""
    before, _local.serial = getattr(_local, "serial", False), True
    try:
        return fn(i)
    finally:
        _local.serial = before


def with_blas_threads(fn):
    """fn() with the kernels on this thread alone, BLAS free to use its own threads: for a batch of one, the
    other way to use the cores than the kernels' own splits (see passes.InferenceModel._fastest)."""
    return _serially(lambda _: fn(), 0)


def run_shards(fn, count):
    """``[fn(0), ..., fn(count - 1)]`` with the calls running concurrently, one per kernel thread (the
    caller runs shard 0), each with single-threaded kernels and BLAS; None, without calling ``fn``,
    when they cannot run concurrently (one kernel thread, no threadpoolctl to hold BLAS, or the kernel
    threads busy with another call): the caller then runs the batch as one pass instead.

    For whole passes over batch shards: each thread runs every layer on its own samples, so there is
    no thread hand-off and no wait for the slower thread at every layer, as there is when each kernel
    splits the batch itself. When shards fail, the lowest-numbered failure is raised after all finish.
    """
    if count < 2 or n_workers() < 2 or not _blas_controllers() or not _lock.acquire(blocking=False):
        return None
    try:
        with _single_blas:
            futures = [_get_pool().submit(_serially, fn, i) for i in range(1, count)]
            try:
                first = _serially(fn, 0)
            finally:
                wait(futures)
            return [first] + [f.result() for f in futures]
    finally:
        _lock.release()


BLOCK = 1 << 16              # elements per piece of an element-wise pass: each operand's piece stays in L2
BLOCKS_FROM = 1 << 18        # smaller passes run on one thread (measured: the hand-off costs more)


def channels_last(a) -> bool:
    """Whether ``a`` is an (N, C, H, W)-shaped view of a dense (N, H, W, C) buffer (as oneDNN's outputs are)."""
    return (isinstance(a, np.ndarray) and a.ndim == 4 and not a.flags.c_contiguous
            and a.transpose(0, 2, 3, 1).flags.c_contiguous)


def contiguous_alike(*arrays) -> bool:
    """NumPy arrays of one shape, each one dense block in the same memory order (C order, or all channels-last):
    safe to process as flat pieces (see flat)."""
    first = arrays[0]
    return (isinstance(first, np.ndarray) and (first.flags.c_contiguous or channels_last(first))
            and all(isinstance(a, np.ndarray) and a.shape == first.shape and a.strides == first.strides
                    for a in arrays))


def flat(a):
    """A 1-D view of a dense array's elements in memory order (see contiguous_alike)."""
    return a.reshape(-1) if a.flags.c_contiguous else a.transpose(0, 2, 3, 1).reshape(-1)


def empty_as(like, shape, dtype):
    """np.empty(shape) laid out as ``like``: channels-last (an NCHW-shaped view) when ``like`` is, so element-wise
    passes between the two run over memory in order."""
    if channels_last(like):
        n, c, h, w = shape
        return np.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)
    return np.empty(shape, dtype=dtype)


def as_channels_last(a):
    """``a`` (N, C, H, W) as an NCHW-shaped view of a dense (N, H, W, C) buffer: a copy unless it is one already."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def run_blocks(fn, size):
    """Call ``fn(start, stop)`` over ``range(size)`` in L2-sized pieces on the kernel threads, for
    memory-bound element-wise passes over contiguous arrays. On 2 cores: a relu backward over 1.2 M
    floats 1.3x and a residual add+relu over 12.8 M 1.6x faster than one NumPy call; relu in pieces
    made a cifarnet training step (batch 64) 11 % and a LeNet-5 one (batch 256) 3 % faster."""
    workers = n_workers()
    if size < BLOCKS_FROM or workers == 1:
        fn(0, size)
        return

    def work(chunks):
        for s, e in chunks:
            fn(s * BLOCK, min(e * BLOCK, size))

    run_parallel(work, split_chunks(-(-size // BLOCK), 4, workers), workers)


def scratch_as(name, like, dtype):
    """scratch() of ``like``'s shape, laid out as ``like`` (see empty_as)."""
    if channels_last(like):
        n, c, h, w = like.shape
        return scratch(name, (n, h, w, c), dtype).transpose(0, 3, 1, 2)
    return scratch(name, like.shape, dtype)


def scratch(name, shape, dtype, zero=False):
    """A reusable buffer of this thread, returned as an array of exactly ``shape``.

    Plain buffers are keyed by (name, dtype) and only grow. ``zero=True`` buffers are keyed by their
    exact shape too and are zero when first allocated: the kernels use them for padded inputs whose
    borders they never write, so the borders stay zero across calls. At most _MAX_ZEROED of those
    are kept per thread (least recently used dropped).
    """
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = OrderedDict()
    shape = tuple(int(v) for v in shape)
    dtype = np.dtype(dtype)
    size = math.prod(shape)     # not np.prod: ~25 us per call, thousands of calls per epoch
    if zero:
        key = (name, shape, dtype.str)
        buf = cache.get(key)
        if buf is None:
            buf = cache[key] = np.zeros(shape, dtype=dtype)
            zeroed = [k for k in cache if len(k) == 3]
            for k in zeroed[:-_MAX_ZEROED]:
                del cache[k]
        else:
            cache.move_to_end(key)
        return buf
    key = (name, dtype.str)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)
