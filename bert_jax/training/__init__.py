"""Training: the pretraining loop and its parts (steps, optimizers and schedules, checkpoints, metrics)."""
