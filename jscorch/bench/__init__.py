"""``python -m jscorch bench``: jscorch against the alternatives, in one process, same data."""
from jscorch.bench.runner import main as main

__all__ = ["main"]
