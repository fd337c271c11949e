"""``jscorch_structure``: the integer structure of a conversion or coalescing step.

The primitive computes only index buffers: the destination's level buffers, the
output slot of every source entry (``dest``) and the number of entries the
destination needs (for capacity checks). Values then move in XLA
(``scatter-add(data, dest)``, or :func:`~jscorch.primitives.take.take` of the slot
map), so they stay differentiable (each has jvp and transpose rules) and ``vmap`` of
values needs nothing from this module.

:func:`from_coordinates` and :func:`convert` are the entry points used by
:mod:`jscorch.primitives.convert`; they accept the same arguments as its functions
of the same names and return the same buffers.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ..capacity import enforce_capacity
from ..layout import Layout
from ..take import take
from . import kernel
from .plan import StructurePlan, make_plan
from .portable import structure_portable

# -- jscorch_structure: level buffers (or coordinates) -> level buffers + slots ------------
# Inputs, each with one leading batch axis `[B, ...]`: the coordinate list `[B, n, L]` in the
# destination's storage order (plan.src is None), or the source's index buffers in leaf
# order. Outputs: the destination's index buffers, the map (with duplicates summed, dest
# `[B, n]`: each entry's slot or nse; else source `[B, nse]`: each slot's entry or n) and
# count `[B]`, the entries the destination needs.
structure_p = Primitive("jscorch_structure")
structure_p.multiple_results = True


def structure(plan: StructurePlan, *inputs) -> list[jax.Array]:
  """Binds ``jscorch_structure`` (see the section banner for the buffer contract)."""
  return structure_p.bind(*inputs, plan=plan)


def _structure_impl(*inputs, plan: StructurePlan):
  return _compiled(plan)(*inputs)


_cache: dict = {}


def _compiled(plan):
  if plan not in _cache:
    _cache[plan] = jax.jit(lambda *x: structure_p.bind(*x, plan=plan))
  return _cache[plan]


def _structure_abstract_eval(*avals, plan: StructurePlan):
  batch = avals[0].shape[0]
  dst = plan.dst
  idt = dst.index_dtype
  if plan.passthrough:              # the entry level's pos and the computed crds only
    e = plan.entry_level
    return [jax.core.ShapedArray((batch, dst.parent_capacity(e) + 1), idt)] + \
        [jax.core.ShapedArray((batch, dst.nse), idt) for _ in plan.computed_levels]
  outs = [jax.core.ShapedArray((batch,) + shape, idt) for _, _, shape in dst.index_shapes]
  outs.append(jax.core.ShapedArray((batch, plan.n if plan.sums else dst.nse), idt))
  outs.append(jax.core.ShapedArray((batch,), idt))
  return outs


def _structure_jvp(primals, tangents, *, plan: StructurePlan):
  outs = structure(plan, *primals)
  return outs, [ad.Zero.from_primal_value(o) for o in outs]


def _structure_batching_rule(args, dims, *, plan: StructurePlan):
  size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
  front = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size,) + a.shape)
           for a, d in zip(args, dims)]
  inner = front[0].shape[1]           # every buffer's own (flat) batch dim
  flat = [a.reshape((size * inner,) + a.shape[2:]) for a in front]    # (sizes may be 0)
  outs = structure(plan, *flat)
  return [o.reshape((size, inner) + o.shape[1:]) for o in outs], [0] * len(outs)


def _structure_portable_lowering(ctx, *args, plan: StructurePlan):
  fun = lambda *x: structure_portable(plan, *x)      # noqa: E731
  return mlir.lower_fun(fun, multiple_results=True)(ctx, *args)


# -- entry points ---------------------------------------------------------------------------
def _flat_batch(x, n_batch):
  return x.reshape((math.prod(x.shape[:n_batch]),) + x.shape[n_batch:])


def _finish(lay: Layout, plan: StructurePlan, outs, data, func, check):
  """Index buffers with their batch shape, values moved to their slots, capacity enforced."""
  nb, batch = lay.n_batch, lay.batch_shape
  *indices, dest, count = outs
  data = jnp.asarray(data)
  indices = tuple(i.reshape(batch + i.shape[1:]) for i in indices)
  flat = _flat_batch(data, nb)
  if not plan.sums:                 # one entry per slot: a gather
    values = take(flat, dest) if flat.shape[0] else \
        jnp.zeros((0, lay.nse) + flat.shape[2:], flat.dtype)
    return _checked(lay, plan, values.reshape(batch + values.shape[1:]), count, func,
                    check), indices
  if flat.dtype == jnp.bool_:
    move = lambda d, s: jnp.zeros((lay.nse,) + d.shape[1:], d.dtype).at[s].max(  # noqa: E731
        d, mode="drop")
  else:
    move = lambda d, s: jnp.zeros((lay.nse,) + d.shape[1:], d.dtype).at[s].add(  # noqa: E731
        d, mode="drop")
  if nb == 0:                       # (a batched gather or scatter is slower in XLA)
    values = move(data, dest[0])[None]
  elif flat.shape[0]:
    values = jax.vmap(move)(flat, dest)
  else:
    values = jnp.zeros((0, lay.nse) + flat.shape[2:], flat.dtype)
  return _checked(lay, plan, values.reshape(batch + values.shape[1:]), count, func,
                  check), indices


def _checked(lay: Layout, plan: StructurePlan, values, count, func, check):
  """``values``, with the capacity enforced where the destination could overflow."""
  if plan.n <= lay.nse:              # count <= n: the capacity cannot overflow
    return values
  needed = count if count.size else jnp.zeros((), count.dtype)
  return enforce_capacity(needed, lay.nse, values, func, check=check)


def from_coordinates(lay: Layout, coords: jax.Array, data: jax.Array, *, func: str,
                     is_sorted: bool = False, is_unique: bool = False, check: bool = True):
  """:func:`jscorch.primitives.convert.from_coordinates` through ``jscorch_structure``."""
  nb = lay.n_batch
  n = coords.shape[nb]
  plan = make_plan(lay, n=n, is_sorted=is_sorted, is_unique=is_unique)
  idt = np.dtype(lay.index_dtype)
  if np.dtype(coords.dtype) != idt:
    # clamp in the caller's dtype first, so a narrowing cast cannot wrap padding into range
    sizes = jnp.asarray(plan.dst.level_sizes, coords.dtype)
    bad = jnp.any((coords < 0) | (coords >= sizes), axis=-1, keepdims=True)
    coords = jnp.where(bad, sizes, coords).astype(idt)
  outs = structure(plan, _flat_batch(coords, nb))
  return _finish(lay, plan, outs, data, func, check)


def coordinate_slots(lay: Layout, coords: jax.Array):
  """:func:`jscorch.primitives.convert.coordinate_slots` through ``jscorch_structure``."""
  nb, batch = lay.n_batch, lay.batch_shape
  n = coords.shape[nb]
  plan = make_plan(lay, n=n, is_sorted=False, is_unique=False)
  assert plan.sums, "coordinate_slots needs a unique destination format"
  idt = np.dtype(lay.index_dtype)
  if np.dtype(coords.dtype) != idt:
    sizes = jnp.asarray(plan.dst.level_sizes, coords.dtype)
    bad = jnp.any((coords < 0) | (coords >= sizes), axis=-1, keepdims=True)
    coords = jnp.where(bad, sizes, coords).astype(idt)
  *indices, dest, count = structure(plan, _flat_batch(coords, nb))
  indices = tuple(i.reshape(batch + i.shape[1:]) for i in indices)
  return indices, dest.reshape(batch + (n,)), count.reshape(batch)


def convert(src: Layout, dst: Layout, data: jax.Array, indices, *, func: str = "asformat",
            check: bool = True):
  """:func:`jscorch.primitives.convert.convert` through ``jscorch_structure``."""
  plan = make_plan(dst, src)
  flat = [_flat_batch(i, src.n_batch) for i in indices]
  if plan.passthrough:
    return _passthrough(src, dst, plan, data, indices, structure(plan, *flat))
  outs = structure(plan, *flat)
  return _finish(dst, plan, outs, data, func, check)


def _passthrough(src: Layout, dst: Layout, plan: StructurePlan, data, indices, outs):
  """An order-preserving conversion: the values and the source's per-entry ``crd``
  buffers are the output's as they are (no gather); ``outs`` (the entry level's ``pos``
  and the computed ``crd``) fill in the rest, in ``dst``'s leaf order."""
  batch, idt = dst.batch_shape, dst.index_dtype
  src_bufs, b = {}, 0
  for j, lvl in enumerate(src.format.levels):
    for role in lvl.buffers:
      src_bufs[(j, role)] = indices[b]
      b += 1
  computed = iter(o.reshape(batch + o.shape[1:]) for o in outs)
  pos = next(computed)
  reused = plan.reused_levels
  out = []
  for k, lvl in enumerate(dst.format.levels):
    for role in lvl.buffers:
      if role == "pos":
        out.append(pos)
      elif k in reused:
        out.append(src_bufs[(reused[k], "crd")].astype(idt))
      else:
        out.append(next(computed))
  return jnp.asarray(data), tuple(out)


structure_p.def_impl(_structure_impl)
structure_p.def_abstract_eval(_structure_abstract_eval)
ad.primitive_jvps[structure_p] = _structure_jvp
batching.primitive_batchers[structure_p] = _structure_batching_rule
mlir.register_lowering(structure_p, _structure_portable_lowering)
mlir.register_lowering(structure_p, kernel.lowering(_structure_portable_lowering),
                       platform="cpu")
