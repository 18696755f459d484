"""Soundness harness (MATH.md §9): synthetic tasks with known true risk, coverage
experiments over many independent samples, and planted-bug controls that must be caught."""
