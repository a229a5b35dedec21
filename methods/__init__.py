"""Built-in method plugins; importing this package registers them (order = leaderboard order)."""

from methods import full, random  # noqa: F401
