"""Built-in evaluation protocols; importing this package registers them."""

from evaluators import hard, soft  # noqa: F401
