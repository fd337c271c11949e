"""The ``compressed`` level: segment offsets ``pos`` per parent position and coordinates ``crd``.

The children of parent position ``q`` are positions ``pos[q] <= p < pos[q + 1]``
with coordinates ``crd[p]`` (CSR's column level, every level of DCSR / CSF, COO's
first level). ``pos`` `[parent_cap + 1]` starts at 0, never decreases and stays flat
after the parents in use; ``crd`` `[cap]` holds the dimension size at padding.

Capacity: a unique, non-last level holds at most ``min(parent_cap * size, nse)``
positions; a non-unique or last level holds ``nse``.

Example:
  >>> from jscorch.primitives.formats import compressed
  >>> compressed(unique=False), compressed.buffers, compressed.has_pos
  (compressed(nonunique), ('pos', 'crd'), True)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .. import loopnest
from .._errors import SparseFormatError
from .level import Level, check_coordinates, check_segments, register_level, short


@register_level
@dataclasses.dataclass(frozen=True, repr=False)
class Compressed(Level):
  """A compressed level (TACO ``compressed``)."""
  name = "compressed"
  buffers = ("pos", "crd")

  def capacity(self, parent_cap, size, nse, last):
    if self.unique and not last:
      return min(parent_cap * size, nse)
    return nse

  def positions(self, bufs, parent_cap, cap, size, idt):
    pos, crd = bufs
    # parent[p] = number of q with pos[q + 1] <= p (positions past the end -> out of range)
    parent = jnp.cumsum(jnp.zeros(cap, idt).at[pos[1:]].add(1, mode="drop"))
    return parent, crd

  def assemble(self, crd, node, valid, used, parent_cap, cap, size, idt):
    if self.unique:
      differs = (crd[1:] != crd[:-1]) | (node[1:] != node[:-1])
      first = jnp.concatenate([jnp.ones((1,), bool), differs]) & valid
    else:
      first = valid
    child = (jnp.cumsum(first) - 1).astype(idt)
    per_parent = jax.ops.segment_sum(first.astype(idt), jnp.where(first, node, parent_cap),
                                     num_segments=parent_cap)
    pos = jnp.minimum(jnp.concatenate([jnp.zeros((1,), idt), jnp.cumsum(per_parent)]), cap)
    out = jnp.full(cap, size, idt).at[jnp.where(first, child, cap)].set(crd, mode="drop")
    return (pos.astype(idt), out), child, first.sum()

  def iterate(self, coord, src, level, size, cap, parent_cap, unit):
    return loopnest.Segment(coord, src, level, size, cap, parent_cap,
                            loopnest.buffer_name("pos", src, level),
                            loopnest.buffer_name("crd", src, level), unit)

  def check(self, bufs, parent_live, cap, size, k, func, where):
    pos, crd = (np.asarray(b) for b in bufs)
    if pos[0] != 0 or np.any(np.diff(pos) < 0) or pos[-1] > cap:
      raise SparseFormatError(
          f"{func}: pos of level {k}{where} must start at 0, never decrease and end at "
          f"most at {cap}; got pos={short(pos)}. Build buffers with js.from_coo.")
    dead = ~np.asarray(parent_live, bool)
    if np.any(np.diff(pos)[dead] != 0):
      raise SparseFormatError(
          f"{func}: pos of level {k}{where} gives entries to padding parents (positions "
          f">= {int(np.argmax(dead))}); got pos={short(pos)}.")
    used = int(pos[-1])
    parent = np.full(cap, len(pos) - 1)
    parent[:used] = np.repeat(np.arange(len(pos) - 1), np.diff(pos))
    live = np.arange(cap) < used
    check_coordinates(crd, live, size, k, func, where)
    check_segments(crd[:used], parent[:used], self, k, func, where)
    return parent, crd, live


compressed = Compressed()
