"""train.gradient_accumulation_steps: k batches' mean gradient makes one optimizer step."""
import io

import numpy as np
import pytest

import cnngraph
from cnngraph.train.loop import GradientAccumulator
from test_loop import _params


def spec(tmp_path, batch_size, accumulate, optimizer=None):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    if not path.exists():   # 120 training samples: batches of 64 + 56, or 32 + 32 + 32 + 24
        np.savez(path, x=rng.standard_normal((120, 1, 6, 6)).astype(np.float32), y=rng.integers(0, 3, 120))
    return {"name": "acc", "inputs": {"image": {"shape": [1, 6, 6]}},
            "layers": [{"id": "conv", "type": "conv2d", "out_channels": 4, "kernel_size": 3},
                       {"id": "act", "type": "relu"}, {"id": "flat", "type": "flatten"},
                       {"id": "fc", "type": "dense", "out_features": 3}],
            "outputs": ["fc"],
            "train": {"data": {"dataset": "npz", "path": str(path), "val_fraction": 0.0}, "batch_size": batch_size,
                      "epochs": 2, "seed": 1, "gradient_accumulation_steps": accumulate,
                      "optimizer": optimizer or {"type": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}}}


@pytest.mark.parametrize("optimizer", [None, {"type": "adam", "lr": 0.01}])
def test_two_accumulated_batches_of_32_step_like_one_batch_of_64(tmp_path, optimizer):
    for name, batch, k in (("big", 64, 1), ("acc", 32, 2), ("small", 32, 1)):
        cnngraph.train(spec(tmp_path, batch, k, optimizer), out=tmp_path / name, stream=io.StringIO())
    big, acc, small = (_params(tmp_path / f"{n}/checkpoint/last") for n in ("big", "acc", "small"))
    for key in big:
        np.testing.assert_allclose(acc[key], big[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert any(not np.allclose(small[k], big[k], rtol=1e-3) for k in big)   # without it: twice the steps


def test_batches_count_by_their_samples_and_leftovers_make_a_step_of_their_own():
    acc = GradientAccumulator(3)
    g = {"w": np.ones(2, np.float32)}
    assert acc.add(g, 4, last=False) is None and acc.add({"w": 3 * g["w"]}, 4, last=False) is None
    # a short last batch of 2 samples counts half: (4*1 + 4*3 + 2*6) / 10
    assert np.allclose(acc.add({"w": 6 * g["w"]}, 2, last=False)["w"], [2.8, 2.8])
    assert np.array_equal(acc.add({"w": 2 * g["w"]}, 4, last=True)["w"], [2.0, 2.0])    # epoch end: 1 batch
    assert GradientAccumulator(1).add(g, 4, last=False) is g
    summed = GradientAccumulator(2, mean=False)                                       # reduction: sum adds up
    assert summed.add(g, 4, last=False) is None and np.array_equal(summed.add(g, 2, last=False)["w"], [2.0, 2.0])


def test_bad_accumulation_is_a_located_spec_error(tmp_path):
    bad = spec(tmp_path, 32, 0)
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(bad)
    assert [p.path for p in info.value.problems] == ["train.gradient_accumulation_steps"]
