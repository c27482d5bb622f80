"""The kernels' work splitting: run_shards (whole passes over batch shards on the kernel threads)."""
from __future__ import annotations

import threading
import time

import pytest

from cnngraph.kernels import _parallel
from cnngraph.kernels._parallel import n_workers, run_shards


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "2")
    if not _parallel._blas_controllers():
        pytest.skip("threadpoolctl is not installed: shards run one after the other")


def test_shards_run_concurrently_in_order_with_serial_kernels(two_threads):
    both_started = threading.Barrier(2, timeout=10)   # fails unless the two shards overlap in time

    def shard(i):
        both_started.wait()
        return i, n_workers(), threading.get_ident()

    results = run_shards(shard, 2)
    assert [r[0] for r in results] == [0, 1]
    assert [r[1] for r in results] == [1, 1]            # kernels inside a shard stay on their thread
    assert results[0][2] == threading.get_ident() != results[1][2]
    assert n_workers() == 2                              # the caller's setting is back afterwards


def test_a_failing_shard_raises_after_all_shards_finish(two_threads):
    finished = []

    def shard(i):
        if i == 0:
            raise ValueError("shard 0 failed")          # the caller's own shard fails at once...
        time.sleep(0.2)
        finished.append(i)                               # ...and the pool's shard still completes first
        return i

    with pytest.raises(ValueError, match="shard 0 failed"):
        run_shards(shard, 2)
    assert finished == [1]
    assert _parallel._lock.acquire(blocking=False)      # the kernel threads are free again
    _parallel._lock.release()
    assert n_workers() == 2
    assert _parallel._get_pool().submit(n_workers).result() == 2   # the pool thread's flag is reset too


def test_no_shards_when_they_cannot_run_concurrently(two_threads, monkeypatch):
    calls = []
    with _parallel._lock:                                # another call holds the kernel threads
        assert run_shards(calls.append, 2) is None
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "1")
    assert run_shards(calls.append, 2) is None
    assert calls == []                                   # the caller runs one pass instead


@pytest.mark.parametrize("path, bundled", [
    ("/usr/lib/python3/site-packages/torch/lib/libopenblas.so.0", True),
    ("/env/lib/python3.12/dist-packages/torch.libs/libgomp-a34b3233.so.1", True),
    # NumPy's own BLAS in environments named after torch: still ours to hold
    ("/opt/torch/.venv/lib/python3.12/site-packages/numpy.libs/libscipy_openblas64_-61654e39.so", False),
    ("/opt/torch/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-61654e39.so", False),
    ("/home/u/miniconda3/envs/torch/lib/libopenblas.so.0", False),
    ("/home/u/miniconda3/envs/pytorch/lib/libopenblas.so", False),
])
def test_only_torch_bundled_blas_is_left_alone(path, bundled):
    assert _parallel._inside_torch(path) is bundled


def test_blas_libraries_inside_torch_are_not_controlled(monkeypatch):
    if not _parallel._blas_controllers():
        pytest.skip("threadpoolctl is not installed")
    monkeypatch.setattr(_parallel, "_blas", None)        # find the libraries again
    monkeypatch.setattr(_parallel, "_inside_torch", lambda path: True)
    assert _parallel._blas_controllers() == []


def test_numpys_blas_is_found_and_held():
    if not _parallel._blas_controllers():
        pytest.skip("threadpoolctl is not installed")
    before = [c.num_threads for c in _parallel._blas_controllers()]
    with _parallel._single_blas:
        assert all(c.num_threads == 1 for c in _parallel._blas_controllers())
    assert [c.num_threads for c in _parallel._blas_controllers()] == before


def test_threads_per_kernel_grow_with_its_work(monkeypatch):
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "8")
    per = _parallel.FLOPS_PER_EXTRA_THREAD
    assert _parallel.workers_for(1e6, 5e6) == 1              # tiny: no hand-off at all
    assert _parallel.workers_for(6e6, 5e6) == 2              # small: two threads, as on 2 cores
    assert _parallel.workers_for(3.5 * per, 5e6) == 3
    assert _parallel.workers_for(100 * per, 5e6) == 8        # never more than configured
    monkeypatch.setenv("CNNGRAPH_KERNEL_THREADS", "1")
    assert _parallel.workers_for(100 * per, 5e6) == 1


def test_blas_is_held_at_one_thread_from_any_calling_thread():
    """A model run from a server's worker thread: threadpoolctl's public setter only obeys the first thread
    that used it, so the hold must reach BLAS from other threads too, for the caller and the kernel threads."""
    from cnngraph.kernels._parallel import _blas_controllers, _get_pool, _single_blas
    controllers = _blas_controllers()
    if not controllers or controllers[0].num_threads < 2:
        pytest.skip("needs threadpoolctl and a BLAS with several threads")
    c = controllers[0]

    def probe():
        with _single_blas:
            return c.num_threads, _get_pool().submit(lambda: c.num_threads).result()

    assert probe() == (1, 1)
    seen = {}
    worker = threading.Thread(target=lambda: seen.setdefault("counts", probe()))
    worker.start()
    worker.join()
    assert seen["counts"] == (1, 1) and c.num_threads >= 2   # held inside, released after
