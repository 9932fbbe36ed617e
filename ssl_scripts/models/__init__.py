"""Encoders (each registered with its recipe) and the losses that train them. load_encoder reads an exported
encoder (a run's final/ folder) from anywhere the package is installed."""
from ssl_scripts.models.encoders import load_encoder  # noqa: F401  (the public way in)
