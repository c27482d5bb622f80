"""MixUp and CutMix (train.mixup / train.cutmix): batches blended with a shuffled copy, labels blended alike."""
import io

import numpy as np
import pytest

import cnngraph
from cnngraph.train.loop import TrainingError
from cnngraph.train.mixing import BatchMixer, MixSettings
from cnngraph.train.settings import LossSetup
from test_loop import _params, run, tiny_spec


def _ce_loss(units=4, **params):
    from cnngraph.registry import get_registry
    ce = get_registry().ops["cross_entropy"]
    return LossSetup(op=ce(ce.Params(**params)), output="o", encoding="index", units=units, shape=(units,))


def test_mixup_blends_images_and_labels_with_one_weight():
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1])
    mixed = BatchMixer(MixSettings(alpha=0.4), None)(x, np.random.default_rng(1))
    lam, perm = mixed.lam, mixed.perm
    assert 0 < lam < 1 and sorted(perm) == list(range(6)) and mixed.x.dtype == np.float32
    np.testing.assert_allclose(mixed.x, lam * x + (1 - lam) * x[perm], rtol=1e-6)
    t = mixed.targets(_ce_loss(), y, np.float32)
    want = lam * np.eye(4)[y] + (1 - lam) * np.eye(4)[y[perm]]
    np.testing.assert_allclose(t, want, rtol=1e-6)
    assert np.array_equal(mixed.major_labels(y), y if lam >= 0.5 else y[perm])


@pytest.mark.parametrize("shape", [(8, 1, 12, 10), (8, 3, 40)])
def test_cutmix_pastes_one_box_and_lam_is_the_share_kept(shape):
    x = np.broadcast_to(np.arange(8, dtype=np.float32).reshape(8, *([1] * (len(shape) - 1))), shape).copy()
    for seed in range(20):
        mixed = BatchMixer(None, MixSettings(alpha=1.0))(x, np.random.default_rng(seed))
        kept = (mixed.x == x).reshape(8, -1).mean(axis=1)
        moved = mixed.perm != np.arange(8)
        np.testing.assert_allclose(kept[moved], mixed.lam)               # the same box in every image
        pasted = mixed.x != x
        assert np.array_equal(mixed.x[pasted], np.broadcast_to(x[mixed.perm], shape)[pasted])


def test_prob_zero_never_mixes_and_small_batches_stay():
    x = np.ones((4, 1, 3, 3), np.float32)
    assert BatchMixer(MixSettings(alpha=1.0, prob=0.0), None)(x, np.random.default_rng(0)) is None
    assert BatchMixer(MixSettings(alpha=1.0), None)(x[:1], np.random.default_rng(0)) is None


def test_training_with_mixup_and_cutmix_learns_and_resumes_bit_for_bit(tmp_path):
    spec = tiny_spec(schedule={"type": "constant"}, epochs=4, mixup={"alpha": 0.2}, cutmix={"alpha": 1.0},
                     data={"dataset": "digits", "limit": 400})
    hist = run(spec, tmp_path, "straight")
    assert hist.test["test_accuracy"] > 0.5                                 # chance is 0.1
    run(spec, tmp_path, "first", epochs=2)
    cnngraph.train(spec, resume=tmp_path / "first", epochs=4, stream=io.StringIO())
    a, b = _params(tmp_path / "straight/checkpoint/last"), _params(tmp_path / "first/checkpoint/last")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    plain = run(tiny_spec(schedule={"type": "constant"}, epochs=4, data={"dataset": "digits", "limit": 400}),
                tmp_path, "plain")
    assert [r["train_loss"] for r in plain] != [r["train_loss"] for r in hist]   # the batches were mixed


def test_mixing_where_labels_cannot_blend_is_refused(tmp_path):
    with pytest.raises(TrainingError, match=r"train.mixup blends the class labels of two samples, which does not "
                                            r"work here: the loss ignores a class index"):
        run(tiny_spec(mixup={"alpha": 0.2}, loss={"type": "cross_entropy", "ignore_index": 3}), tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", x=rng.random((40, 1, 8, 8)).astype(np.float32), y=rng.random((40, 10)).astype(np.float32))
    spec = tiny_spec(cutmix={"alpha": 1.0}, loss={"type": "mse"},
                     data={"dataset": "npz", "path": str(tmp_path / "reg.npz"), "targets": "values"})
    with pytest.raises(TrainingError, match=r"train.cutmix .* the targets are values to regress"):
        run(spec, tmp_path, "reg")


def test_bad_mix_settings_are_located_spec_errors():
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(tiny_spec(mixup={"alpha": 0}, cutmix={"alpha": 1.0, "prob": 2}))
    paths = sorted(p.path for p in info.value.problems)
    assert paths == ["train.cutmix.prob", "train.mixup.alpha"]
