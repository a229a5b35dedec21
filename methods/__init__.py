"""Built-in method plugins; importing this package registers them (order = leaderboard order)."""

from methods import full, random  # noqa: F401  (isort: skip, the order is the row order)
from methods import herding, kcenter  # noqa: F401  (isort: skip)
from methods import dm  # noqa: F401  (isort: skip)
from methods import idm, bacon  # noqa: F401  (isort: skip)
from methods import mtt  # noqa: F401  (isort: skip)
from methods import edc  # noqa: F401  (isort: skip)
