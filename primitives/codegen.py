"""Former home of the einsum C generator, kept for the SpGEMM template's type tables.

The generator is now two modules: :mod:`jscorch.primitives.plan` (every scheduling
decision, written into the loop-nest IR of :mod:`jscorch.primitives.loopnest`) and
:mod:`jscorch.primitives.backends.c.printer` (the IR printed as C).
"""
from __future__ import annotations

import numpy as np

from .backends.c.printer import generate as generate  # noqa: F401

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_I_TYPES = {np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t"}
