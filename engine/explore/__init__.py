"""Exploring plans: searches, sweeps, the frontier, the job runner and the store."""
