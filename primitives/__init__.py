"""jscorch's engine: formats, layouts, conversions and the sparse primitives.

Imports only jax and numpy, never the rest of jscorch.
"""
from ._errors import SparseCapacityError as SparseCapacityError
from ._errors import SparseEfficiencyWarning as SparseEfficiencyWarning
from ._errors import SparseFormatError as SparseFormatError
from .formats import Format as Format
from .formats import Level as Level
from .layout import Layout as Layout
from .settings import settings as settings

__all__ = ["Format", "Level", "Layout", "SparseCapacityError", "SparseEfficiencyWarning",
           "SparseFormatError", "settings"]
