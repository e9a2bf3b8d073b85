"""`python -m train`: data, training loop, optimizer and schedules, distributed set-up, checkpoints, run records, loggers."""
