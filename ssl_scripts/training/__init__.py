"""The Run around the loop (ssl_scripts/loop.py): setup, the cadence of logs, checkpoints and stops, the stop
signals, checkpoints and resume, the training's options and opt-in instruments."""
