"""A run's folder and data stay safe: resuming into a folder with another run, two runs on one folder,
a full disk, edited specs and hand-edited checkpoints, held-out files to evaluate."""
import errno
import io
import json
import os
import re
import stat

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import CheckpointError, DataError
from cnngraph.train import checkpoint as ckpt_mod
from cnngraph.train.loop import TrainingError
from cnngraph.train.runlock import RunLock


def spec(**train):
    t = {"data": {"dataset": "digits", "limit": 96}, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
         "batch_size": 32, "epochs": 2, "seed": 1}
    t.update(train)
    return {"name": "safe", "inputs": {"image": {"shape": [1, 8, 8]}},
            "layers": [{"id": "flat", "type": "flatten"}, {"id": "fc", "type": "dense", "out_features": 16},
                       {"id": "act", "type": "relu"}, {"id": "logits", "type": "dense", "out_features": 10}],
            "outputs": ["logits"], "train": t}


def train(tmp_path, out, s=None, **kw):
    stream = kw.pop("stream", io.StringIO())
    return cnngraph.train(s or spec(), out=tmp_path / out, stream=stream, **kw)


def meta_of(folder):
    return json.loads((folder / "meta.json").read_text())["meta"]


def test_resuming_into_a_folder_with_another_run_keeps_that_run_whole(tmp_path):
    train(tmp_path, "victim", seed=5)
    train(tmp_path, "other", epochs=2)
    log = io.StringIO()
    train(tmp_path, "victim", resume=tmp_path / "other", epochs=3, stream=log)
    kept = tmp_path / "victim.1" / "checkpoint"
    assert meta_of(kept / "best")["settings"]["seed"] == 5 and meta_of(kept / "last")["settings"]["seed"] == 5
    assert meta_of(tmp_path / "victim" / "checkpoint" / "best")["settings"]["seed"] == 1
    assert "held an earlier run; it is kept as" in log.getvalue()
    # an empty --out: no earlier run to keep, none claimed
    log = io.StringIO()
    train(tmp_path, "fresh", resume=tmp_path / "other", epochs=3, stream=log)
    assert "held an earlier run" not in log.getvalue() and not (tmp_path / "fresh.1").exists()
    assert (tmp_path / "fresh" / "checkpoint" / "best" / "meta.json").is_file()


def test_a_folder_in_use_by_another_run_is_refused_and_left_alone(tmp_path):
    train(tmp_path, "busy")
    lock = RunLock(tmp_path / "busy")
    assert lock.acquire() is None          # as a running training would hold it
    try:
        with pytest.raises(TrainingError, match=rf"busy is in use by another training run \(PID {os.getpid()}\)"):
            train(tmp_path, "busy")
    finally:
        lock.release()
    assert not (tmp_path / "busy.1").exists()   # not renamed under the running run
    train(tmp_path, "busy")                     # released: the next run goes ahead
    assert (tmp_path / "busy.1").is_dir()


def test_a_full_disk_stops_with_the_last_good_checkpoint_named(tmp_path, monkeypatch):
    real = ckpt_mod._write_npz
    calls = {"n": 0}

    def full(directory, part, arrays):
        calls["n"] += 1
        if calls["n"] > 2:        # epoch 1 wrote best/ (two files; last/ links them), then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(directory, part, arrays)
    monkeypatch.setattr(ckpt_mod, "_write_npz", full)
    with pytest.raises(TrainingError, match=r"could not be written \(No space left on device\).*last good checkpoint: "
                                            r".*last \(epoch 1\). Resume with `cnngraph train"):
        train(tmp_path, "run", epochs=3)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == "failed"
    assert meta_of(tmp_path / "run" / "checkpoint" / "last")["epoch"] == 1


def test_resume_takes_values_edited_in_the_spec_and_says_what_differs(tmp_path):
    train(tmp_path, "run", epochs=2)
    log = io.StringIO()
    edited = spec(optimizer={"type": "sgd", "lr": 0.01, "momentum": 0.9})
    hist = train(tmp_path, "run", s=edited, resume=tmp_path / "run", epochs=3, stream=log)
    assert hist[-1]["lr"] == pytest.approx(0.01)
    assert "resuming with lr 0.01 (was 0.05)" in log.getvalue()
    log = io.StringIO()
    train(tmp_path, "run", resume=tmp_path / "run", epochs=4, batch_size=16, stream=log)
    assert "resuming with batch_size 16 (was 32)" in log.getvalue()


@pytest.mark.parametrize("key, value, expected", [
    ("epoch", "abc", r"meta.epoch: expected a whole number >= 0"),
    ("epoch", -5, r"meta.epoch: expected a whole number >= 0 \(the epochs trained\), found -5"),
    ("rng", {"a": 1}, r"meta.rng: expected the generators' states"),
    ("history", 5, r"meta.history: expected a list of per-epoch records, found 5"),
])
def test_hand_edited_checkpoint_meta_is_named_not_a_traceback(tmp_path, key, value, expected):
    train(tmp_path, "run")
    path = tmp_path / "run" / "checkpoint" / "last" / "meta.json"
    record = json.loads(path.read_text())
    record["meta"][key] = value
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=expected):
        train(tmp_path, "run", resume=tmp_path / "run", epochs=3)


@pytest.mark.parametrize("key, value, expected", [
    ("settings.batch_size", -3, r"meta.settings.batch_size: expected a whole number >= 1, found -3"),
    ("settings", None, r"meta.settings: expected the run's settings \{epochs, batch_size, lr, seed, data\}"),
    ("dataset.mean", [0.1, 0.2], r"meta.dataset.mean: expected 1 value \(the input has one channel\), "
                                 r"found \[0.1, 0.2\]"),
    ("dataset.std", [0.0], r"meta.dataset.std: expected values > 0, found \[0.0\]"),
])
def test_hand_edited_settings_and_dataset_meta_are_named_by_every_command(tmp_path, capsys, key, value, expected):
    """evaluate, predict, explain and resume read meta.settings / meta.dataset: a bad value is named with
    the file and key (a missing settings no longer falls back to the spec's data, a std of 0 no longer
    gives NaN predictions)."""
    train(tmp_path, "run")
    for which in ("best", "last"):
        path = tmp_path / "run" / "checkpoint" / which / "meta.json"
        record = json.loads(path.read_text())
        section, _, name = key.rpartition(".")
        target = record["meta"][section] if section else record["meta"]
        if value is None:
            del target[name]
        else:
            target[name] = value
        path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"last/meta.json: " + expected):
        train(tmp_path, "run", resume=tmp_path / "run", epochs=3)
    (tmp_path / "s.json").write_text(json.dumps(spec()))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    for argv in (["evaluate", str(tmp_path / "s.json"), "--checkpoint", str(tmp_path / "run")],
                 ["predict", str(tmp_path / "s.json"), "--checkpoint", str(tmp_path / "run"), str(tmp_path / "x.npy")],
                 ["explain", str(tmp_path / "s.json"), "--checkpoint", str(tmp_path / "run"), "--image",
                  str(tmp_path / "x.npy"), "-o", str(tmp_path / "e.png")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert re.search(r"best/meta.json: " + expected, err) and err.count("\n") == 1, (argv, err)
    with pytest.raises(CheckpointError, match=expected):
        cnngraph.load_model(tmp_path / "run")


def test_a_run_on_a_plugin_dataset_predicts_without_its_plugin(tmp_path, capsys):
    """meta.settings.data naming a dataset no loaded plugin provides is not a damaged meta: predict,
    explain and load_model need no data; evaluate and resume name the dataset (or take --data)."""
    train(tmp_path, "run")
    for which in ("best", "last"):
        path = tmp_path / "run" / "checkpoint" / which / "meta.json"
        record = json.loads(path.read_text())
        record["meta"]["settings"]["data"] = {"dataset": "stripes_from_a_plugin", "options": {"n": 3}}
        path.write_text(json.dumps(record))
    (tmp_path / "s.json").write_text(json.dumps(spec()))
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    run, s = str(tmp_path / "run"), str(tmp_path / "s.json")
    assert main(["predict", s, "--checkpoint", run, str(tmp_path / "x.npy")]) == 0
    capsys.readouterr()
    main(["explain", s, "--checkpoint", run, "--image", str(tmp_path / "x.npy"), "-o", str(tmp_path / "e.png")])
    assert "meta" not in capsys.readouterr().err   # (this model has no convolution to explain)
    cnngraph.load_model(tmp_path / "run")
    expected = "the checkpoint was trained on dataset 'stripes_from_a_plugin', which no loaded plugin provides"
    assert main(["evaluate", s, "--checkpoint", run]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err, err
    with pytest.raises(DataError, match=expected):
        train(tmp_path, "run", resume=tmp_path / "run", epochs=3)
    assert main(["evaluate", s, "--checkpoint", run, "--data", "digits"]) == 0


def test_resume_without_last_says_it_starts_from_best(tmp_path):
    import shutil
    train(tmp_path, "run")
    shutil.rmtree(tmp_path / "run" / "checkpoint" / "last")
    log = io.StringIO()
    train(tmp_path, "run", resume=tmp_path / "run", epochs=3, stream=log)
    assert "checkpoint/last is missing; resuming from the best checkpoint (epoch" in log.getvalue()


def test_checkpoint_files_follow_the_umask(tmp_path):
    train(tmp_path, "run")
    for f in (tmp_path / "run" / "checkpoint" / "best").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == ckpt_mod.FILE_MODE == 0o666 & ~_umask(), f


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_evaluate_a_held_out_file_whole_even_with_fewer_classes(tmp_path, capsys):
    train(tmp_path, "run")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "held.npz", x=rng.integers(0, 17, (40, 1, 8, 8)).astype(np.float32),
             y=rng.integers(0, 3, 40))
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(spec()))
    assert main(["evaluate", str(spec_file), "--checkpoint", str(tmp_path / "run"), "--data",
                 f"npz:{tmp_path / 'held.npz'}", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 40 and len(out["classes"]) == 10 and np.asarray(out["confusion"]).sum() == 40


def test_one_class_and_empty_inputs_are_refused_clearly(tmp_path, capsys):
    np.savez(tmp_path / "one.npz", x=np.zeros((20, 1, 8, 8), np.float32), y=np.zeros(20, np.int64))
    with pytest.raises(DataError, match=r"has 1 class \(0\); a classifier needs at least 2"):
        train(tmp_path, "one", data=f"npz:{tmp_path / 'one.npz'}")
    train(tmp_path, "run")
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(spec()))
    assert main(["predict", str(spec_file), "--checkpoint", str(tmp_path / "run"), str(tmp_path / "empty.npy")]) == 1
    assert "holds no images (shape (0, 1, 8, 8)); expected at least one" in capsys.readouterr().err


def test_the_lock_on_filesystems_without_locks_and_on_another_users_lock_file(tmp_path, monkeypatch):
    import errno as errno_mod
    import fcntl
    from cnngraph.train import runlock
    lock = RunLock(tmp_path)
    assert lock.acquire() is None
    try:   # held: a second opener (read-only, as for another user's file) sees the holder
        assert runlock.holder(tmp_path) == f"PID {os.getpid()}"
    finally:
        lock.release()
    real = fcntl.flock

    def no_locks(fd, op):
        raise OSError(errno_mod.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = RunLock(tmp_path)
    assert lock.acquire() is None and "does not support file locks" in lock.unlocked_why
    assert runlock.holder(tmp_path) is None
    monkeypatch.setattr(fcntl, "flock", real)


def test_a_checkpoint_is_saved_where_modes_cannot_be_set(tmp_path, monkeypatch):
    """FAT/exFAT refuse chmod: the checkpoint is still written, and no file descriptor leaks."""
    def refuse(fd, mode):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(ckpt_mod.os, "fchmod", refuse)
    ckpt_mod.save_checkpoint(tmp_path / "c", {"w": np.ones(3, np.float32)}, {"epoch": 1})
    assert ckpt_mod.load_checkpoint(tmp_path / "c").meta["epoch"] == 1


def test_resuming_an_older_checkpoint_without_the_newer_data_keys_is_not_called_changed(tmp_path):
    train(tmp_path, "run")
    path = tmp_path / "run" / "checkpoint" / "last" / "meta.json"
    record = json.loads(path.read_text())
    for key in ("targets", "ignore_label", "options"):
        record["meta"]["settings"]["data"].pop(key, None)
    path.write_text(json.dumps(record))
    log = io.StringIO()
    train(tmp_path, "run", resume=tmp_path / "run", epochs=3, stream=log)
    assert "not bit-for-bit" not in log.getvalue()
