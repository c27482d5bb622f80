"""User data is never lost or corrupted: concurrent saves, Model.save onto runs and other folders, full disks
while writing the reports, --out folders and spec names, an interrupted first save, SIGTERM/SIGHUP."""
import io
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import CheckpointError, SpecError
from cnngraph.train import checkpoint as ckpt_mod
from cnngraph.train.checkpoint import load_checkpoint, save_checkpoint
from cnngraph.train.loop import Terminated, TrainingError

NET = {"name": "safe", "inputs": {"image": {"shape": [1, 8, 8]}},
       "layers": [{"id": "flat", "type": "flatten"}, {"id": "fc", "type": "dense", "out_features": 16},
                  {"id": "act", "type": "relu"}, {"id": "logits", "type": "dense", "out_features": 10}],
       "outputs": ["logits"]}


def spec(name="safe", **train):
    t = {"data": {"dataset": "digits", "limit": 96}, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
         "batch_size": 32, "epochs": 2, "seed": 1}
    t.update(train)
    return {**NET, "name": name, "train": t}


def train(out, s=None, **kw):
    kw.setdefault("stream", io.StringIO())
    return cnngraph.train(s or spec(), out=out, **kw)


def meta_of(folder):
    return json.loads((folder / "meta.json").read_text())["meta"]


# --- 2: concurrent saves into one folder -------------------------------------------------------------------

def test_concurrent_saves_into_one_folder_run_one_after_the_other(tmp_path, monkeypatch):
    d = tmp_path / "ck"
    save_checkpoint(d, {"w": np.zeros(3)}, {"who": "before"})
    real, wrote, go = ckpt_mod._write_npz, threading.Event(), threading.Event()

    def slow(directory, part, arrays):   # the first save stops between its data file and its commit
        entry = real(directory, part, arrays)
        if threading.current_thread().name == "first":
            wrote.set()
            go.wait(10)
        return entry
    monkeypatch.setattr(ckpt_mod, "_write_npz", slow)
    errors = []

    def save(who):
        try:
            save_checkpoint(d, {"w": np.full(3, len(who), float)}, {"who": who})
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    first = threading.Thread(target=save, args=("first",), name="first")
    first.start()
    assert wrote.wait(10)
    second = threading.Thread(target=save, args=("second",), name="second")
    second.start()
    second.join(0.5)
    assert second.is_alive()     # it waits for the first save instead of deleting its files
    go.set()
    first.join(10)
    second.join(10)
    assert errors == []
    ck = load_checkpoint(d)
    assert ck.meta == {"who": "second"} and ck.arrays["w"].tolist() == [6.0] * 3
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", f"weights-{ck_hash(d)}.npz"]


def ck_hash(d):
    return json.loads((d / "meta.json").read_text())["files"]["weights"]["sha256"][:16]


def _save_after(barrier, folder, seed):
    barrier.wait()
    cnngraph.compile(NET, seed=seed).save(folder)


def test_two_processes_saving_one_folder_leave_a_loadable_checkpoint(tmp_path):
    d = tmp_path / "m"
    cnngraph.compile(NET, seed=0).save(d)
    ctx = multiprocessing.get_context("fork")
    for rnd in range(3):
        barrier = ctx.Barrier(2)
        procs = [ctx.Process(target=_save_after, args=(barrier, d, 10 * rnd + k)) for k in (1, 2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0]
        model = cnngraph.load_model(d)
        assert any(np.array_equal(model.params["fc.weight"], cnngraph.compile(NET, seed=10 * rnd + k).params["fc.weight"])
                   for k in (1, 2))


# --- 3, 4: the reports on a full disk, and after a failed save ----------------------------------------------

def test_a_full_disk_keeps_the_previous_reports_whole_and_says_so(tmp_path):
    run = tmp_path / "run"
    train(run)
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "history.csv", "curves.png")}
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec()))

    def full_disk():   # files cannot grow past 64 bytes (the run's .lock still gets its PID)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "cnngraph.cli", "train", str(path), "--resume", str(run),
                           "--epochs", "3"], capture_output=True, text=True, preexec_fn=full_disk, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert {name: (run / name).read_bytes() for name in before} == before
    assert "could not be written (File too large)" in done.stderr and "Traceback" not in done.stderr
    assert f"warning: {run / 'metrics.json'}: could not be written (File too large); the metrics.json there " \
           f"before, if any, is unchanged" in done.stderr
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_metrics_describe_only_the_epochs_the_checkpoints_hold(tmp_path, monkeypatch):
    real = ckpt_mod._write_npz
    calls = {"n": 0}

    def full(directory, part, arrays):
        calls["n"] += 1
        if calls["n"] > 4:        # epochs 1 and 2 saved (best/ two files each, last/ links them), then the disk is full
            raise OSError(28, os.strerror(28))
        return real(directory, part, arrays)
    monkeypatch.setattr(ckpt_mod, "_write_npz", full)
    s = spec(early_stopping={"metric": "train_loss", "patience": 5},   # every epoch is the new best
             checkpoint_interval=0)                                      # and is written
    with pytest.raises(TrainingError, match=r"last good checkpoint: .*last \(epoch 2\)"):
        train(tmp_path / "run", s, epochs=3)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2] and metrics["epochs_run"] == 2
    assert metrics["best_epoch"] == meta_of(tmp_path / "run" / "checkpoint" / "best")["epoch"] == 2
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 3


# --- 5: Model.save never replaces a run, a training checkpoint or other files by surprise -------------------

def test_model_save_refuses_runs_training_checkpoints_and_other_files(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(run)
    model = cnngraph.compile(NET, seed=7)
    last = run / "checkpoint" / "last"
    with pytest.raises(CheckpointError, match=r"last: holds a training checkpoint: its optimizer state and epoch, "
                                              r"which resume needs, would be lost. Model.save replaces it only with "
                                              r"overwrite=True"):
        model.save(last)
    assert load_checkpoint(last).optimizer_state is not None
    with pytest.raises(CheckpointError, match=r"run: holds a training run: load_model, evaluate and predict would "
                                              r"use these weights"):
        model.save(run)
    assert not (run / "meta.json").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "meta.json").write_text('{"mine": 1}')
    with pytest.raises(CheckpointError, match=r"notes: is not empty and holds no checkpoint \(meta.json\)"):
        model.save(other)
    assert (other / "meta.json").read_text() == '{"mine": 1}'
    with pytest.raises(ValueError, match="the path is empty"):
        model.save("")
    # allowed: a new or empty folder, and an earlier Model.save checkpoint (replaced, as a file saved again is)
    (tmp_path / "empty").mkdir()
    for folder in ("new", "empty", "new"):
        model.save(tmp_path / folder)
    model.save(other, overwrite=True)
    assert cnngraph.load_model(other).param_count() == model.param_count()


# --- 6: a first save of last/ that never finished -----------------------------------------------------------

def test_resume_after_the_first_save_of_last_was_killed_starts_from_best(tmp_path):
    run = tmp_path / "run"
    train(run, epochs=1)
    last = run / "checkpoint" / "last"
    for p in last.iterdir():
        p.unlink()
    (last / ".weights-abcd1234.tmp").touch()
    log = io.StringIO()
    hist = train(run, resume=run, epochs=2, stream=log)
    assert "last holds no complete checkpoint (its first save did not finish); resuming from the best checkpoint " \
           "(epoch 1)" in log.getvalue()
    assert len(hist) == 2 and meta_of(last)["epoch"] == 2
    assert not (last / ".weights-abcd1234.tmp").exists()
    # evaluate and predict still refuse to swap an incomplete checkpoint for the other one
    for p in last.iterdir():
        p.unlink()
    with pytest.raises(CheckpointError, match="this last checkpoint has no meta.json"):
        cnngraph.load_model(run, which="last")


# --- 7: spec names are one folder name -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../victim", "/abs/path", "a\\b", "..", ".", "", "  ", "a\x00b"])
def test_a_spec_name_that_is_not_one_folder_name_is_refused(tmp_path, capsys, name):
    with pytest.raises(SpecError, match=r"name: expected one plain folder name"):
        cnngraph.load_spec(spec(name))
    if "\x00" not in name:
        path = tmp_path / "net.json"
        path.write_text(json.dumps(spec(name), indent=1))
        assert main(["validate", str(path)]) == 1
        assert f"net.json:2:" in capsys.readouterr().out


def test_imported_onnx_names_are_valid_spec_names():
    from cnngraph.onnx.common import sanitize
    for raw in ("../../victim", "/abs/path", "..", ".", "a\\b", "", "model:v1"):
        assert cnngraph.load_spec(spec(sanitize(raw, "onnx_model"))).name


# --- 8, 11, 20: the --out folder -----------------------------------------------------------------------------

def test_an_out_folder_with_other_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "curves.png").write_bytes(b"my picture")
    with pytest.raises(TrainingError, match=r"mine is not empty and holds no cnngraph run \(curves.png\)"):
        train(out)
    assert [p.name for p in out.iterdir()] == ["curves.png"] and (out / "curves.png").read_bytes() == b"my picture"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TrainingError, match="afile is a file"):
        train(tmp_path / "afile")
    (out / "curves.png").unlink()
    (out / ".lock").touch()                         # a run killed before it wrote anything
    train(out)


def test_out_dot_and_an_empty_out(tmp_path, monkeypatch):
    work = tmp_path / "work"
    train(work)
    monkeypatch.chdir(work)
    log = io.StringIO()
    train(".", stream=log)
    assert f"held an earlier run; it is kept as {tmp_path / 'work.1'}" in log.getvalue()
    assert (tmp_path / "work.1" / "metrics.json").is_file() and (tmp_path / "work" / "metrics.json").is_file()
    with pytest.raises(TrainingError, match="--out is empty"):
        train("")


def test_a_dangling_link_at_the_kept_name_is_skipped(tmp_path):
    train(tmp_path / "rn")
    (tmp_path / "rn.1").symlink_to(tmp_path / "nowhere")
    log = io.StringIO()
    train(tmp_path / "rn", stream=log)
    assert "kept as" in log.getvalue() and (tmp_path / "rn.2" / "metrics.json").is_file()
    assert (tmp_path / "rn.1").is_symlink()


# --- 16: SIGTERM and SIGHUP stop like Ctrl-C -----------------------------------------------------------------

class SignalAfterEpoch1(io.StringIO):
    def __init__(self, signum):
        super().__init__()
        self.signum = signum

    def write(self, text):
        if text.startswith("epoch 1/"):
            os.kill(os.getpid(), self.signum)
        return super().write(text)


class Unhandled(Exception):
    pass


@pytest.fixture
def own_handlers():
    """Handlers of this test's own for SIGTERM and SIGHUP: without train's, a signal fails the test (instead of
    killing pytest), and train must put them back."""
    def unhandled(signum, frame):
        raise Unhandled(signum)
    saved = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield unhandled
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_cleanly_like_ctrl_c(tmp_path, own_handlers, signum):
    log = SignalAfterEpoch1(signum)
    with pytest.raises(Terminated) as info:
        train(tmp_path / "run", epochs=5, stream=log)
    assert info.value.signum == signum and signal.getsignal(signum) is own_handlers
    assert f"stopped by {signal.Signals(signum).name}: training stopped cleanly; last good checkpoint: " \
           in log.getvalue() and "Resume with `cnngraph train" in log.getvalue()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"] == "interrupted" and metrics["epochs_run"] >= 1
    assert (tmp_path / "run" / "history.csv").is_file()


def test_sigterm_exits_143_from_the_command_line(tmp_path, monkeypatch, capsys, own_handlers):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec(epochs=5)))
    import cnngraph.train.progress as progress
    real = progress.EpochProgress.finish

    def finish(self, row):
        real(self, row)
        os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(progress.EpochProgress, "finish", finish)
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 143
    assert "stopped by SIGTERM: training stopped cleanly" in capsys.readouterr().err


def test_training_in_another_thread_leaves_the_signal_handlers_alone(tmp_path, own_handlers):
    result = []
    t = threading.Thread(target=lambda: result.append(train(tmp_path / "run")))
    t.start()
    t.join(120)
    assert len(result[0]) == 2 and signal.getsignal(signal.SIGTERM) is own_handlers


# --- 19: the name is not part of the network ----------------------------------------------------------------

def test_a_renamed_network_is_the_same_network(tmp_path, capsys):
    train(tmp_path / "run")
    renamed = spec("renamed")
    hist = train(tmp_path / "run", renamed, resume=tmp_path / "run", epochs=3)
    assert len(hist) == 3
    path = tmp_path / "renamed.json"
    path.write_text(json.dumps(renamed))
    assert main(["evaluate", str(path), "--checkpoint", str(tmp_path / "run"), "--split", "val"]) == 0
