"""Structure kernels: conversions and coalescing as integer structure + XLA value moves.

See :mod:`.primitive` (the ``jscorch_structure`` primitive and its entry points),
:mod:`.plan` (the static plan), :mod:`.portable` (the jnp reference rule) and
:mod:`.kernel` (the generated C lowering).
"""
from .plan import StructurePlan as StructurePlan
from .plan import make_plan as make_plan
from .plan import supports as supports
from .primitive import convert as convert
from .primitive import coordinate_slots as coordinate_slots
from .primitive import from_coordinates as from_coordinates
from .primitive import structure as structure
from .primitive import structure_p as structure_p

__all__ = ["StructurePlan", "convert", "coordinate_slots", "from_coordinates", "make_plan",
           "structure", "structure_p", "supports"]
