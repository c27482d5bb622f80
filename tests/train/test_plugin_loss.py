"""A plugin loss trains through `cnngraph.train`: class-index targets as int64 when it asks for them
(``index_targets``), and a failing loss is a named TrainingError, not a traceback."""
from __future__ import annotations

import numpy as np
import pytest

import cnngraph
from cnngraph.op import Op, OpParams
from cnngraph.train.settings import TrainingError


class _NegLogLikelihood(Op):
    """Mean -log softmax(scores)[target]: indexes the scores with the targets."""

    type = "test_nll_loss"
    Params = OpParams
    arity = (2, 2)
    reduces_batch = True
    grad_inputs = (0,)
    index_targets = True

    def forward(self, ctx, inputs, params):
        s, t = inputs
        z = s - s.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        ctx.save(p=p, t=t)
        return -np.log(p[np.arange(len(t)), t]).mean()

    def backward(self, ctx, gy):
        p, t = ctx.saved["p"], ctx.saved["t"]
        g = p.copy()
        g[np.arange(len(t)), t] -= 1
        return [g * (gy / len(t)), None], {}


class _Broken(_NegLogLikelihood):
    type = "test_broken_loss"
    index_targets = False     # one-hot float targets cannot index: the loss fails


class _Plugin:
    @cnngraph.hookimpl
    def cnngraph_register_ops(self, registry):
        registry.add(_NegLogLikelihood)
        registry.add(_Broken)


@pytest.fixture(scope="module", autouse=True)
def plugin():
    cnngraph.register_plugin(_Plugin(), name="test-plugin-loss")


def _spec(loss):
    spec = cnngraph.load_spec("specs/digits_cnn.yaml").to_dict()
    spec["train"]["loss"] = {"type": loss, "output": "logits"}
    return spec


def test_a_plugin_loss_gets_int64_class_indices_and_trains(tmp_path):
    hist = cnngraph.train(_spec("test_nll_loss"), epochs=2, out=str(tmp_path / "run"), quiet=True)
    assert hist.test["test_accuracy"] > 0.5
    assert np.isfinite(hist[-1]["train_loss"])


def test_a_failing_plugin_loss_is_named(tmp_path):
    with pytest.raises(TrainingError, match=r"loss 'test_broken_loss' \(plugin 'test-plugin-loss'\) failed on "
                                            r"scores \(64, 10\) and float32 targets \(64, 10\): IndexError"):
        cnngraph.train(_spec("test_broken_loss"), epochs=1, out=str(tmp_path / "run"), quiet=True)
