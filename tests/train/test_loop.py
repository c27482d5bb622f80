"""The training loop end to end on small slices of the bundled digits."""
import copy
import io
import json
import re

import numpy as np
import pytest

import cnngraph
from cnngraph.errors import CheckpointError, SpecError
from cnngraph.train import checkpoint as ckpt_mod
from cnngraph.train.checkpoint import load_checkpoint
from cnngraph.train.loop import History, TrainingError, load_model
from cnngraph.train.optim import SGD

torch = pytest.importorskip("torch")


def tiny_spec(**train):
    t = {"data": {"dataset": "digits", "limit": 160}, "loss": {"type": "cross_entropy", "output": "logits"},
         "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9}, "schedule": {"type": "cosine"},
         "batch_size": 32, "epochs": 3, "augment": [{"type": "random_shift", "pixels": 1}], "seed": 3}
    t.update(train)
    return {"name": "tiny", "inputs": {"image": {"shape": [1, 8, 8]}},
            "layers": [{"id": "conv1", "type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": 1},
                       {"id": "act1", "type": "relu"},
                       {"id": "pool", "type": "max_pool2d", "kernel_size": 2},
                       {"id": "flat", "type": "flatten"},
                       {"id": "fc1", "type": "dense", "out_features": 24},
                       {"id": "act2", "type": "relu"},
                       {"id": "drop", "type": "dropout", "p": 0.2},
                       {"id": "logits", "type": "dense", "out_features": 10}],
            "outputs": ["logits"], "train": t}


def run(spec, tmp_path, name="run", **kw):
    kw.setdefault("stream", io.StringIO())
    return cnngraph.train(spec, out=tmp_path / name, **kw)


def test_loop_learns_and_writes_outputs(tmp_path):
    stream = io.StringIO()
    hist = run(tiny_spec(epochs=4, data={"dataset": "digits", "limit": 400}), tmp_path, stream=stream)
    assert isinstance(hist, History) and isinstance(hist, list) and len(hist) == 4
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["val_accuracy"] > 0.5          # chance is 0.1
    assert hist.test["test_accuracy"] > 0.5 and hist.test["checkpoint"] == "best"
    assert np.array(hist.test["confusion"]).sum() == 450
    # exactly one line per epoch on a non-TTY stream
    lines = [l for l in stream.getvalue().splitlines() if l.startswith("epoch ")]
    assert len(lines) == 4 and "val_acc" in lines[0] and "img/s" in lines[0]
    out = tmp_path / "run"
    m = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_seconds", "images_per_second", "history"):
        assert m[key] is not None
    assert m["test_accuracy"] == hist.test["test_accuracy"] and len(m["history"]) == 4
    assert (out / "history.csv").read_text().count("\n") == 5
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best, last = load_checkpoint(out / "checkpoint" / "best"), load_checkpoint(out / "checkpoint" / "last")
    assert last.meta["epoch"] == 4 and best.meta["epoch"] == hist.best_epoch
    meta = last.meta
    assert meta["spec_sha256"] and meta["cnngraph_version"] == cnngraph.__version__
    assert meta["dataset"]["classes"] == [str(i) for i in range(10)] and meta["dataset"]["pixel_scale"] == 16.0
    assert set(meta["rng"]) == {"loop", "model"} and last.optimizer_state
    # load_model: the best weights, same predictions as the run's test evaluation
    model = load_model(out)
    np.testing.assert_array_equal(model.params["fc1.weight"], best.arrays["fc1.weight"])


def _params(path):
    return load_checkpoint(path).arrays


def _interrupt_at(monkeypatch, call):
    real = SGD.step
    count = {"n": 0}

    def step(self, *a, **k):
        count["n"] += 1
        if count["n"] == call:
            raise KeyboardInterrupt
        return real(self, *a, **k)
    monkeypatch.setattr(SGD, "step", step)


def test_interrupt_then_resume_is_bit_for_bit(tmp_path, monkeypatch):
    spec = tiny_spec(epochs=4)      # cosine over 4 epochs, dropout and augmentation: every RNG matters
    straight = run(spec, tmp_path, "straight")
    steps_per_epoch = 5             # 160 / 32
    _interrupt_at(monkeypatch, 2 * steps_per_epoch + 2)    # mid epoch 3
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path, "split", stream=stream)
    assert "interrupted" in stream.getvalue() and "epoch 2" in stream.getvalue()
    assert load_checkpoint(tmp_path / "split" / "checkpoint" / "last").meta["epoch"] == 2
    monkeypatch.undo()
    resumed = cnngraph.train(spec, resume=tmp_path / "split", stream=io.StringIO())
    assert resumed.out == tmp_path / "split"
    a, b = _params(tmp_path / "straight/checkpoint/last"), _params(tmp_path / "split/checkpoint/last")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert [r["train_loss"] for r in straight] == [r["train_loss"] for r in resumed]
    assert straight.test["test_accuracy"] == resumed.test["test_accuracy"]


@pytest.mark.parametrize("interval, written", [(0, [1, 2, 3, 4, 5]), (1e9, [1, 5])])
def test_checkpoints_are_written_at_most_once_per_interval_and_always_at_the_end(tmp_path, monkeypatch, interval,
                                                                                  written):
    tags, real = [], ckpt_mod.CheckpointWriter.submit

    def submit(self, saves, tag=None):
        tags.append((tag, [p.name for p, *_ in saves]))
        return real(self, saves, tag)
    monkeypatch.setattr(ckpt_mod.CheckpointWriter, "submit", submit)
    spec = tiny_spec(epochs=5, checkpoint_interval=interval, early_stopping={"metric": "train_loss", "patience": 9})
    hist = run(spec, tmp_path)
    assert [t for t, _ in tags] == written
    assert tags[0][1] == ["best", "last"]     # the first epoch is the first best
    out = tmp_path / "run" / "checkpoint"
    assert load_checkpoint(out / "last").meta["epoch"] == 5
    best = load_checkpoint(out / "best")      # the best epoch's own weights, though written epochs later
    assert best.meta["epoch"] == hist.best_epoch == min(hist, key=lambda r: r["train_loss"])["epoch"]
    assert best.meta["history"][-1]["epoch"] == hist.best_epoch


def test_a_stop_writes_the_newest_epoch_held_back_by_the_interval(tmp_path, monkeypatch):
    _interrupt_at(monkeypatch, 3 * 5 + 2)    # mid epoch 4; epochs 2 and 3 wait for the interval
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run(tiny_spec(epochs=5, checkpoint_interval=1e9), tmp_path, stream=stream)
    assert "last (epoch 3)" in stream.getvalue(), stream.getvalue()
    assert load_checkpoint(tmp_path / "run" / "checkpoint" / "last").meta["epoch"] == 3
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 3


def test_an_error_writes_the_epochs_held_back_by_the_interval(tmp_path, monkeypatch):
    real, count = SGD.step, {"n": 0}

    def step(self, *a, **k):
        count["n"] += 1
        if count["n"] == 3 * 5 + 2:       # mid epoch 4
            raise ValueError("boom")
        return real(self, *a, **k)
    monkeypatch.setattr(SGD, "step", step)
    with pytest.raises(TrainingError, match="boom"):
        run(tiny_spec(epochs=5, checkpoint_interval=1e9), tmp_path)
    assert load_checkpoint(tmp_path / "run" / "checkpoint" / "last").meta["epoch"] == 3


def _fail_once(monkeypatch, which, epoch, times=1):
    """The save of checkpoint ``which`` at ``epoch`` fails ``times`` times (a transient full disk)."""
    real, failed = ckpt_mod.save_checkpoint, []

    def save(directory, arrays, meta, optimizer_state=None, **kw):
        if directory.name == which and meta["epoch"] == epoch and len(failed) < times:
            failed.append(epoch)
            raise CheckpointError(f"checkpoint {directory} could not be written (No space left on device)")
        return real(directory, arrays, meta, optimizer_state, **kw)
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save)


@pytest.mark.parametrize("times", [1, 2])
def test_a_failed_best_save_is_written_again_before_last_moves_past_it(tmp_path, monkeypatch, times):
    """Epoch 2's best/ fails in the background, epoch 3 is no better: best/ of epoch 2 is written again with last/
    of epoch 3, whose meta names it (not best/ left at epoch 1 behind it). Once: training goes on, with a
    warning; twice: it stops, naming what is on disk."""
    _fail_once(monkeypatch, "best", 2, times)
    real_record = cnngraph.train.run_state.Best.record
    monkeypatch.setattr(cnngraph.train.run_state.Best, "record",
                        lambda self, row: False if row["epoch"] == 3 else real_record(self, row))
    stream = io.StringIO()
    if times == 1:
        run(tiny_spec(epochs=3, checkpoint_interval=0), tmp_path, stream=stream)
        assert "best could not be written (No space left on device); written on a second try" in stream.getvalue()
    else:
        with pytest.raises(TrainingError, match=r"best could not be written .*last \(epoch 3\)"):
            run(tiny_spec(epochs=5, checkpoint_interval=0), tmp_path, stream=stream)
    out = tmp_path / "run" / "checkpoint"
    last, best = load_checkpoint(out / "last").meta, load_checkpoint(out / "best").meta
    assert last["epoch"] == 3 and last["best"]["epoch"] == best["epoch"] == 2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 2 and metrics["epochs_run"] == 3
    assert (metrics["test_accuracy"] is None) is (times == 2)   # a run that went on is tested as usual


def test_a_save_that_failed_unseen_is_retried_before_the_reports_on_a_stop(tmp_path, monkeypatch):
    """Epoch 1's last/ fails in the background, epochs 2-3 wait for the interval, Ctrl-C in epoch 4: the stop
    warns, writes epoch 3, and metrics.json describes the same three epochs."""
    _fail_once(monkeypatch, "last", 1)
    _interrupt_at(monkeypatch, 3 * 5 + 2)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run(tiny_spec(epochs=5, checkpoint_interval=1e9), tmp_path, stream=stream)
    assert "warning: checkpoint" in stream.getvalue() and "last (epoch 3)" in stream.getvalue()
    assert load_checkpoint(tmp_path / "run" / "checkpoint" / "last").meta["epoch"] == 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2, 3]


def test_interrupt_in_the_first_resumed_epoch_names_the_resumed_checkpoint(tmp_path, monkeypatch):
    """Before the first save of a resumed run, the last good checkpoint is the one resumed from."""
    spec = tiny_spec(epochs=3)
    run(spec, tmp_path, "r", epochs=1)
    _interrupt_at(monkeypatch, 2)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        cnngraph.train(spec, resume=tmp_path / "r", epochs=3, stream=stream)
    assert "last good checkpoint" in stream.getvalue() and "(epoch 1)" in stream.getvalue(), stream.getvalue()


def test_interrupt_before_the_first_save_of_a_run_resumed_elsewhere_names_where_the_epoch_is(tmp_path, monkeypatch):
    run(tiny_spec(epochs=2), tmp_path, "a")
    _interrupt_at(monkeypatch, 2)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        cnngraph.train(tiny_spec(epochs=4), out=tmp_path / "b", resume=tmp_path / "a", stream=stream)
    where = tmp_path / "a" / "checkpoint" / "last"
    assert f"last good checkpoint: {where} (epoch 2)" in stream.getvalue()
    assert f"--resume {where} --out {tmp_path / 'b'}`" in stream.getvalue()


def test_interrupt_before_the_first_save_of_a_run_resumed_from_best_names_best(tmp_path, monkeypatch):
    """Resumed from best/ (epoch 1) of a run whose last/ is at epoch 3: before this run saves, its last good
    checkpoint is best/, not last/."""
    monkeypatch.setattr(cnngraph.train.run_state.Best, "record", lambda self, row: (
        setattr(self, "epoch", 1) or True) if row["epoch"] == 1 else False)
    run(tiny_spec(epochs=3), tmp_path, "r")
    assert load_checkpoint(tmp_path / "r" / "checkpoint" / "best").meta["epoch"] == 1
    _interrupt_at(monkeypatch, 2)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        cnngraph.train(tiny_spec(epochs=3), resume=tmp_path / "r" / "checkpoint" / "best", stream=stream)
    assert f"last good checkpoint: {tmp_path / 'r' / 'checkpoint' / 'best'} (epoch 1)" in stream.getvalue()


def test_resume_extends_a_finished_run(tmp_path):
    spec = tiny_spec(schedule={"type": "constant"}, augment=[], epochs=4)
    run(spec, tmp_path, "straight")
    run(spec, tmp_path, "first", epochs=2)
    with pytest.raises(TrainingError, match="already finished epoch 2"):
        cnngraph.train(spec, resume=tmp_path / "first", stream=io.StringIO())   # saved settings: 2 epochs
    cnngraph.train(spec, resume=tmp_path / "first" / "checkpoint", epochs=4, stream=io.StringIO())
    a, b = _params(tmp_path / "straight/checkpoint/last"), _params(tmp_path / "first/checkpoint/last")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_with_a_different_network_is_refused(tmp_path):
    spec = tiny_spec(epochs=1)
    run(spec, tmp_path)
    other = copy.deepcopy(spec)
    other["layers"][4]["out_features"] = 32
    with pytest.raises(CheckpointError, match=r"layer 'fc1'.*out_features"):
        cnngraph.train(other, resume=tmp_path / "run", epochs=2, stream=io.StringIO())
    # a changed train section alone is allowed, with a note
    changed = copy.deepcopy(spec)
    changed["train"]["optimizer"]["lr"] = 0.05
    stream = io.StringIO()
    assert len(cnngraph.train(changed, resume=tmp_path / "run", epochs=2, stream=stream)) == 2
    assert "changed train section (train.optimizer)" in stream.getvalue()
    # when checkpoints are written changes nothing trained: no note
    changed["train"]["checkpoint_interval"] = 0
    stream = io.StringIO()
    assert len(cnngraph.train(changed, resume=tmp_path / "run", epochs=3, stream=stream)) == 3
    assert "changed train section" not in stream.getvalue()
    del changed["train"]["checkpoint_interval"]     # the checkpoint's spec had it this time
    stream = io.StringIO()
    assert len(cnngraph.train(changed, resume=tmp_path / "run", epochs=4, stream=stream)) == 4
    assert "changed train section" not in stream.getvalue()


def test_interrupted_save_keeps_previous_checkpoints(tmp_path, monkeypatch):
    real = ckpt_mod.atomic_write
    metas = {"n": 0}

    def atomic_write(directory, tag, final, write):
        if tag == "meta":
            metas["n"] += 1
            if metas["n"] == 3:          # the commit of the first save of epoch 2
                raise KeyboardInterrupt
        return real(directory, tag, final, write)
    monkeypatch.setattr(ckpt_mod, "atomic_write", atomic_write)
    # epoch 2's save is the last, so no later one replaces what the interrupted one left
    spec = tiny_spec(epochs=2, early_stopping={"metric": "train_loss", "patience": 3}, checkpoint_interval=0)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path, stream=stream)
    assert "last good checkpoint" in stream.getvalue() and "(epoch 1)" in stream.getvalue()
    for which in ("best", "last"):
        ck = load_checkpoint(tmp_path / "run" / "checkpoint" / which)
        assert ck.meta["epoch"] == 1
    assert load_model(tmp_path / "run").param_count() > 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == "interrupted"


def test_early_stopping_stops(tmp_path):
    stream = io.StringIO()
    hist = run(tiny_spec(epochs=10, early_stopping={"metric": "val_accuracy", "patience": 2}), tmp_path,
               lr=0.0, stream=stream)
    assert len(hist) == 3 and hist.stopped == "early_stopping" and hist.best_epoch == 1
    assert re.search(r"early stopping: val_accuracy did not improve on 0\.\d{4} for 2 epochs \(best checkpoint: "
                     r"epoch 1\)\n", stream.getvalue())


def test_resume_of_an_early_stopped_run_is_refused_unless_patience_is_raised(tmp_path):
    """Like a completed run: resuming would train one epoch and stop again. Raising the patience in the
    spec (spec edits win on resume) lets it go on."""
    spec = tiny_spec(epochs=10, early_stopping={"metric": "val_accuracy", "patience": 2})
    assert run(spec, tmp_path, lr=0.0).stopped == "early_stopping"
    with pytest.raises(TrainingError, match=r"the run already finished: it stopped by early stopping at epoch 3 "
                                            r"\(val_accuracy did not improve on epoch 1 for 2 epochs, patience 2\); "
                                            r"to train further raise train.early_stopping.patience"):
        cnngraph.train(spec, resume=tmp_path / "run", stream=io.StringIO())
    with pytest.raises(TrainingError, match="stopped by early stopping"):     # more epochs do not change that
        cnngraph.train(spec, resume=tmp_path / "run", epochs=20, stream=io.StringIO())
    patient = tiny_spec(epochs=10, early_stopping={"metric": "val_accuracy", "patience": 3})
    hist = cnngraph.train(patient, resume=tmp_path / "run", lr=0.0, stream=io.StringIO())
    assert len(hist) == 4 and hist.stopped == "early_stopping"


def test_top_k_early_stopping_metric_with_too_few_classes_says_why(tmp_path):
    """val_top10_accuracy passes validate (top_k: 10) but is not measured for 10 classes: the message says
    so instead of calling it unknown."""
    with pytest.raises(SpecError, match=r"train.early_stopping.metric: early-stopping metric 'val_top10_accuracy' "
                                        r"needs more than 10 classes \(with 10 or fewer it is always 1"):
        run(tiny_spec(top_k=10, early_stopping={"metric": "val_top10_accuracy"}), tmp_path)


def test_an_early_stopping_metric_the_kind_of_targets_never_records_fails_validation(tmp_path):
    """val_mae for a classifier (known from the loss or the dataset) is refused when the spec is loaded, not
    only once training has loaded the data; where the spec cannot tell (mse on npz), training decides."""
    with pytest.raises(SpecError, match=r"train.early_stopping.metric: unknown early-stopping metric 'val_mae' for "
                                        r"class labels \(loss cross_entropy\); expected one of train_loss, "
                                        r"train_accuracy, val_loss, val_accuracy, val_top3_accuracy"):
        cnngraph.load_spec(tiny_spec(early_stopping={"metric": "val_mae"}))
    with pytest.raises(SpecError, match=r"'val_rmse' for class labels \(dataset 'digits'\)"):
        cnngraph.load_spec(tiny_spec(loss={"type": "mse", "output": "logits"}, early_stopping={"metric": "val_rmse"}))
    with pytest.raises(SpecError, match="'val_accuracy' for values to regress"):
        cnngraph.load_spec(tiny_spec(data={"dataset": "npz", "path": "d.npz", "targets": "values"},
                                     loss={"type": "mse", "output": "logits"},
                                     early_stopping={"metric": "val_accuracy"}))
    cnngraph.load_spec(tiny_spec(data={"dataset": "npz", "path": "d.npz"}, loss={"type": "mse", "output": "logits"},
                                 early_stopping={"metric": "val_mae"}))


def test_unknown_early_stopping_metric_is_located(tmp_path):
    with pytest.raises(SpecError, match="early_stopping.*val_acc.*expected one of"):
        run(tiny_spec(early_stopping={"metric": "val_acc"}), tmp_path)


def test_nan_names_the_first_non_finite_layer(tmp_path, monkeypatch):
    real = cnngraph.model.Model._init_params

    def init(self, rng):
        arrays = real(self, rng)
        arrays["fc1.weight"][0, 0] = np.inf
        return arrays
    monkeypatch.setattr(cnngraph.model.Model, "_init_params", init)
    with pytest.raises(TrainingError) as exc:
        run(tiny_spec(), tmp_path)
    msg = str(exc.value)
    assert "epoch 1, step 1" in msg and "'fc1' (dense)" in msg and "fc1.weight" in msg
    assert "no checkpoint was saved yet" in msg.lower()


def test_a_conv_with_nan_weights_before_a_max_pool_stops_training(tmp_path, monkeypatch):
    """All of conv1's outputs NaN: the max pool after it must pass NaN on (oneDNN's alone would give -3.4e38,
    the relu 0, and the loss would stay finite while nothing learns)."""
    real = cnngraph.model.Model._init_params

    def init(self, rng):
        arrays = real(self, rng)
        arrays["conv1.weight"][0, 0, 0, 0] = np.nan
        return arrays
    monkeypatch.setattr(cnngraph.model.Model, "_init_params", init)
    with pytest.raises(TrainingError) as exc:
        run(tiny_spec(), tmp_path)
    assert "epoch 1, step 1" in str(exc.value) and "'conv1'" in str(exc.value)


def test_huge_lr_diverges_with_a_message(tmp_path):
    with pytest.raises(TrainingError, match=r"diverged at epoch .*first layer whose output became non-finite is "
                                            r"'\w+'.*(Last good|No) checkpoint"):
        run(tiny_spec(augment=[], epochs=3), tmp_path, lr=1e30)


def test_one_epoch_matches_torch(tmp_path):
    """Same initial weights, batch order and SGD: the loop's weights after an epoch equal torch's."""
    spec = {"name": "lin", "inputs": {"image": {"shape": [1, 8, 8]}},
            "layers": [{"id": "flat", "type": "flatten"}, {"id": "fc", "type": "dense", "out_features": 10}],
            "outputs": ["fc"],
            "train": {"data": {"dataset": "digits", "limit": 96}, "optimizer": {"type": "sgd", "lr": 0.1,
                      "momentum": 0.9, "weight_decay": 1e-3}, "loss": {"type": "cross_entropy",
                      "label_smoothing": 0.1}, "batch_size": 40, "epochs": 1, "seed": 5}}
    init = cnngraph.compile(spec, seed=5).params.numpy()
    run(spec, tmp_path)
    got = _params(tmp_path / "run/checkpoint/last")
    from cnngraph.train.data import load_dataset
    ds = load_dataset({"dataset": "digits", "limit": 96}, (1, 8, 8), seed=5)
    x, y = torch.from_numpy(ds.train[0]).flatten(1), torch.from_numpy(ds.train[1])
    lin = torch.nn.Linear(64, 10)
    with torch.no_grad():
        w = init["fc.weight"]
        lin.weight.copy_(torch.from_numpy(w if w.shape == (10, 64) else w.T))
        lin.bias.copy_(torch.from_numpy(init["fc.bias"]))
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    order = np.random.default_rng([5, 1]).permutation(96)
    for s in range(0, 96, 40):
        idx = torch.from_numpy(order[s:s + 40])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(x[idx]), y[idx], label_smoothing=0.1).backward()
        opt.step()
    w = got["fc.weight"]
    np.testing.assert_allclose(w if w.shape == (10, 64) else w.T, lin.weight.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(got["fc.bias"], lin.bias.detach().numpy(), atol=1e-5)


def test_binary_and_mse_losses_train(tmp_path):
    spec = tiny_spec(epochs=1, loss={"type": "mse", "output": "logits"}, augment=[])
    hist = run(spec, tmp_path, "mse")
    assert np.isfinite(hist[0]["train_loss"]) and hist.test is not None
    bad = tiny_spec(loss={"type": "cross_entropy", "target": "onehot"})
    with pytest.raises(SpecError, match="unknown target encoding 'onehot'"):
        run(bad, tmp_path, "bad")


def test_output_units_must_match_classes(tmp_path):
    spec = tiny_spec()
    spec["layers"][-1]["out_features"] = 7
    with pytest.raises(TrainingError, match="7 units per sample but the dataset has 10 classes"):
        run(spec, tmp_path)


def test_spec_without_train_section(tmp_path):
    spec = tiny_spec()
    del spec["train"]
    hist = run(spec, tmp_path, epochs=1, data={"dataset": "digits", "limit": 64})
    assert len(hist) == 1
    spec["inputs"]["image"]["shape"] = [3, 8, 8]
    with pytest.raises(TrainingError, match="no train: section.*digits"):
        run(spec, tmp_path, "other")


def test_model_save_then_load_model(tmp_path):
    model = cnngraph.compile(tiny_spec(), seed=1)
    model.save(tmp_path / "m")
    back = load_model(tmp_path / "m")
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x), back.predict(x))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_model(tmp_path)


def test_a_trained_model_saved_again_keeps_its_data_preparation(tmp_path, capsys):
    """load_model(run).save(dir) keeps mean/std/classes: predict answers the same from both."""
    from cnngraph.cli import main
    spec = tiny_spec(epochs=1, augment=[])
    run(spec, tmp_path, "r")
    model = load_model(tmp_path / "r")
    model.save(tmp_path / "copy")
    assert load_checkpoint(tmp_path / "copy").meta["dataset"] == model.checkpoint_meta["dataset"]
    (tmp_path / "tiny.json").write_text(json.dumps(spec))
    x = (np.random.default_rng(0).random((3, 1, 8, 8)) * 16).astype(np.float32)   # raw pixels, as the data
    np.save(tmp_path / "x.npy", x)
    answers = []
    for ckpt in ("r", "copy"):
        capsys.readouterr()
        assert main(["predict", str(tmp_path / "tiny.json"), "--checkpoint", str(tmp_path / ckpt),
                     str(tmp_path / "x.npy")]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and "note" not in answers[1]


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")   # a wide terminal shows every field (test_progress.py: narrow ones)
    stream = _Tty()
    run(tiny_spec(epochs=2), tmp_path, stream=stream)
    text = stream.getvalue()
    assert "\r" in text and "[" in text and "img/s" in text and "5/5" in text   # running bar, redrawn in place
    finals = [l.split("\r")[-1] for l in text.split("\n") if "\r" in l]
    assert [f.split()[1] for f in finals if f.startswith("epoch")] == ["1/2", "2/2"]
    assert all("val_acc" in f for f in finals if f.startswith("epoch"))


def test_quiet_prints_nothing(tmp_path):
    stream = io.StringIO()
    run(tiny_spec(epochs=1), tmp_path, stream=stream, quiet=True)
    assert stream.getvalue() == ""


def test_best_selection_ties_and_patience():
    from cnngraph.train.run_state import Best as _Best
    b = _Best("val_accuracy", maximize=True, patience=2)
    assert b.update(0.9, 1, tiebreak=0.5)
    assert b.update(0.9, 2, tiebreak=0.4)          # same accuracy, lower loss: new best checkpoint...
    assert b.epoch == 2 and b.bad_epochs == 1      # ...but no progress for early stopping
    assert not b.update(0.9, 3, tiebreak=0.45)
    assert b.should_stop and b.epoch == 2
    low = _Best("val_loss", maximize=False, min_delta=0.1)
    assert low.update(1.0, 1) and not low.update(0.95, 2) and low.update(0.85, 3) and low.epoch == 3


def test_blas_thread_limit_is_scoped(tmp_path, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cnngraph.train.loop import _blas_threads

    def counts():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = counts()
    monkeypatch.setenv("CNNGRAPH_BLAS_THREADS", "1")
    with _blas_threads():
        assert all(n == 1 for n in counts())
    assert counts() == before
    run(tiny_spec(epochs=1, data={"dataset": "digits", "limit": 64}), tmp_path)
    assert counts() == before                      # restored after training
    monkeypatch.setenv("CNNGRAPH_BLAS_THREADS", "two")
    with pytest.raises(TrainingError, match="CNNGRAPH_BLAS_THREADS must be a whole number"):
        run(tiny_spec(epochs=1), tmp_path)


def test_nan_names_the_layer_that_overflows_with_finite_weights(tmp_path, monkeypatch):
    """fc1's weights are finite but so large (3e38, near float32's max) that fc1's output overflows;
    conv1/act1/pool/flat before it stay finite, so fc1 (not a later layer, not a parameter) is named."""
    real = cnngraph.model.Model._init_params

    def init(self, rng):
        arrays = real(self, rng)
        arrays["fc1.weight"][:] = 3e38
        return arrays
    monkeypatch.setattr(cnngraph.model.Model, "_init_params", init)
    with pytest.raises(TrainingError) as exc:
        run(tiny_spec(augment=[]), tmp_path)
    msg = str(exc.value)
    assert "epoch 1, step 1" in msg and "first layer whose output became non-finite is 'fc1' (dense)" in msg
    assert "already hold" not in msg


def wide_spec(tmp_path, **train):
    """A 32x32 conv net whose batch of 64 the conv kernels split into several chunks (worker threads)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8),
             y=rng.integers(0, 4, 128))
    t = {"data": {"dataset": "npz", "path": str(tmp_path / "d.npz")}, "batch_size": 64, "epochs": 3,
         "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}}
    t.update(train)
    return {"name": "wide", "inputs": {"image": {"shape": [3, 32, 32]}},
            "layers": [{"id": "conv1", "type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1},
                       {"id": "act1", "type": "relu"},
                       {"id": "conv2", "type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1},
                       {"id": "flat", "type": "flatten"}, {"id": "logits", "type": "dense", "out_features": 4}],
            "outputs": ["logits"], "train": t}


def test_interrupt_then_resume_is_bit_for_bit_with_threaded_conv_kernels(tmp_path, monkeypatch):
    spec = wide_spec(tmp_path, epochs=2)
    straight = run(spec, tmp_path, "straight")
    _interrupt_at(monkeypatch, 3)       # epoch 2, step 1 (about 108 train images, batch 64: 2 steps)
    with pytest.raises(KeyboardInterrupt):
        run(spec, tmp_path, "split")
    monkeypatch.undo()
    cnngraph.train(spec, resume=tmp_path / "split", stream=io.StringIO())
    a, b = _params(tmp_path / "straight/checkpoint/last"), _params(tmp_path / "split/checkpoint/last")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert straight[-1]["epoch"] == 2


def test_divergence_in_kernel_worker_threads_does_not_warn(tmp_path):
    """A diverging 32x32 conv net (several batch chunks, so the conv kernels run on worker threads,
    where np.errstate does not reach) reports the divergence without NumPy RuntimeWarnings."""
    import warnings
    spec = wide_spec(tmp_path, optimizer={"type": "sgd", "lr": 1e30})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingError, match="diverged"):
            run(spec, tmp_path)
    assert [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)] == []


def test_resume_with_more_epochs_notes_an_epoch_dependent_schedule(tmp_path):
    # cosine over 2 epochs vs over 4: the learning rate of epoch 2 differs, so the run is not a straight one
    run(tiny_spec(augment=[], epochs=2), tmp_path, "cos")
    stream = io.StringIO()
    cnngraph.train(tiny_spec(augment=[], epochs=2), resume=tmp_path / "cos", epochs=4, stream=stream)
    assert "'cosine' learning-rate schedule depends on the number of epochs; epochs 1-2 ran on a schedule for 2 epochs" \
        in stream.getvalue()
    # a constant schedule does not depend on it: no note (test_resume_extends_a_finished_run checks equality)
    spec = tiny_spec(augment=[], epochs=2, schedule={"type": "constant"})
    run(spec, tmp_path, "const")
    stream = io.StringIO()
    cnngraph.train(spec, resume=tmp_path / "const", epochs=4, stream=stream)
    assert "schedule depends" not in stream.getvalue()


def test_ctrl_c_during_the_final_test_evaluation_is_reported(tmp_path, monkeypatch):
    from cnngraph.train import loop

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(loop._Run, "_test", interrupted)
    stream = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        run(tiny_spec(epochs=2), tmp_path, stream=stream)
    assert "interrupted: training stopped cleanly; last good checkpoint" in stream.getvalue()
    assert "(epoch 2)" in stream.getvalue()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["stopped"] == "interrupted" and len(m["history"]) == 2


def test_fewer_epochs_than_the_warmup_shorten_it_in_proportion(tmp_path):
    spec = tiny_spec(epochs=4, schedule={"type": "cosine", "warmup_epochs": 2})
    stream = io.StringIO()
    hist = run(spec, tmp_path, epochs=1, stream=stream)
    assert len(hist) == 1
    assert "warmup shortened to 0.5 epochs, the same share of the run" in stream.getvalue()
    # the spec's own numbers disagree: a located spec problem, found by validate already
    with pytest.raises(SpecError, match=r"train.schedule.warmup_epochs: warmup_epochs \(2\) must be less than "
                                        r"train.epochs \(2\)") as e:
        cnngraph.load_spec(tiny_spec(epochs=2, schedule={"type": "cosine", "warmup_epochs": 2}))
    assert len(e.value.problems) == 1


def test_a_warmup_longer_than_the_default_epochs_is_refused_not_shortened_to_the_run(tmp_path):
    """Without train.epochs (20 by default) a warmup of 25 passes validate; --epochs 5 cannot shorten it in
    proportion (6.25 epochs, still the whole run): refused naming the flag and the key."""
    spec = tiny_spec(schedule={"type": "cosine", "warmup_epochs": 25})
    del spec["train"]["epochs"]
    with pytest.raises(SpecError, match=r"warmup_epochs: warmup_epochs \(25\) must be less than the run's 5 epochs "
                                        r"\(--epochs or train.epochs, 20 in the spec by default\)"):
        run(spec, tmp_path, epochs=5)


def test_a_new_run_never_overwrites_an_earlier_one(tmp_path):
    spec = tiny_spec(epochs=1)
    run(spec, tmp_path, name="r")
    first = json.loads((tmp_path / "r" / "metrics.json").read_text())
    stream = io.StringIO()
    run(tiny_spec(epochs=2), tmp_path, name="r", stream=stream)
    assert f"{tmp_path / 'r'} held an earlier run; it is kept as {tmp_path / 'r.1'}" in stream.getvalue()
    assert json.loads((tmp_path / "r.1" / "metrics.json").read_text()) == first
    assert load_checkpoint(tmp_path / "r.1" / "checkpoint" / "last").meta["epoch"] == 1
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs_run"] == 2
    run(spec, tmp_path, name="r", stream=io.StringIO())                 # the next one goes to r.2
    assert (tmp_path / "r.2" / "metrics.json").is_file()
    resumed = cnngraph.train(spec, resume=tmp_path / "r", epochs=3, stream=io.StringIO())   # keeps its folder
    assert resumed.out == tmp_path / "r" and not (tmp_path / "r.3").exists()


def test_a_sigmoid_output_layer_trains_on_its_logits_with_binary_cross_entropy(tmp_path):
    spec = tiny_spec(epochs=3, loss={"type": "binary_cross_entropy", "output": "prob"},
                     optimizer={"type": "adam", "lr": 0.01})
    spec["layers"].append({"id": "prob", "type": "sigmoid"})
    spec["outputs"] = ["prob"]
    stream = io.StringIO()
    hist = run(spec, tmp_path, stream=stream)
    assert "computed from 'logits', the input of the sigmoid layer 'prob'" in stream.getvalue()
    # a sigmoid applied twice keeps every probability above 0.5: the 9 negatives of 10 units alone
    # would hold the mean loss above 0.9 * ln 2 = 0.62
    assert hist[-1]["train_loss"] < 0.6


def test_top_k_beyond_the_classes_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"top_k \(11\) is more than the 10 classes"):
        run(tiny_spec(top_k=11), tmp_path)


def test_a_single_leftover_sample_joins_the_last_batch_so_feature_batch_norm_trains(tmp_path):
    """33 training images at batch 32: one step of 33, not a step of 32 and a step of 1 (whose batch
    statistics over one value per channel do not exist)."""
    from cnngraph.train.loop import epoch_steps
    assert [epoch_steps(n, 32) for n in (1, 31, 32, 33, 34, 65)] == [1, 1, 1, 1, 2, 2]
    spec = tiny_spec(epochs=1, data={"dataset": "digits", "limit": 33}, augment=[])
    spec["layers"].insert(5, {"id": "bn", "type": "batch_norm2d"})    # on the dense layer's (24,) features
    hist = run(spec, tmp_path)
    assert np.isfinite(hist[0]["train_loss"])


def test_no_top_k_metric_where_k_covers_every_class(tmp_path):
    """A binary classifier's top-3 accuracy would always be 1.0: it is not computed or shown."""
    from cnngraph.train.metrics import effective_top_k
    assert [effective_top_k(3, n) for n in (2, 3, 4, 10)] == [1, 1, 3, 3]
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
    np.savez(tmp_path / "two.npz", x=x, y=y)
    spec = tiny_spec(epochs=1, augment=[], data={"dataset": "npz", "path": str(tmp_path / "two.npz"),
                                                 "test_fraction": 0.25},
                     loss={"type": "binary_cross_entropy", "output": "logits"})
    spec["layers"][-1]["out_features"] = 1
    hist = run(spec, tmp_path)
    assert "val_accuracy" in hist[0] and not any("top" in k for k in hist[0]) and not any("top" in k for k in hist.test)


def test_a_closed_message_stream_does_not_stop_the_run(tmp_path):
    """`cnngraph train ... 2>&1 | head -2`: once the pipe closes, messages are dropped and the run still finishes
    and saves (it used to end at the first failed message with nothing saved and exit 0)."""
    class ClosingPipe(io.StringIO):
        def write(self, text):
            if len(self.getvalue()) > 10:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

    hist = cnngraph.train(tiny_spec(epochs=2), out=tmp_path / "run", stream=ClosingPipe())
    assert len(hist) == 2 and (tmp_path / "run" / "metrics.json").exists()
    assert (tmp_path / "run" / "checkpoint" / "best").is_dir()


@pytest.mark.parametrize("n, batch_size, expected", [(270, 64, 270), (320, 64, 320), (321, 64, 256), (100, 64, 256),
                                                     (600, 512, 600), (641, 512, 512)])
def test_validation_takes_a_split_a_quarter_above_its_batch_in_one_pass(n, batch_size, expected):
    from types import SimpleNamespace
    from cnngraph.train.loop import eval_batch
    assert eval_batch((None, np.zeros(n)), SimpleNamespace(batch_size=batch_size)) == expected
