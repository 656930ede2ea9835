"""Training: the loop, losses, batched augmentation and data-parallel runs."""
