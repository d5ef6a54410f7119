"""Networks and data: the zoo, datasets, shipped baselines and planned checkpoints."""
