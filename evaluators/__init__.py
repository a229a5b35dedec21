"""Built-in evaluation protocols; importing this package registers them."""

from evaluators import hard  # noqa: F401
