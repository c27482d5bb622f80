"""my_training.py: an optimizer, a schedule, a dataset and two augmentations for `cnngraph train`."""
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import cnngraph
from cnngraph.train.augment import Augmentation
from cnngraph.train.data import RawSplits, finish_dataset
from cnngraph.train.optim import Optimizer
from cnngraph.train.schedules import Schedule


class SignSGD(Optimizer):
    """w -= lr * sign(g): steps of one size, whatever the scale of the gradient."""

    type = "sign_sgd"                       # the name in `train.optimizer.type`
    SLOTS = ()                              # no per-weight arrays in `state`

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        lr: float = Field(0.01, ge=0)       # the base learning rate

    def _update(self, w, g, state, lr):
        state["step"] += 1
        w -= lr * np.sign(g)                # in place: `w` is the model's weight


class Halving(Schedule):
    """Halve the rate every `every` epochs."""

    type = "halving"                        # the name in `train.schedule.type`

    class Params(Schedule.Params):
        every: int = Field(1, ge=1)

    def _lr(self, base_lr, pos):
        return base_lr * 0.5 ** (pos.epoch // self.params.every)


def load_stripes(cfg, input_shape, seed, base_dir):
    """Noise with a bright row (class 0) or column (class 1) at a random place."""
    n = int(cfg.options.get("n_samples", 200))
    c, h, w = input_shape
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(0.0, 0.2, (n, c, h, w)).astype(np.float32)
    for i, at in enumerate(rng.integers(0, min(h, w), n)):
        if y[i] == 0:
            x[i, :, at, :] += 1.0
        else:
            x[i, :, :, at] += 1.0
    raw = RawSplits(train=(x, y.astype(np.int64)), classes=["row", "column"], source=f"stripes, {n} images")
    return finish_dataset(raw, cfg, seed)


class VerticalFlip(Augmentation):
    """Mirror top-bottom with probability `p` per sample (geometric: masks flip with their images)."""

    type = "vertical_flip"                  # the name in `train.augment[i].type`

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        p: float = Field(0.5, ge=0, le=1)

    def __call__(self, x, rng):
        flip = rng.random(len(x)) < self.params.p          # one draw per sample: the batch size only
        return np.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


class GaussianNoise(Augmentation):
    """Add normal noise of standard deviation `std` (photometric: masks stay as they are)."""

    type = "gaussian_noise"
    geometric = False

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        std: float = Field(0.1, ge=0)

    def __call__(self, x, rng):
        return x + rng.normal(0.0, self.params.std, x.shape).astype(np.float32)


@cnngraph.hookimpl
def cnngraph_register_optimizers(registry):
    registry.add_optimizer(SignSGD)


@cnngraph.hookimpl
def cnngraph_register_schedules(registry):
    registry.add_schedule(Halving)


@cnngraph.hookimpl
def cnngraph_register_datasets(registry):
    registry.add_dataset("stripes", load_stripes)


@cnngraph.hookimpl
def cnngraph_register_augmentations(registry):
    registry.add_augmentation(VerticalFlip)
    registry.add_augmentation(GaussianNoise)
