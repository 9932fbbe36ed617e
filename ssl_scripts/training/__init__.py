"""Training: the one loop (loop.py), the Run around it (run.py), checkpoints, optimizers, schedules, instruments."""
