"""Augmentations: shapes, determinism, exact geometry, config validation."""
from __future__ import annotations

import numpy as np
import pytest

from cnngraph.train.augment import (AUGMENTATIONS, AugmentConfigError, HorizontalFlip, RandomCrop,
                                    RandomRotation, RandomScale, RandomShift, build_augmentations,
                                    rotate, shift, zoom)

X = _X = np.random.default_rng(0).random((16, 3, 9, 9)).astype(np.float32)
ALL = [{"type": t} for t in AUGMENTATIONS]


@pytest.mark.parametrize("entry", ALL, ids=lambda e: e["type"])
def test_shape_dtype_and_determinism(entry):
    aug = build_augmentations([entry])
    X = _X if "image" in AUGMENTATIONS[entry["type"]].inputs else _X[:, :, 0]   # time_reversal: sequences
    before = X.copy()
    a = aug(X, np.random.default_rng(3))
    assert np.array_equal(X, before)                  # the input is never modified
    b = aug(X, np.random.default_rng(3))
    assert a.shape == X.shape and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, aug(X, np.random.default_rng(4)))


def test_per_sample_draws_differ():
    x = np.tile(X[:1], (32, 1, 1, 1))
    out = RandomRotation(degrees=30)(x, np.random.default_rng(0))
    assert len({o.tobytes() for o in out}) > 20


def test_shift_by_one_pixel_exact():
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float32).reshape(2, 1, 5, 5) + 1
    out = shift(x, dy=[1, 0], dx=[0, -1])
    assert np.array_equal(out[0, :, 1:], x[0, :, :-1]) and np.all(out[0, :, 0] == 0)
    assert np.array_equal(out[1, ..., :-1], x[1, ..., 1:]) and np.all(out[1, ..., -1] == 0)
    edge = shift(x, dy=[1, 0], dx=[0, 0], fill="edge")
    assert np.array_equal(edge[0, :, 0], x[0, :, 0])
    bg = shift(x, dy=[2, 2], dx=[0, 0], background=[-3.0])
    assert np.all(bg[:, :, :2] == -3.0) and np.array_equal(bg[:, :, 2:], x[:, :, :-2])


@pytest.mark.parametrize("fill", ["constant", "edge"])
def test_shift_matches_a_per_pixel_reference(fill):
    """Mixed shifts in one batch, per-channel background, non-square images: every pixel as the definition says."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 3, 6, 9)).astype(np.float32)
    dy, dx = rng.integers(-3, 4, size=40), rng.integers(-4, 5, size=40)
    bg = np.array([0.5, -1.0, 2.0], np.float32)
    out = shift(x, dy, dx, fill=fill, background=bg)
    want = np.empty_like(x)
    for n in range(40):
        for i in range(6):
            for j in range(9):
                si, sj = i - dy[n], j - dx[n]
                if fill == "edge":
                    want[n, :, i, j] = x[n, :, min(max(si, 0), 5), min(max(sj, 0), 8)]
                else:
                    want[n, :, i, j] = x[n, :, si, sj] if 0 <= si < 6 and 0 <= sj < 9 else bg
    assert out.dtype == np.float32 and np.array_equal(out, want)


def test_random_shift_moves_content_by_at_most_p():
    x = np.zeros((64, 1, 7, 7), np.float32)
    x[:, :, 3, 3] = 1
    out = RandomShift(pixels=1)(x, np.random.default_rng(0))
    rows, cols = np.nonzero(out[:, 0].sum(axis=2))[1], np.nonzero(out[:, 0].sum(axis=1))[1]
    assert out.sum() == 64 and set(rows) == {2, 3, 4} and set(cols) == {2, 3, 4}


def test_random_crop_is_a_padded_shift():
    x = np.ones((50, 1, 6, 6), np.float32)
    out = RandomCrop(padding=2)(x, np.random.default_rng(1))
    zeros = (out == 0).sum(axis=(1, 2, 3))
    assert zeros.min() == 0 and zeros.max() > 0 and set(np.unique(out)) <= {0.0, 1.0}
    assert np.array_equal(RandomCrop(padding=0)(X, np.random.default_rng(0)), X)


def test_flip():
    assert np.array_equal(HorizontalFlip(p=1.0)(X, np.random.default_rng(0)), X[..., ::-1])
    assert np.array_equal(HorizontalFlip(p=0.0)(X, np.random.default_rng(0)), X)
    half = HorizontalFlip()(X, np.random.default_rng(0))
    flipped = [np.array_equal(h, x[..., ::-1]) for h, x in zip(half, X)]
    assert 0 < sum(flipped) < len(X)


def test_identities():
    n = len(X)
    assert np.abs(rotate(X, np.zeros(n)) - X).max() < 1e-6
    assert np.abs(zoom(X, np.ones(n)) - X).max() < 1e-6
    assert np.abs(RandomRotation(degrees=0)(X, np.random.default_rng(0)) - X).max() < 1e-6
    assert np.abs(RandomScale(min=1, max=1)(X, np.random.default_rng(0)) - X).max() < 1e-6


@pytest.mark.parametrize("size", [8, 9])
def test_rotation_90_matches_rot90(size):
    x = np.random.default_rng(1).random((3, 2, size, size)).astype(np.float32)
    assert np.abs(rotate(x, [90, 90, 90]) - np.rot90(x, axes=(2, 3))).max() < 1e-5
    assert np.abs(rotate(x, [-90] * 3) - np.rot90(x, -1, axes=(2, 3))).max() < 1e-5
    assert np.abs(rotate(x, [180] * 3) - x[..., ::-1, ::-1]).max() < 1e-5


def test_zoom_geometry():
    x = np.zeros((1, 1, 9, 9), np.float32)
    x[0, 0, 4, 6] = 1.0                       # two pixels right of the centre
    out = zoom(x, [2.0])
    assert out[0, 0, 4, 8] == pytest.approx(1.0) and out[0, 0, 4, 6] == pytest.approx(0.0)
    shrunk = zoom(np.ones((1, 1, 9, 9), np.float32), [0.5])
    assert shrunk[0, 0, 0, 0] == 0 and shrunk[0, 0, 4, 4] == 1
    edge = zoom(np.ones((1, 1, 9, 9), np.float32), [0.5], fill="edge")
    assert np.all(edge == 1)


def test_background_fill_for_rotation():
    x = np.full((1, 2, 8, 8), 5.0, np.float32)
    out = rotate(x, [45], background=[5.0, 5.0])
    assert np.allclose(out, 5.0)


def test_chain_and_empty():
    aug = build_augmentations([{"type": "random_shift", "pixels": 2}, "horizontal_flip",
                               {"type": "random_rotation", "degrees": 15},
                               {"type": "random_scale", "min": 0.8, "max": 1.2}, {"type": "random_crop", "padding": 1}])
    assert len(aug) == 5 and aug(X, np.random.default_rng(0)).shape == X.shape
    assert np.array_equal(build_augmentations([])(X, np.random.default_rng(0)), X)
    assert np.array_equal(build_augmentations(None)(X, np.random.default_rng(0)), X)


@pytest.mark.parametrize("entries,index,field,message", [
    ([{"type": "random_shfit"}], 0, "type", "did you mean 'random_shift'.*known: horizontal_flip, random_crop"),
    (["horizontal_flip", {"type": "random_shift", "pixles": 2}], 1, "pixles", "unknown parameter.*allowed: pixels, fill"),
    ([{"type": "random_scale", "min": 1.2, "max": 1.1}], 0, None, r"min \(1.2\) must be <= max"),
    ([{"type": "horizontal_flip", "p": 2}], 0, "p", "less than or equal to 1"),
    ([{"pixels": 1}], 0, None, "'type' key"),
    ([{"type": "random_rotation", "fill": "wrap"}], 0, "fill", "constant"),
    ([{"type": "random_scale", "min": 0.2}], 0, "min", r"expected a scale factor in \[0.25, 4\]"),
    ([{"type": "random_scale", "max": 4.5}], 0, "max", r"expected a scale factor in \[0.25, 4\]"),
    ([{"type": "random_scale", "max": float("nan")}], 0, "max", r"Input should be a finite number"),   # as every setting
    ([{"type": "random_rotation", "degrees": 181}], 0, "degrees", "less than or equal to 180"),
])
def test_config_errors(entries, index, field, message):
    with pytest.raises(AugmentConfigError, match=message) as e:
        build_augmentations(entries)
    assert isinstance(e.value, ValueError) and e.value.index == index and e.value.field == field
    assert str(e.value).startswith(f"augment[{index}]")


def test_registry_types():
    assert set(AUGMENTATIONS) == {"random_shift", "random_crop", "horizontal_flip", "random_rotation", "random_scale",
                                  "random_noise", "time_reversal"}
    for name, cls in AUGMENTATIONS.items():
        assert cls.type == name and cls.Params.model_config.get("extra") == "forbid"


def test_prevalidated_entries_and_custom_table():
    from types import SimpleNamespace

    class Negate(RandomShift):
        type = "negate"

        def __call__(self, x, rng):
            return -x

    typed = SimpleNamespace(type="random_shift", params=RandomShift.Params(pixels=0))
    aug = build_augmentations([typed, {"type": "negate"}], background=[0.5],
                              table={**AUGMENTATIONS, "negate": Negate})
    assert np.array_equal(aug(X, np.random.default_rng(0)), -X)
    assert aug.steps[0].background == [0.5]


def _spec(augment, shape=(1, 8, 8)):
    return {"name": "t", "inputs": {"image": {"shape": list(shape)}},
            "layers": [{"id": "flat", "type": "flatten"}, {"id": "logits", "type": "dense", "out_features": 10}],
            "outputs": ["logits"], "train": {"augment": augment}}


def test_a_shift_or_crop_as_large_as_the_image_is_refused_at_validation():
    """The probe: random_shift pixels 1000 on an 8x8 input validated, trained at chance and 40x slower. A shift
    must stay below the image's height and width; each problem is located at its parameter."""
    import cnngraph
    with pytest.raises(cnngraph.SpecError) as e:
        cnngraph.load_spec(_spec([{"type": "random_shift", "pixels": 1000}, "horizontal_flip",
                                  {"type": "random_crop", "padding": 4}], shape=(3, 4, 16)))
    assert [(p.path, p.message) for p in e.value.problems] == [
        ("train.augment[0].pixels", "(random_shift) pixels (1000) must be less than the image's height and width "
         "(at most 3 for the input (3, 4, 16)): a draw could move the whole image out of view, leaving only fill"),
        ("train.augment[2].padding", "(random_crop) padding (4) must be less than the image's height and width "
         "(at most 3 for the input (3, 4, 16)): a draw could move the whole image out of view, leaving only fill")]
    spec = cnngraph.load_spec(_spec([{"type": "random_shift", "pixels": 7}, {"type": "random_crop", "padding": 7},
                                     {"type": "random_scale", "min": 0.25, "max": 4}, {"type": "random_rotation",
                                                                                        "degrees": 180}]))
    assert [a.type for a in spec.train.augment] == ["random_shift", "random_crop", "random_scale", "random_rotation"]


def test_every_built_in_augmentation_checks_its_settings_against_the_input():
    shape = (1, 8, 8)
    for name, cls in AUGMENTATIONS.items():
        assert cls.input_problems(cls.Params(), shape) == [], name          # the defaults fit an 8x8 image
    assert RandomShift.input_problems(RandomShift.Params(pixels=8), shape)[0][0] == "pixels"
    assert RandomCrop.input_problems(RandomCrop.Params(padding=8), shape)[0][0] == "padding"
    assert RandomCrop.input_problems(RandomCrop.Params(), (3, 32, 32)) == []


def test_a_pipeline_built_in_python_checks_its_input():
    """Spec validation checks sizes and kinds for `cnngraph train`; a Compose from build_augmentations checks
    its first batch of each shape instead of silently filling whole images."""
    rng = np.random.default_rng(0)
    with pytest.raises(AugmentConfigError, match=r"augment\[1\]\.pixels \(random_shift\): pixels \(8\) must be less"):
        build_augmentations(["horizontal_flip", {"type": "random_shift", "pixels": 8}])(np.zeros((2, 1, 8, 8), np.float32), rng)
    with pytest.raises(AugmentConfigError, match=r"augment\[0\] \(horizontal_flip\) works on images \(C, H, W\), "
                                                 r"not on samples of shape \(1, 8\)"):
        build_augmentations(["horizontal_flip"])(np.zeros((2, 1, 8), np.float32), rng)
    ok = build_augmentations([{"type": "random_shift", "pixels": 7}])
    assert ok(np.ones((2, 1, 8, 8), np.float32), rng).shape == (2, 1, 8, 8)
    assert ok(np.ones((2, 1, 9), np.float32), rng).shape == (2, 1, 9)
