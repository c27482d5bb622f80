"""Optimizers and gradient clipping against torch.optim / torch.nn.utils."""
from __future__ import annotations

import numpy as np
import pytest

from cnngraph.errors import CheckpointError
from cnngraph.train.optim import (
    OPTIMIZERS, SGD, Adam, AdamW, RMSprop, build_optimizer, clip_grad_norm,
)

SHAPES = {"conv1.weight": (4, 3, 3, 3), "conv1.bias": (4,), "fc.weight": (5, 7)}
STEPS = 5


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def _grad_seq(n=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
            for _ in range(n)]


LRS = [0.1, 0.08, 0.05, 0.05, 0.02, 0.01, 0.01, 0.005]

CASES = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}),
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}),
    ("adam", {}),
    ("adam", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1e-2}),
    ("adam", {"amsgrad": True, "weight_decay": 1e-3}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.1, "amsgrad": True}),
    ("rmsprop", {}),
    ("rmsprop", {"weight_decay": 1e-2, "alpha": 0.9}),
    ("rmsprop", {"centered": True}),
    ("rmsprop", {"centered": True, "momentum": 0.9, "weight_decay": 1e-3}),
    ("rmsprop", {"momentum": 0.5}),
]


def _torch_run(kind, opts, weights, grads_seq):
    torch = pytest.importorskip("torch")
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam,
           "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop}[kind]
    params = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in weights.items()}
    # foreach=False: the single-tensor path is the reference formulation.
    opt = cls(list(params.values()), lr=LRS[0], foreach=False, **opts)
    for i, grads in enumerate(grads_seq):
        for group in opt.param_groups:
            group["lr"] = LRS[i]
        for k, p in params.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
    return {k: p.detach().numpy() for k, p in params.items()}


def _our_run(opt, weights, grads_seq, start=0):
    for i, grads in enumerate(grads_seq, start):
        opt.step(weights, grads, LRS[i])
    return weights


@pytest.mark.parametrize("kind,opts", CASES, ids=[f"{k}-{o}" for k, o in CASES])
def test_matches_torch(kind, opts):
    pytest.importorskip("torch")
    w0, grads = _weights(), _grad_seq()
    expected = _torch_run(kind, opts, w0, grads)
    ours = _our_run(build_optimizer({"type": kind, **opts}), {k: v.copy() for k, v in w0.items()},
                    grads)
    for k in SHAPES:
        assert ours[k].dtype == np.float32
        # Weights are O(1): atol 1e-6 is 1e-6 relative to their scale; a pure rtol would
        # fail on elements that cancel to near zero (1 ulp of the operands).
        np.testing.assert_allclose(ours[k], expected[k], rtol=1e-6, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("kind,opts", CASES, ids=[f"{k}-{o}" for k, o in CASES])
def test_state_dict_resume_is_bit_exact(kind, opts):
    grads = _grad_seq(8)
    straight = _our_run(build_optimizer({"type": kind, **opts}), _weights(), grads)

    first = build_optimizer({"type": kind, **opts})
    w = _our_run(first, _weights(), grads[:3])
    state = first.state_dict()
    assert all(isinstance(a, np.ndarray) for a in state.values())
    resumed = build_optimizer({"type": kind, **opts})
    resumed.load_state_dict(state)
    for a in state.values():  # the loaded copy must not alias the saved dict
        a[...] = 0
    w = _our_run(resumed, w, grads[3:], start=3)
    for k in SHAPES:
        assert np.array_equal(w[k], straight[k]), k


def test_state_dict_layout():
    opt = Adam(Adam.Params(amsgrad=True))
    w = _weights()
    opt.step(w, _grad_seq(1)[0], 1e-3)
    sd = opt.state_dict()
    assert set(sd) == {f"{k}/{s}" for k in SHAPES
                       for s in ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    assert sd["fc.weight/step"].shape == () and int(sd["fc.weight/step"]) == 1
    assert sd["fc.weight/exp_avg"].dtype == np.float32


def test_updates_in_place_and_skips_missing_grads():
    w = _weights()
    held = w["conv1.weight"]
    before_bias = w["conv1.bias"].copy()
    grads = _grad_seq(1)[0]
    del grads["conv1.bias"]
    SGD(SGD.Params(momentum=0.9)).step(w, grads, 0.1)
    assert w["conv1.weight"] is held
    assert not np.array_equal(held, _weights()["conv1.weight"])
    assert np.array_equal(w["conv1.bias"], before_bias)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_float32_stays_float32_with_float64_grads(kind):
    w = _weights()
    grads = {k: v.astype(np.float64) for k, v in _grad_seq(1)[0].items()}
    opt = build_optimizer({"type": kind, "weight_decay": 0.01})
    opt.step(w, grads, np.float64(0.01))
    assert all(a.dtype == np.float32 for a in w.values())
    assert all(a.dtype == np.float32 for k, a in opt.state_dict().items()
               if not k.endswith("/step"))


def test_defaults_follow_pytorch():
    assert SGD.Params().lr == 0.01 and SGD.Params().momentum == 0.0
    assert Adam.Params().betas == (0.9, 0.999) and Adam.Params().weight_decay == 0.0
    assert AdamW.Params().weight_decay == 0.01 and AdamW.Params().lr == 0.001
    assert RMSprop.Params().alpha == 0.99 and RMSprop.Params().lr == 0.01


def test_build_optimizer_errors():
    with pytest.raises(ValueError, match=r"unknown optimizer type 'adma'.*did you mean 'adam'"):
        build_optimizer({"type": "adma"})
    with pytest.raises(ValueError, match="known: adam, adamw, rmsprop, sgd"):
        build_optimizer({"type": "lbfgs"})
    with pytest.raises(ValueError, match="needs a 'type'"):
        build_optimizer({"lr": 0.1})
    with pytest.raises(ValueError, match=r"momentun.*did you mean 'momentum'"):
        build_optimizer({"type": "sgd", "momentun": 0.9})
    with pytest.raises(ValueError, match="nesterov"):
        build_optimizer({"type": "sgd", "nesterov": True})
    with pytest.raises(ValueError, match="lr"):
        build_optimizer({"type": "adam", "lr": -1})
    assert isinstance(build_optimizer({"type": "adamw", "lr": 3e-4}), AdamW)


def test_load_state_dict_rejects_foreign_slots():
    sgd = SGD(SGD.Params(momentum=0.9))
    sgd.step(_weights(), _grad_seq(1)[0], 0.1)
    with pytest.raises(CheckpointError, match="momentum_buffer.*adam"):
        Adam().load_state_dict(sgd.state_dict())


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    grads = _grad_seq(1)[0]
    tgrads = [torch.tensor(g.copy()) for g in grads.values()]
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in tgrads]
    for p, t in zip(params, tgrads):
        p.grad = t
    expected_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-6)
    for g, p in zip(grads.values(), params):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6, atol=1e-8)


def test_clip_grad_norm_without_torch():
    grads = {"a": np.array([3.0, 0.0], np.float32), "b": np.array([[4.0]], np.float32)}
    held = grads["a"]
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    assert grads["a"] is held
    total = np.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    assert total == pytest.approx(5.0 / (5.0 + 1e-6), rel=1e-6)
    assert clip_grad_norm({}, 1.0) == 0.0


def test_optimizers_and_schedules_take_keywords_dicts_or_params():
    from cnngraph.train.optim import SGD
    from cnngraph.train.schedules import Cosine
    assert SGD(lr=0.1, momentum=0.9).params == SGD({"lr": 0.1, "momentum": 0.9}).params == \
        SGD(SGD.Params(lr=0.1, momentum=0.9)).params
    assert Cosine(warmup_epochs=2).params.warmup_epochs == 2
    with pytest.raises(ValueError, match=r"optimizer 'sgd': lrr: .*did you mean 'lr'"):
        SGD(lrr=0.1)
    with pytest.raises(TypeError, match=r"takes SGD.Params, a dict or keyword settings, found int"):
        SGD(3)


def test_step_checks_gradient_shapes_and_the_learning_rate():
    from cnngraph.train.optim import SGD
    w = {"fc.weight": np.ones((3, 2), np.float32)}
    with pytest.raises(ValueError, match=r"gradient of 'fc.weight' has shape \(1,\), its weight \(3, 2\)"):
        SGD().step(w, {"fc.weight": np.ones(1, np.float32)}, 0.1)
    for lr in (float("nan"), -0.1, float("inf")):
        with pytest.raises(ValueError, match="learning rate must be finite and >= 0"):
            SGD().step(w, {"fc.weight": np.ones((3, 2), np.float32)}, lr)
    np.testing.assert_array_equal(w["fc.weight"], 1)   # nothing changed


def test_build_optimizer_and_schedule_find_plugin_components(fresh):
    """A plugin optimizer that a spec's train: section accepts must also build from Python."""
    import cnngraph
    from cnngraph.train.optim import SGD, build_optimizer
    from cnngraph.train.schedules import Constant, build_schedule

    class Halving(SGD):
        type = "halving_sgd"

    class Flat(Constant):
        type = "flat_for_test"

    class Plugin:
        @cnngraph.hookimpl
        def cnngraph_register_optimizers(self, registry):
            registry.add_optimizer(Halving)

        @cnngraph.hookimpl
        def cnngraph_register_schedules(self, registry):
            registry.add_schedule(Flat)

    cnngraph.register_plugin(Plugin(), name="test-optim-plugin")
    assert isinstance(build_optimizer({"type": "halving_sgd", "lr": 0.2}), Halving)
    assert isinstance(build_schedule({"type": "flat_for_test"}), Flat)
