"""Training: the loop, model wrappers, losses, optimizers, freezing, partitioning, metrics, data."""
