"""Registers the built-in optimizers, schedules, datasets and augmentations through the hooks."""
from __future__ import annotations

from ..hookspecs import hookimpl

__all__: list[str] = []


@hookimpl
def cnngraph_register_optimizers(registry):
    from .optim import OPTIMIZERS
    for cls in OPTIMIZERS.values():
        registry.add_optimizer(cls)


@hookimpl
def cnngraph_register_schedules(registry):
    from .schedules import SCHEDULES
    for cls in SCHEDULES.values():
        registry.add_schedule(cls)


@hookimpl
def cnngraph_register_datasets(registry):
    from .data import LOADERS
    for name, loader in LOADERS.items():
        registry.add_dataset(name, loader)


@hookimpl
def cnngraph_register_augmentations(registry):
    from .augment import AUGMENTATIONS
    for cls in AUGMENTATIONS.values():
        registry.add_augmentation(cls)
