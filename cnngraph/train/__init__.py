"""Training: data, augmentation, optimizers, schedules, checkpoints and the loop."""
