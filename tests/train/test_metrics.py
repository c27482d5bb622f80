"""Metrics against hand-computed values and an independent torch reference."""
import numpy as np
import pytest

from cnngraph.train.metrics import (MetricAccumulator, accuracy, confusion_matrix, format_confusion,
                                    format_per_class, precision_recall, predicted_classes, top_k_accuracy)

torch = pytest.importorskip("torch")


def test_confusion_matrix_hand_computed():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [1, 0, 0]]
    assert cm.dtype == np.int64


def test_precision_recall_hand_computed():
    cm = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 0]])
    r = precision_recall(cm)
    # precision = tp / column sum, recall = tp / row sum
    assert r["precision"] == pytest.approx([1 / 2, 2 / 3, 0.0])
    assert r["recall"] == pytest.approx([1 / 2, 2 / 3, 0.0])
    assert r["f1"] == pytest.approx([0.5, 2 / 3, 0.0])
    assert r["support"] == [2, 3, 1]
    assert r["macro_precision"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert r["undefined"] == []


def test_undefined_precision_is_none_and_reported():
    cm = np.array([[2, 0], [1, 0]])          # class 1 never predicted
    r = precision_recall(cm)
    assert r["precision"] == [pytest.approx(2 / 3), None] and r["macro_precision"] == pytest.approx(2 / 3)
    assert r["recall"] == [1.0, 0.0] and r["f1"] == [pytest.approx(0.8), 0.0]
    assert r["undefined"] == ["precision[1]"]


def test_absent_classes_are_undefined_and_left_out_of_the_macro_means():
    """Held-out data with some classes only: a class with no samples and no predictions has no
    precision, recall or F1 ('-'); one with predictions but no samples has precision 0 and no recall
    (scikit-learn's definitions); the macro means are over the defined values."""
    cm = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 0]])    # class 1 predicted once, class 2 neither
    r = precision_recall(cm)
    assert r["precision"] == [1.0, 0.0, None] and r["recall"] == [0.75, None, None]
    assert r["f1"] == [pytest.approx(6 / 7), 0.0, None]
    assert r["macro_precision"] == 0.5 and r["macro_recall"] == 0.75 and r["macro_f1"] == pytest.approx(3 / 7)
    lines = format_per_class(r, ["a", "b", "c"]).splitlines()
    assert lines[3].split() == ["c", "-", "-", "-", "0"] and lines[2].split()[1:3] == ["0.0000", "-"]
    assert lines[4].split()[:4] == ["macro", "0.5000", "0.7500", "0.4286"]


def test_accuracy_and_top_k_against_torch():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 7)).astype(np.float32)
    y = rng.integers(0, 7, 200)
    t_scores, t_y = torch.from_numpy(scores), torch.from_numpy(y)
    assert accuracy(scores, y) == pytest.approx((t_scores.argmax(1) == t_y).float().mean().item())
    for k in (1, 2, 3, 7):
        ref = (t_scores.topk(k, dim=1).indices == t_y[:, None]).any(1).float().mean().item()
        assert top_k_accuracy(scores, y, k) == pytest.approx(ref)
    assert top_k_accuracy(scores, y, 7) == 1.0


def test_top_k_ties_and_binary_column():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    # sample 0: label 1 ties with class 0: no class scores strictly higher → top-1 hit
    assert top_k_accuracy(scores, [1, 2], 1) == 0.5
    assert top_k_accuracy(scores, [1, 2], 2) == 1.0
    single = np.array([[2.0], [-1.0], [0.5]])
    assert predicted_classes(single).tolist() == [1, 0, 1]
    assert accuracy(single, [1, 1, 1]) == pytest.approx(2 / 3)


def test_accumulator_matches_one_shot():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(103, 5))
    y = rng.integers(0, 5, 103)
    losses = rng.random(103)
    acc = MetricAccumulator(top_k=2, num_classes=5)
    for i in range(0, 103, 10):
        acc.add(scores[i:i + 10], y[i:i + 10], losses[i:i + 10].sum())
    res = acc.result("val_")
    assert res["val_loss"] == pytest.approx(losses.mean())
    assert res["val_accuracy"] == pytest.approx(accuracy(scores, y))
    assert res["val_top2_accuracy"] == pytest.approx(top_k_accuracy(scores, y, 2))
    np.testing.assert_array_equal(acc.confusion(), confusion_matrix(y, scores.argmax(1), 5))
    assert acc.confusion().sum() == 103


def test_bad_inputs_are_clear():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match=r"shape \(N, classes\)"):
        accuracy(np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="labels must have shape"):
        accuracy(np.zeros((3, 2)), [0, 1])


def test_text_tables():
    cm = np.array([[3, 1], [0, 4]])
    text = format_confusion(cm, ["cat", "dog"])
    assert "cat" in text.splitlines()[1] and text.splitlines()[1].split()[-2:] == ["3", "1"]
    table = format_per_class(precision_recall(cm), ["cat", "dog"])
    assert "macro" in table and "0.7500" in table   # recall of cat = 3/4


def test_correct_per_sample_leaves_out_ignored_targets_even_when_the_value_is_a_class():
    from cnngraph.train.metrics import correct_per_sample
    scores = np.zeros((1, 2, 2, 2))
    scores[0, 1] = 1.0                                   # every pixel predicted as class 1
    y = np.array([[[1, 1], [1, 0]]])
    assert correct_per_sample(scores, y, ignore=1) == 0.0     # the one counted pixel (class 0) is wrong
    assert correct_per_sample(scores, y) == 0.75
    labels = np.array([0, 1, 9, 0])
    assert correct_per_sample(np.eye(3)[[0, 1, 2, 2]], labels, ignore=9) == 2
    from cnngraph.train.metrics import scored_per_batch
    from cnngraph.train.progress import EpochProgress
    progress = EpochProgress(1, 1, 2, quiet=True)       # an epoch's accuracy is over the counted samples
    for scores, y in ((np.eye(3)[[0, 1, 1, 1]], np.array([0, 9, 9, 9])), (np.eye(3)[[1, 1, 1, 1]], np.zeros(4, int))):
        progress.update(4, 0.0, correct_per_sample(scores, y, ignore=9), scored=scored_per_batch(y, ignore=9))
    assert progress.score == pytest.approx(1 / 5)
