"""Engine: training loop, evaluation, inference and checkpoints."""
