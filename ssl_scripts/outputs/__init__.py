"""What a run writes: final/ and results.json, config.json with its environment, the tracker and metrics.jsonl,
and the lock that makes OUTPUT_DIR one run's."""
