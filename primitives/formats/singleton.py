"""The ``singleton`` level: one coordinate ``crd[p]`` per parent position ``p`` (COO).

A singleton level has no ``pos``: position ``p`` is the only child of parent
position ``p``, so its capacity is its parent's (``nse`` when it is last). Its
parent must be a non-unique compressed or singleton level (checked by
:class:`~jscorch.primitives.formats.Format`).

Example:
  >>> from jscorch.primitives.formats import singleton
  >>> singleton, singleton.buffers, singleton.branchless
  (singleton, ('crd',), True)
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .. import loopnest
from .level import Level, check_coordinates, register_level


@register_level
@dataclasses.dataclass(frozen=True, repr=False)
class Singleton(Level):
  """A singleton level (TACO ``singleton``)."""
  name = "singleton"
  buffers = ("crd",)
  branchless = True

  def capacity(self, parent_cap, size, nse, last):
    return nse if last else parent_cap

  def positions(self, bufs, parent_cap, cap, size, idt):
    (crd,) = bufs
    return jnp.arange(cap, dtype=idt), crd

  def assemble(self, crd, node, valid, used, parent_cap, cap, size, idt):
    out = jnp.full(cap, size, idt).at[jnp.where(valid, node, cap)].set(crd, mode="drop")
    return (out,), node, used

  def iterate(self, coord, src, level, size, cap, parent_cap, unit):
    return loopnest.Single(coord, src, level, size, cap, loopnest.buffer_name("crd", src, level))

  def check(self, bufs, parent_live, cap, size, k, func, where):
    crd = np.asarray(bufs[0])
    live = np.zeros(cap, bool)
    n = min(cap, len(parent_live))
    live[:n] = np.asarray(parent_live, bool)[:n]
    check_coordinates(crd, live, size, k, func, where)
    return np.arange(cap), crd, live


singleton = Singleton()
