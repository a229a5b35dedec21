"""dcbench: a benchmark suite and leaderboard for dataset distillation."""

__version__ = "0.1.0"
