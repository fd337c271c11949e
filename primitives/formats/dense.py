"""The ``dense`` level: every coordinate of every parent position is present, no buffers.

Position ``p`` of a dense level of size ``n`` has parent ``p // n`` and coordinate
``p % n``, so a coordinate is *located* (not searched) and the level needs no index
buffer. Its capacity is ``parent_cap * n``.

Example:
  >>> from jscorch.primitives.formats import dense
  >>> dense, dense.buffers, dense.full, dense.capacity(parent_cap=3, size=4, nse=5, last=False)
  (dense, (), True, 12)
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .. import loopnest
from .._errors import SparseFormatError
from .level import Level, register_level


@register_level
@dataclasses.dataclass(frozen=True, repr=False)
class Dense(Level):
  """A dense level (TACO ``dense``): always ordered and unique."""
  name = "dense"
  buffers = ()
  full = True
  has_locate = True

  def __post_init__(self):
    if not (self.ordered and self.unique):
      raise SparseFormatError(
          "Level: a dense level is always ordered and unique; got "
          f"ordered={self.ordered}, unique={self.unique}. Use a compressed level.")

  def capacity(self, parent_cap, size, nse, last):
    return parent_cap * size

  def fixed_capacity(self, parent_cap, size):
    return parent_cap * size

  def positions(self, bufs, parent_cap, cap, size, idt):
    here = jnp.arange(cap, dtype=idt)
    return here // max(size, 1), here % max(size, 1)

  def assemble(self, crd, node, valid, used, parent_cap, cap, size, idt):
    node = node * size + jnp.minimum(crd, size - 1) if size else node
    return (), node, used

  def iterate(self, coord, src, level, size, cap, parent_cap, unit):
    return loopnest.Range(coord, size, level, (src,), unit)

  def locate(self, parent, coord, size):
    return loopnest.Add((loopnest.Mul((parent, loopnest.Const(size))), coord))

  def check(self, bufs, parent_live, cap, size, k, func, where):
    here = np.arange(cap)
    parent = here // max(size, 1)
    return parent, here % max(size, 1), np.asarray(parent_live, bool)[parent]


dense = Dense()
