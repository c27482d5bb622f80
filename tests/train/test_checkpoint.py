"""Checkpoints: exact round trip, atomicity under crashes, and corruption reporting."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import cnngraph.train.checkpoint as ckpt
from cnngraph.errors import CheckpointError
from cnngraph.train.checkpoint import (
    META_FILE, load_checkpoint, rng_state_from_json, rng_state_to_json, save_checkpoint,
)
from cnngraph.train.optim import build_optimizer


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "conv1.bias": rng.standard_normal(4),  # float64
        "bn/running_var": rng.random(4, dtype=np.float32),
        "bn.num_batches": np.array(seed, dtype=np.int64),  # 0-d
        "mask": rng.random((2, 2)) > 0.5,
        "empty": np.zeros((0, 3), np.float16),
    }


def _meta(epoch):
    return {"epoch": epoch, "spec": "layers: []\n", "metrics": {"loss": [1.5, float("nan")]},
            "rng": rng_state_to_json(np.random.default_rng(epoch))}


def _opt_state(seed):
    return {"conv1.weight/exp_avg": np.full((4, 3, 3, 3), seed, np.float32),
            "conv1.weight/step": np.array(seed, np.int64)}


def _assert_same(got: dict, want: dict):
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert np.array_equal(got[k], v), k


def _assert_is(directory, seed):
    c = load_checkpoint(directory)
    _assert_same(c.arrays, _arrays(seed))
    _assert_same(c.optimizer_state, _opt_state(seed))
    assert c.meta["epoch"] == seed


def _data_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name != META_FILE)


def test_round_trip_exact(tmp_path):
    d = tmp_path / "run" / "last"  # parents are created
    save_checkpoint(d, _arrays(1), _meta(1), _opt_state(1))
    c = load_checkpoint(d)
    _assert_same(c.arrays, _arrays(1))
    _assert_same(c.optimizer_state, _opt_state(1))
    meta = c.meta
    assert meta["spec"] == "layers: []\n" and np.isnan(meta["metrics"]["loss"][1])
    assert rng_state_from_json(meta["rng"]).random() == np.random.default_rng(1).random()


def test_without_optimizer_state_and_numpy_meta(tmp_path):
    save_checkpoint(tmp_path, {"w": np.ones(3)}, {"lr": np.float32(0.5), "shape": np.arange(2)})
    c = load_checkpoint(tmp_path)
    assert c.optimizer_state is None
    assert c.meta == {"lr": 0.5, "shape": [0, 1]}


def test_overwrite_replaces_and_cleans_up(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1), _opt_state(1))
    save_checkpoint(tmp_path, _arrays(2), _meta(2), _opt_state(2))
    _assert_is(tmp_path, 2)
    assert len(_data_files(tmp_path)) == 2  # the first save's files are gone
    save_checkpoint(tmp_path, _arrays(2), _meta(3), None)
    assert load_checkpoint(tmp_path).optimizer_state is None
    assert [n.split("-")[0] for n in _data_files(tmp_path)] == ["weights"]


def test_optimizer_state_resumes_through_checkpoint(tmp_path):
    w = {"w": np.linspace(-1, 1, 6, dtype=np.float32)}
    grads = [{"w": np.full(6, g, np.float32)} for g in (0.3, -0.2, 0.5, 0.1)]
    straight = build_optimizer({"type": "adam"})
    w_straight = {"w": w["w"].copy()}
    for g in grads:
        straight.step(w_straight, g, 0.01)

    opt = build_optimizer({"type": "adam"})
    for g in grads[:2]:
        opt.step(w, g, 0.01)
    save_checkpoint(tmp_path, w, {}, opt.state_dict())
    c = load_checkpoint(tmp_path)
    resumed = build_optimizer({"type": "adam"})
    resumed.load_state_dict(c.optimizer_state)
    for g in grads[2:]:
        resumed.step(c.arrays, g, 0.01)
    assert np.array_equal(c.arrays["w"], w_straight["w"])


# --- crashes during save leave the previous checkpoint loadable --------------------

def _fail_on_call(monkeypatch, target, attr, n):
    """Make ``target.attr`` raise on its n-th call (1-based)."""
    real = getattr(target, attr)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, attr, wrapper)


@pytest.mark.parametrize("n", [1, 2, 3], ids=["weights", "optimizer", "meta"])
def test_crash_at_each_replace_keeps_previous(tmp_path, monkeypatch, n):
    save_checkpoint(tmp_path, _arrays(1), _meta(1), _opt_state(1))
    with monkeypatch.context() as m:
        _fail_on_call(m, ckpt.os, "replace", n)
        with pytest.raises(CheckpointError, match=r"could not be written \(simulated crash\)"):
            save_checkpoint(tmp_path, _arrays(2), _meta(2), _opt_state(2))
    _assert_is(tmp_path, 1)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # The next save succeeds and removes what the failed one left behind.
    save_checkpoint(tmp_path, _arrays(3), _meta(3), _opt_state(3))
    _assert_is(tmp_path, 3)
    assert len(_data_files(tmp_path)) == 2


def test_crash_while_writing_second_npz_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _arrays(1), _meta(1), _opt_state(1))
    n_weight_arrays = len(_arrays(2))
    with monkeypatch.context() as m:
        # Fail on the first array of the optimizer file, half-way through the save.
        _fail_on_call(m, np.lib.format, "write_array", n_weight_arrays + 1)
        with pytest.raises(CheckpointError):
            save_checkpoint(tmp_path, _arrays(2), _meta(2), _opt_state(2))
    _assert_is(tmp_path, 1)


def test_hard_kill_leftovers_are_ignored(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1), _opt_state(1))
    good = (tmp_path / load_meta_name(tmp_path, "weights")).read_bytes()
    # What a killed save could leave: a half-written temp, and a truncated data file.
    (tmp_path / ".weights-abc.tmp").write_bytes(good[: len(good) // 2])
    (tmp_path / "weights-0123456789abcdef.npz").write_bytes(good[:100])
    (tmp_path / ".meta-xyz.tmp").write_text('{"format": "cnngraph-chec')
    _assert_is(tmp_path, 1)
    save_checkpoint(tmp_path, _arrays(2), _meta(2), _opt_state(2))
    _assert_is(tmp_path, 2)
    assert len(_data_files(tmp_path)) == 2


def load_meta_name(directory, part):
    return json.loads((directory / META_FILE).read_text())["files"][part]["name"]


# --- corrupt or missing files --------------------------------------------------------

def test_missing_directory_and_meta(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*meta.json"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is not a directory"):
        load_checkpoint(tmp_path / "file")
    with pytest.raises(CheckpointError, match="meta.json: missing"):
        load_checkpoint(tmp_path)


def test_missing_data_file(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1), _opt_state(1))
    name = load_meta_name(tmp_path, "optimizer")
    (tmp_path / name).unlink()
    with pytest.raises(CheckpointError, match=rf"{name}: missing.*optimizer"):
        load_checkpoint(tmp_path)


def test_truncated_weights(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1))
    path = tmp_path / load_meta_name(tmp_path, "weights")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=rf"{path.name}: sha256 .*truncated"):
        load_checkpoint(tmp_path)


def test_torn_pair_detected(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_checkpoint(a, _arrays(1), _meta(1), _opt_state(1))
    save_checkpoint(b, _arrays(2), _meta(2), _opt_state(2))
    # Weights from save b under the name save a's meta.json expects.
    shutil.copy(b / load_meta_name(b, "weights"), a / load_meta_name(a, "weights"))
    with pytest.raises(CheckpointError, match="different save"):
        load_checkpoint(a)


def _forge(directory, part, write):
    """Replace a data file with other content and fix meta.json's hash to match."""
    path = directory / load_meta_name(directory, part)
    write(path)
    record = json.loads((directory / META_FILE).read_text())
    record["files"][part]["sha256"], record["files"][part]["bytes"] = ckpt._sha256(path)
    (directory / META_FILE).write_text(json.dumps(record))


def test_pickled_object_array_refused(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1))

    def write(path):
        with open(path, "wb") as f:
            np.savez(f, w=np.array([{"evil": 1}], dtype=object))

    _forge(tmp_path, "weights", write)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path)


def test_garbage_npz_with_matching_hash(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1))
    _forge(tmp_path, "weights", lambda p: p.write_bytes(b"not a zip file at all"))
    with pytest.raises(CheckpointError, match="cannot read the weights arrays"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not a cnngraph checkpoint"),
    ('{"format": "cnngraph-checkpoint", "version": 99}', "version 99"),
    ('{"format": "cnngraph-checkpoint", "version": 1, "files": {}, "meta": {}}', "weights"),
    ('{"format": "cnngraph-checkpoint", "version": 1, "meta": {}, "files": '
     '{"weights": {"name": "../../etc/passwd", "sha256": "0"}}}', "files.weights"),
])
def test_bad_meta_json(tmp_path, text, match):
    (tmp_path / META_FILE).write_text(text)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path)


def test_save_refuses_object_arrays_and_bad_meta(tmp_path):
    save_checkpoint(tmp_path, _arrays(1), _meta(1), _opt_state(1))
    with pytest.raises(CheckpointError, match="dtype object"):
        save_checkpoint(tmp_path, {"w": np.array([None])}, {})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, _arrays(2), {"bad": object()})
    _assert_is(tmp_path, 1)


# --- RNG state -----------------------------------------------------------------------

@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.MT19937, np.random.Philox,
                                    np.random.SFC64, np.random.PCG64DXSM])
def test_rng_state_json_round_trip(bitgen):
    gen = np.random.Generator(bitgen(1234))
    gen.random(7)
    gen.integers(0, 10, size=3)  # leaves a buffered uint32 in some generators
    data = json.loads(json.dumps(rng_state_to_json(gen)))
    restored = rng_state_from_json(data)
    assert np.array_equal(restored.random(5), gen.random(5))
    assert np.array_equal(restored.integers(0, 1 << 40, 4), gen.integers(0, 1 << 40, 4))


def test_rng_state_unknown_generator():
    with pytest.raises(CheckpointError, match="unknown bit generator 'Nope'"):
        rng_state_from_json({"bit_generator": "Nope", "state": {}})


def test_background_writer_saves_in_order_and_reports_errors(tmp_path):
    from cnngraph.train.checkpoint import CheckpointWriter
    w = CheckpointWriter()
    a = {"w": np.arange(4.0)}
    w.submit([(tmp_path / "best", a, {"epoch": 1}, None), (tmp_path / "last", a, {"epoch": 1}, None)], tag=1)
    w.submit([(tmp_path / "last", {"w": np.ones(4)}, {"epoch": 2}, None)], tag=2)   # waits for the first
    w.wait()
    assert w.done == 2
    assert load_checkpoint(tmp_path / "best").meta["epoch"] == 1
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "last").arrays["w"], np.ones(4))
    # an error on the writer thread surfaces at the next wait(); the last good save stays
    w.submit([(tmp_path / "last", {"w": np.array([object()], dtype=object)}, {"epoch": 3}, None)], tag=3)
    with pytest.raises(CheckpointError, match="dtype object"):
        w.wait()
    assert w.done == 2 and load_checkpoint(tmp_path / "last").meta["epoch"] == 2
    w.wait()   # the error was reported once


def test_ctrl_c_while_collecting_a_failed_save_keeps_its_error_for_the_next_wait(tmp_path, monkeypatch):
    """Ctrl-C can land just as a failed background save is collected: the interrupt is raised, and the save's
    own failure is still reported by the next wait (the stop then writes its snapshots again)."""
    from concurrent.futures import Future
    from cnngraph.train.checkpoint import CheckpointWriter
    real_result, fired = Future.result, []

    def result(self, timeout=None):
        if not fired and self.done() and self.exception() is not None:
            fired.append(1)
            raise KeyboardInterrupt
        return real_result(self, timeout)
    monkeypatch.setattr(Future, "result", result)
    w = CheckpointWriter()
    w.submit([(tmp_path / "last", {"w": np.array([object()], dtype=object)}, {"epoch": 1}, None)], tag=1)
    from concurrent.futures import wait
    wait([w._pending])    # the save has failed by the time the interrupt lands
    with pytest.raises(KeyboardInterrupt):
        w.wait()
    with pytest.raises(CheckpointError, match="dtype object"):
        w.wait()
    w.wait()   # reported once


@pytest.mark.parametrize("links", [True, False])
def test_best_and_last_of_one_epoch_share_their_files(tmp_path, monkeypatch, links):
    """An improved epoch's best/ and last/ hold the same arrays: last/ hard-links best/'s data files (half the
    writes and disk), and writes its own where links fail. Replacing one later never touches the other."""
    from cnngraph.train.checkpoint import CheckpointWriter
    if not links:
        def no_links(src, dst):
            raise OSError(1, "Operation not permitted")
        monkeypatch.setattr(ckpt.os, "link", no_links)
    w = CheckpointWriter()
    a, opt = _arrays(1), _opt_state(1)
    w.submit([(tmp_path / "best", a, _meta(1), opt), (tmp_path / "last", a, _meta(1), opt)], tag=1)
    w.wait()
    for part in ("weights", "optimizer"):
        best, last = (next((tmp_path / which).glob(f"{part}-*.npz")) for which in ("best", "last"))
        assert best.name == last.name and os.path.samefile(best, last) is links
    w.submit([(tmp_path / "best", _arrays(2), _meta(2), _opt_state(2))], tag=2)
    w.wait()
    for k, v in _arrays(1).items():
        np.testing.assert_array_equal(load_checkpoint(tmp_path / "last").arrays[k], v)
    assert load_checkpoint(tmp_path / "best").meta["epoch"] == 2 and load_checkpoint(tmp_path / "last").meta["epoch"] == 1


def test_a_damaged_preferred_checkpoint_is_reported_not_silently_replaced(tmp_path):
    run = tmp_path / "run"
    for which in ("best", "last"):
        save_checkpoint(run / "checkpoint" / which, _arrays(1), _meta(1), _opt_state(1))
    assert ckpt.resolve_checkpoint(run) == run / "checkpoint" / "best"
    (run / "checkpoint" / "best" / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"best checkpoint has no meta.json .* name the last checkpoint"):
        ckpt.resolve_checkpoint(run)
    assert ckpt.resolve_checkpoint(run, prefer="last") == run / "checkpoint" / "last"
    shutil.rmtree(run / "checkpoint" / "best")          # absent (no validation, say): the other one is used
    assert ckpt.resolve_checkpoint(run) == run / "checkpoint" / "last"
