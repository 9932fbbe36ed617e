"""What a run writes (final/, results.json, metrics, the tracker) and how (whole or not at all; one run per folder)."""
