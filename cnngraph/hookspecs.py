"""Every hook a cnngraph plugin can implement, in one place.

A plugin is any module or object with functions decorated ``@cnngraph.hookimpl`` whose names match
these specs. The built-in layer library registers through exactly these hooks.

Example
-------
>>> import cnngraph
>>> class Swish(cnngraph.Op): ...           # doctest: +SKIP
>>> @cnngraph.hookimpl
... def cnngraph_register_ops(registry):
...     registry.add(Swish)                   # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

__all__ = ["hookspec", "hookimpl", "PROJECT"]

PROJECT = "cnngraph"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def cnngraph_register_ops(registry: "Registry") -> None:
    """Register layer ops: call ``registry.add(OpClass)`` for each :class:`cnngraph.Op` subclass.

    The op's ``type`` is its name in spec files; registering a name twice is an error that names
    both plugins.
    """


@hookspec
def cnngraph_register_optimizers(registry: "Registry") -> None:
    """Register optimizers: ``registry.add_optimizer(cls)`` with ``cls.type``, ``cls.Params``, ``step``."""


@hookspec
def cnngraph_register_schedules(registry: "Registry") -> None:
    """Register learning-rate schedules: ``registry.add_schedule(cls)`` with ``cls.type``, ``cls.Params``, ``lr``."""


@hookspec
def cnngraph_register_datasets(registry: "Registry") -> None:
    """Register dataset loaders: ``registry.add_dataset(name, loader)`` where
    ``loader(cfg, input_shape, seed, base_dir)`` returns a :class:`cnngraph.train.data.Dataset`, built with
    ``finish_dataset(RawSplits(...), cfg, seed)``; the spec's ``data: {options: {...}}`` is ``cfg.options``."""


@hookspec
def cnngraph_register_augmentations(registry: "Registry") -> None:
    """Register training augmentations: ``registry.add_augmentation(cls)`` with ``cls.type``,
    ``cls.Params`` and ``__call__(x, rng)`` on an (N, C, H, W) batch."""
