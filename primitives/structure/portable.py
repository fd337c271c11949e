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

from .plan import StructurePlan


def _coordinates(plan: StructurePlan, inputs) -> jax.Array:
  """`[n, n_levels]` coordinates in the destination's storage order."""
  if plan.src is None:
    return inputs[0]
  from .. import convert  # convert dispatches to this package (a cycle at import time)
  coords = convert.leaf_coordinates(plan.src, tuple(inputs))
  return convert.logical_to_storage(plan.dst, convert.storage_to_logical(plan.src, coords))


def _levels(plan: StructurePlan, coords, valid):
  """Index buffers, the slot of each row (``nse`` when none) and the capacity count.

  Each level assembles its own buffers (:meth:`Level.assemble`), so a new level type
  needs no edit here."""
  lay = plan.dst
  sizes, caps = lay.level_sizes, lay.capacities
  idt = lay.index_dtype
  node = jnp.zeros(coords.shape[0], idt)
  count = jnp.sum(valid).astype(idt)
  indices = []
  for k, lvl in enumerate(lay.format.levels):
    bufs, node, count = lvl.assemble(coords[:, k].astype(idt), node, valid, count,
                                     lay.parent_capacity(k), caps[k], sizes[k], idt)
    indices += [b.astype(idt) for b in bufs]
  slot = jnp.where(valid & (node < lay.nse), node, lay.nse).astype(idt)
  return indices, slot, jnp.asarray(count).astype(idt)


def passthrough_one(plan: StructurePlan, *inputs):
  """One batch element of an order-preserving conversion (``plan.passthrough``): the
  entry level's ``pos`` (a histogram of the dense coordinates above it, prefix-summed)
  and the ``crd`` of :attr:`StructurePlan.computed_levels` (each entry's coordinate,
  the level size for padding). Entries keep their slots, so nothing else is computed."""
  from .. import convert  # convert dispatches to this package (a cycle at import time)
  src, dst = plan.src, plan.dst
  idt = dst.index_dtype
  s_sizes, s_caps = src.level_sizes, src.capacities
  buffers = iter(inputs)
  cols, reached = [], None
  for j, lvl in enumerate(src.format.levels):
    bufs = tuple(next(buffers) for _ in lvl.buffers)
    pcap = src.parent_capacity(j)
    parent, crd = lvl.positions(bufs, pcap, s_caps[j], s_sizes[j], idt)
    here = parent < pcap
    if reached is not None:
      here &= convert.take(reached, parent, False)
    cols = [convert.take(c, parent, s_sizes[i]) for i, c in enumerate(cols)]
    cols.append(crd.astype(idt))
    reached = here
  e = plan.entry_level
  sizes = dst.level_sizes
  row = [cols[plan.dst_to_src[k]] for k in range(plan.n_levels)]
  node = jnp.zeros(src.nse, idt)
  counted = reached
  for k in range(e):
    counted &= (row[k] >= 0) & (row[k] < sizes[k])
    node = node * sizes[k] + row[k]
  pcap = dst.parent_capacity(e)
  per_parent = jax.ops.segment_sum(counted.astype(idt), jnp.where(counted, node, pcap),
                                   num_segments=pcap)
  pos = jnp.minimum(jnp.concatenate([jnp.zeros((1,), idt), jnp.cumsum(per_parent)]), dst.nse)
  out = [pos.astype(idt)]
  for k in plan.computed_levels:
    ok = reached & (row[k] >= 0) & (row[k] < sizes[k])
    out.append(jnp.where(ok, row[k], sizes[k]).astype(idt))
  return tuple(out)


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
  if plan.passthrough:
    return jax.vmap(lambda *x: passthrough_one(plan, *x))(*inputs)
  return jax.vmap(lambda *x: structure_one(plan, *x))(*inputs)
