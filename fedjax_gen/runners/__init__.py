"""Experiment drivers: each `main(argv)` behind a thin script in experiments/."""
