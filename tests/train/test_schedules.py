"""Schedules against torch.optim.lr_scheduler (stepped per epoch) and hand-computed warmup."""
from __future__ import annotations

import math

import pytest

from cnngraph.train.schedules import SCHEDULES, Constant, Cosine, build_schedule

BASE = 0.1
EPOCHS = 12
SPE = 4  # steps per epoch


def _per_epoch(schedule, epochs=EPOCHS, step=0):
    return [schedule.lr(BASE, e, step, SPE, epochs) for e in range(epochs)]


def _torch_per_epoch(make, epochs=EPOCHS):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("cfg,make", [
    ({"type": "step", "step_size": 3}, lambda s, o: s.StepLR(o, step_size=3)),
    ({"type": "step", "step_size": 2, "gamma": 0.5}, lambda s, o: s.StepLR(o, 2, gamma=0.5)),
    ({"type": "multistep", "milestones": [7, 3, 10]},
     lambda s, o: s.MultiStepLR(o, milestones=[3, 7, 10])),
    ({"type": "exponential", "gamma": 0.8}, lambda s, o: s.ExponentialLR(o, gamma=0.8)),
    ({"type": "cosine"}, lambda s, o: s.CosineAnnealingLR(o, T_max=EPOCHS)),
    ({"type": "cosine", "eta_min": 0.01}, lambda s, o: s.CosineAnnealingLR(o, EPOCHS, 0.01)),
    ({"type": "linear", "end_factor": 0.1},
     lambda s, o: s.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=EPOCHS)),
    ({"type": "linear", "start_factor": 0.5, "end_factor": 0.2, "total_iters": 5},
     lambda s, o: s.LinearLR(o, start_factor=0.5, end_factor=0.2, total_iters=5)),
    ({"type": "linear", "start_factor": 1 / 3, "end_factor": 1.0, "total_iters": 5},   # PyTorch's defaults
     lambda s, o: s.LinearLR(o)),
    ({"type": "constant"}, lambda s, o: s.ConstantLR(o, factor=1.0)),
], ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_matches_torch_per_epoch(cfg, make):
    ours = _per_epoch(build_schedule(cfg))
    expected = _torch_per_epoch(make)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # Epoch-granular schedules hold their value for the whole epoch.
    assert _per_epoch(build_schedule(cfg), step=SPE - 1) == ours


def test_none_is_constant():
    s = build_schedule(None)
    assert isinstance(s, Constant)
    assert s.lr(BASE, 5, 2, SPE, EPOCHS) == BASE


def test_warmup_hand_computed():
    s = build_schedule({"type": "constant", "warmup_epochs": 1})  # W = 4 steps
    got = [s.lr(BASE, t // SPE, t % SPE, SPE, EPOCHS) for t in range(6)]
    assert got == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1, 0.1])


def test_fractional_warmup_on_step_schedule():
    s = build_schedule({"type": "step", "step_size": 1, "gamma": 0.5, "warmup_epochs": 1.5})
    # W = round(1.5 * 4) = 6 steps; the step decay counts epochs from the start.
    got = [s.lr(BASE, t // SPE, t % SPE, SPE, EPOCHS) for t in range(9)]
    want = [BASE * 0.5 ** (t // SPE) * min(t / 6, 1.0) for t in range(9)]
    assert got == pytest.approx(want)
    assert got[4] == pytest.approx(0.05 * 4 / 6)


def test_cosine_with_warmup_runs_over_remaining_epochs():
    s = build_schedule({"type": "cosine", "warmup_epochs": 2})
    for e in range(2, EPOCHS):
        want = BASE * (1 + math.cos(math.pi * (e - 2) / (EPOCHS - 2))) / 2
        assert s.lr(BASE, e, 0, SPE, EPOCHS) == pytest.approx(want)
    assert s.lr(BASE, 1, 0, SPE, EPOCHS) == pytest.approx(BASE * 4 / 8)  # mid-warmup
    assert s.lr(BASE, 2, 0, SPE, EPOCHS) == pytest.approx(BASE)


def test_cosine_per_step():
    s = build_schedule({"type": "cosine", "per_step": True, "eta_min": 0.001})
    total = EPOCHS * SPE
    for t in (0, 1, 17, total - 1):
        want = 0.001 + (BASE - 0.001) * (1 + math.cos(math.pi * t / total)) / 2
        assert s.lr(BASE, t // SPE, t % SPE, SPE, EPOCHS) == pytest.approx(want)


def test_linear_per_step_with_warmup():
    s = build_schedule({"type": "linear", "per_step": True, "warmup_epochs": 1,
                        "end_factor": 0.5})
    assert s.lr(BASE, 0, 2, SPE, EPOCHS) == pytest.approx(BASE * 2 / 4)
    assert s.lr(BASE, 1, 0, SPE, EPOCHS) == pytest.approx(BASE)
    t, total = 30, EPOCHS * SPE
    assert s.lr(BASE, t // SPE, t % SPE, SPE, EPOCHS) == pytest.approx(
        BASE * (1 - 0.5 * (t - 4) / (total - 4)))


def test_returns_python_float():
    for kind, cls in SCHEDULES.items():
        cfg = {"type": kind, **({"step_size": 2} if kind == "step" else {}),
               **({"milestones": [2]} if kind == "multistep" else {}),
               **({"gamma": 0.9} if kind == "exponential" else {})}
        assert type(build_schedule(cfg).lr(BASE, 3, 1, SPE, EPOCHS)) is float, kind


def test_errors():
    with pytest.raises(ValueError, match=r"unknown schedule type 'cosin'.*did you mean 'cosine'"):
        build_schedule({"type": "cosin"})
    with pytest.raises(ValueError, match="step_size"):
        build_schedule({"type": "step"})
    with pytest.raises(ValueError, match=r"warmup_epoch.*did you mean 'warmup_epochs'"):
        build_schedule({"type": "constant", "warmup_epoch": 1})
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_schedule({"type": "cosine", "warmup_epochs": 5}).lr(BASE, 0, 0, SPE, 5)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        Cosine().lr(BASE, 0, 0, 0, 5)


@pytest.mark.parametrize("ours,theirs", [
    ({}, {}),
    ({"pct_start": 0.25, "anneal": "linear"}, {"pct_start": 0.25, "anneal_strategy": "linear"}),
    ({"three_phase": True, "div_factor": 10.0, "final_div_factor": 100.0},
     {"three_phase": True, "div_factor": 10.0, "final_div_factor": 100.0}),
])
def test_one_cycle_matches_torch_every_step(ours, theirs):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=BASE, total_steps=EPOCHS * SPE, **theirs)
    want = []
    for _ in range(EPOCHS * SPE):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    s = build_schedule({"type": "one_cycle", **ours})
    got = [s.lr(BASE, e, k, SPE, EPOCHS) for e in range(EPOCHS) for k in range(SPE)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("ours,theirs", [
    ({"patience": 2}, {"patience": 2}),
    ({"metric": "val_accuracy", "patience": 1, "factor": 0.5, "cooldown": 2, "min_lr": 0.02},
     {"mode": "max", "patience": 1, "factor": 0.5, "cooldown": 2, "min_lr": 0.02}),
    ({"patience": 0, "threshold": 0.05, "threshold_mode": "abs"}, {"patience": 0, "threshold": 0.05, "threshold_mode": "abs"}),
])
def test_reduce_on_plateau_follows_the_history_like_torch(ours, theirs):
    """The rate of each epoch from the metric's history equals torch's ReduceLROnPlateau stepped after each epoch."""
    torch = pytest.importorskip("torch")
    metric = ours.get("metric", "val_loss")
    values = [1.0, 0.8, 0.79, 0.81, 0.8, 0.8, 0.7, 0.71, 0.72, 0.73, 0.69, 0.69, 0.7, 0.7, 0.71]
    if metric == "val_accuracy":
        values = [1 - v for v in values]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=BASE)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **theirs)
    s = build_schedule({"type": "reduce_on_plateau", **ours})
    history = []
    for epoch, v in enumerate(values):
        s.observe(history)
        assert s.lr(BASE, epoch, 0, SPE, len(values)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        history.append({"epoch": epoch + 1, metric: v, "train_loss": 0.5})
        sched.step(v)
    assert opt.param_groups[0]["lr"] < BASE      # it did reduce


def test_reduce_on_plateau_needs_a_metric_the_run_records():
    import cnngraph
    spec = {"name": "t", "inputs": {"x": {"shape": [4]}}, "layers": [{"id": "d", "type": "dense", "out_features": 2}],
            "outputs": ["d"], "train": {"schedule": {"type": "reduce_on_plateau", "metric": "val_los"}}}
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(spec)
    (p,) = info.value.problems
    assert p.path == "train.schedule.metric" and "did you mean 'val_loss'" in p.message


def test_reduce_on_plateau_on_a_metric_the_run_does_not_record_is_refused(tmp_path):
    import io
    import cnngraph
    import numpy as np
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 3, 40))
    spec = {"name": "t", "inputs": {"x": {"shape": [1, 8, 8]}},
            "layers": [{"id": "f", "type": "flatten"}, {"id": "d", "type": "dense", "out_features": 3}],
            "outputs": ["d"],
            "train": {"data": {"dataset": "npz", "path": str(tmp_path / "d.npz"), "val_fraction": 0.0}, "epochs": 2,
                      "schedule": {"type": "reduce_on_plateau"}}}
    with pytest.raises(cnngraph.SpecError, match=r"reduce_on_plateau follows 'val_loss', which this run does not record "
                                                 r"\(the dataset has no validation split\)"):
        cnngraph.train(spec, out=tmp_path / "a", stream=io.StringIO())
    spec["train"]["schedule"]["metric"] = "train_loss"
    assert len(cnngraph.train(spec, out=tmp_path / "b", stream=io.StringIO())) == 2


def test_linear_start_factor_is_checked_as_pytorch_does():
    for bad in ({"start_factor": 0}, {"start_factor": 1.5}, {"total_iters": 0}):
        with pytest.raises(Exception, match="start_factor|total_iters"):
            build_schedule({"type": "linear", **bad})
