"""Training: data, augmentation, optimizers, schedules, checkpoints and the loop.

``cnngraph.train`` is both this package and the training function: importing any submodule
(``cnngraph.train.checkpoint``, which ``load_spec`` does) binds the package to the attribute
``cnngraph.train``, so the package itself is callable and forwards to :func:`cnngraph.train.loop.train`.
"""
import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .loop import train
        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
