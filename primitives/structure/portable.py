"""The portable rule of ``jscorch_structure``: jnp sorts, cumsums and scatters.

This is the reference the generated kernel is tested against, and the lowering
used without a C compiler or with ``jscorch.config.lowering = "portable"``. It is
the coordinate path of :func:`jscorch.primitives.convert.from_coordinates` with the
values replaced by entry numbers, so it returns each entry's output slot instead
of moving values.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .plan import COMPRESSED_CODE, DENSE_CODE, StructurePlan, level_codes


def _coordinates(plan: StructurePlan, inputs) -> jax.Array:
  """`[n, n_levels]` coordinates in the destination's storage order."""
  if plan.src is None:
    return inputs[0]
  from .. import convert   # convert dispatches to this package (a cycle at import time)
  coords = convert.leaf_coordinates(plan.src, tuple(inputs))
  return convert.logical_to_storage(plan.dst, convert.storage_to_logical(plan.src, coords))


def _levels(plan: StructurePlan, coords, valid):
  """Index buffers, the slot of each row (``nse`` when none) and the capacity count."""
  lay = plan.dst
  sizes, caps = lay.level_sizes, lay.capacities
  idt = lay.index_dtype
  n = coords.shape[0]
  node = jnp.zeros(n, idt)
  count = jnp.sum(valid).astype(idt)
  indices = []
  for k, code in enumerate(level_codes(lay)):
    size, cap, pcap = sizes[k], caps[k], lay.parent_capacity(k)
    ck = coords[:, k].astype(idt)
    if code == DENSE_CODE:
      node = node * size + jnp.minimum(ck, size - 1) if size else node
      continue
    if code == COMPRESSED_CODE:
      if lay.format.levels[k].unique and n:
        differs = (ck[1:] != ck[:-1]) | (node[1:] != node[:-1])
        first = jnp.concatenate([jnp.ones((1,), bool), differs]) & valid
      else:
        first = valid
      child = (jnp.cumsum(first) - 1).astype(idt)
      per_parent = jax.ops.segment_sum(first.astype(idt), jnp.where(first, node, pcap),
                                       num_segments=pcap)
      pos = jnp.minimum(jnp.concatenate([jnp.zeros((1,), idt), jnp.cumsum(per_parent)]), cap)
      crd = jnp.full(cap, size, idt).at[jnp.where(first, child, cap)].set(ck, mode="drop")
      indices += [pos.astype(idt), crd]
      node, count = child, first.sum().astype(idt)
    else:
      crd = jnp.full(cap, size, idt).at[jnp.where(valid, node, cap)].set(ck, mode="drop")
      indices.append(crd)
  slot = jnp.where(valid & (node < lay.nse), node, lay.nse).astype(idt)
  return indices, slot, count


def structure_one(plan: StructurePlan, *inputs):
  """One batch element: ``(*dst index buffers, map, count [])``; the map is ``dest [n]``
  (each entry's slot, ``nse`` for none) when duplicates are summed, else ``source [nse]``
  (each slot's entry, ``n`` for none)."""
  lay = plan.dst
  idt = lay.index_dtype
  n, n_levels = plan.n, plan.n_levels
  coords = _coordinates(plan, inputs)
  sizes = jnp.asarray(lay.level_sizes, coords.dtype)
  valid = jnp.all((coords >= 0) & (coords < sizes), axis=-1)
  coords = jnp.where(valid[:, None], coords, sizes).astype(idt)
  sizes = sizes.astype(idt)
  order = jnp.arange(n, dtype=idt)
  if plan.sort_levels:
    keys = [coords[:, k] for k in range(n_levels)]
    order = jax.lax.sort((*keys, order), num_keys=n_levels)[-1]
    coords = coords[order]
  valid = jnp.all(coords < sizes, axis=-1)
  row = jnp.arange(n, dtype=idt)                    # the merged row of each sorted entry
  if plan.sums and n:
    differs = jnp.any(coords[1:] != coords[:-1], axis=-1)
    first = jnp.concatenate([jnp.ones((1,), bool), differs]) & valid
    group = (jnp.cumsum(first) - 1).astype(idt)
    row = jnp.where(valid, group, n).astype(idt)
    coords = jnp.broadcast_to(sizes, coords.shape).at[jnp.where(first, group, n)].set(
        coords, mode="drop")
    valid = jnp.arange(n) < first.sum()
  indices, slot, count = _levels(plan, coords, valid)
  slot_sorted = slot.at[row].get(mode="fill", fill_value=lay.nse)
  dest = jnp.full(n, lay.nse, idt).at[order].set(slot_sorted)
  if plan.sums:
    return (*indices, dest, count)
  source = jnp.full(lay.nse, n, idt).at[dest].set(jnp.arange(n, dtype=idt), mode="drop")
  return (*indices, source, count)


def structure_portable(plan: StructurePlan, *inputs):
  """All batch elements (the leading axis of every input)."""
  return jax.vmap(lambda *x: structure_one(plan, *x))(*inputs)
