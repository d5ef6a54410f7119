"""Benchmarks of the dashboard itself (they need Panel, so they live beside it, not in engine)."""
BENCHMARKS = {"dashboard": "explorer.benchmarks.dashboard"}
