"""A planned kernel as one ``pallas_call``: the grid, its work balance, buffers and views.

:func:`run` is a JAX function of the einsum's flat inputs (a lowering rule wraps it
with ``mlir.lower_fun``). Around the kernel body that :mod:`.printer` traces it
builds, with XLA operations:

* the **grid**: ``G`` programs (static: from the number of units and the capacity,
  about :data:`WORK_PER_PROGRAM` stored entries and units each), and ``bounds``
  `[G + 1]`, the range of units each program runs, cut where the stored entries
  before a unit (:func:`work_before`, read from ``pos``) cross ``g / G`` of all of
  them: power-law rows do not leave one program with most of the work;
* a transposed driver's column-major copy (``loopnest.Transpose``, the counting sort
  the C kernel builds in its prologue) as a stable sort by column (:func:`transposed`);
* row views ``[n // width, lanes]`` of the buffers the kernel reads by rows
  (:func:`printer.views`), padded with zeros to a power of two lanes (Triton) or a
  multiple of 128 (a TPU's VMEM tiles, as ``[n // width, 1, lanes]``);
* an output the kernel accumulates into (``Race.ACCUMULATE``) starts as zeros passed
  in and aliased to it.

Platforms (``flavor``): ``"gpu"`` (Triton; every buffer a plain ref in global memory),
``"tpu"`` (Mosaic: ``bounds`` and the index buffers scalar-prefetched into SMEM, the
other scalar buffers in SMEM, row views in VMEM; whole arrays, so sizes are bounded by
those memories). ``interpret=True`` runs either in Pallas' interpreter (on the CPU).

Example:
  >>> import jax.numpy as jnp
  >>> balanced_bounds(jnp.array([0, 1, 2, 10, 11, 12]), 2).tolist()
  [0, 3, 5]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ... import loopnest as ir
from . import printer

#: Stored entries plus units per program (the grid's size is about their total over this).
WORK_PER_PROGRAM = 1024
TPU_LANES = 128


def work_before(bal: ir.Balance, index: dict) -> jax.Array:
  """`[units + 1]`: stored entries before each unit (read from the index buffers as
  ``bal.levels`` descend from it) plus the unit's number (an empty unit costs too).

  Args:
    bal: the kernel's balance.
    index: ``{buffer name: flat int32 array}`` of the index buffers.
  """
  u = jnp.arange(bal.units + 1, dtype=jnp.int32)
  b = jnp.minimum(u // bal.width, bal.batch - 1)
  before = b * bal.nse
  if bal.width > 1:
    p = u % bal.width
    for it in bal.levels:
      if isinstance(it, ir.Segment):
        p = jnp.minimum(index[it.pos][b * (it.parent_cap + 1) + p], it.cap)
      elif isinstance(it, ir.Range):
        p = p * it.size
    before = before + p
  before = jnp.where(u >= bal.units, bal.batch * bal.nse, before)
  return before + u


def balanced_bounds(before: jax.Array, programs: int) -> jax.Array:
  """`[programs + 1]` unit bounds: program ``g`` runs units ``bounds[g] .. bounds[g+1]``,
  the first unit whose ``before`` reaches ``g / programs`` of the total, onwards.

  Args:
    before: `[units + 1]` non-decreasing work before each unit (:func:`work_before`).
    programs: the grid's size.
  """
  total = before[-1]
  g = jnp.arange(programs + 1, dtype=before.dtype)
  targets = (total // programs) * g + ((total % programs) * g) // programs
  bounds = jnp.searchsorted(before, targets, side="left").astype(jnp.int32)
  units = before.shape[0] - 1
  return bounds.at[0].set(0).at[programs].set(units)


def grid_size(bal: ir.Balance) -> int:
  """The number of programs: about :data:`WORK_PER_PROGRAM` of capacity and units each."""
  work = bal.units + bal.batch * bal.nse
  return max(1, min(bal.units, -(-work // WORK_PER_PROGRAM)))


def transposed(t: ir.Transpose, pos: jax.Array, crd: jax.Array):
  """``(pos [cols + 1], crd [nse], perm [nse])`` of a (dense, compressed) structure sorted
  column-major (the C prologue's counting sort, as a stable sort): rows ascending within
  a column, ``perm`` the stored position of each entry; padding sorts last, coordinate
  ``rows`` (out of range)."""
  p = jnp.arange(t.nse, dtype=jnp.int32)
  row = (jnp.searchsorted(pos, p, side="right") - 1).astype(jnp.int32)
  valid = (p >= pos[0]) & (p < jnp.minimum(pos[t.rows], t.nse)) & (crd < t.cols) & (crd >= 0)
  key = jnp.where(valid, crd, t.cols)
  perm = jnp.argsort(key, stable=True).astype(jnp.int32)
  tcrd = jnp.where(valid[perm], row[perm], t.rows).astype(jnp.int32)
  counts = jnp.zeros((t.cols + 1,), jnp.int32).at[key].add(1)[:t.cols]
  tpos = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])
  return tpos, tcrd, perm


def _lanes(width: int, flavor: str) -> int:
  if flavor == "tpu":
    return -(-width // TPU_LANES) * TPU_LANES
  return pl.next_power_of_2(width)


def run(k: ir.Kernel, out_shape, *flat, flavor: str, interpret: bool):
  """The einsum's output (shape ``out_shape``) computed by ``k`` as a ``pallas_call``.

  Args:
    k: the planned kernel (``printer.check(k, ...) is None``).
    out_shape: the output's shape.
    flat: the einsum's flat inputs, as the kernel's buffers number them.
    flavor: ``"gpu"`` or ``"tpu"``.
    interpret: run in Pallas' interpreter.
  """
  dtype = jnp.dtype(k.dtype)
  index = {b.name: flat[b.arg].reshape(-1).astype(jnp.int32)
           for b in k.inputs if b.role is not ir.Role.VALUES}
  for t in k.prologue:
    index[t.pos], index[t.crd], index["perm"] = transposed(t, index[t.pos], index[t.crd])
  programs = grid_size(k.balance)
  scalars = {"bounds": balanced_bounds(work_before(k.balance, index), programs), **index}
  rows = printer.views(k)
  lanes = {w: _lanes(w, flavor) for w in rows.values()}
  tpu = flavor == "tpu"

  def view(x, name):
    if name not in rows:
      return x.reshape(-1)
    w = rows[name]
    x = jnp.pad(x.reshape(-1, w), ((0, 0), (0, lanes[w] - w)))
    return x[:, None, :] if tpu else x

  values = {b.name: view(flat[b.arg].astype(dtype), b.name)
            for b in k.inputs if b.role is ir.Role.VALUES}
  (out,) = k.outputs
  if out.name in rows:
    w = rows[out.name]
    shape = (out.size // w, 1, lanes[w]) if tpu else (out.size // w, lanes[w])
  else:
    shape = (out.size,)
  operands = {**scalars, **values}
  aliases = {}
  if k.race is ir.Race.ACCUMULATE:
    operands["out_init"] = jnp.zeros(shape, dtype)
    aliases = {len(operands) - 1: 0}
  names = list(operands) + [out.name]
  acc_dtype = jnp.promote_types(dtype, jnp.float32)

  def kernel(*refs):
    named = dict(zip(names, refs))
    g = pl.program_id(0)
    bounds = named["bounds"]
    printer.Printer(k, named, lanes, acc_dtype, tpu_rows=tpu).units(bounds[g], bounds[g + 1])

  result_shape = jax.ShapeDtypeStruct(shape, dtype)
  if tpu:
    from jax.experimental.pallas import tpu as pltpu

    def space(name):
      return pl.BlockSpec(memory_space=pltpu.VMEM if name in rows else pltpu.SMEM)

    rest = [n for n in operands if n not in scalars]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(scalars), grid=(programs,),
        in_specs=[space(n if n != "out_init" else out.name) for n in rest],
        out_specs=space(out.name))
    call = pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=result_shape,
                          input_output_aliases=aliases, interpret=interpret,
                          compiler_params=pltpu.CompilerParams(
                              dimension_semantics=("arbitrary",)))
  else:
    params = {}
    if not interpret:
      from jax.experimental.pallas import triton as pltriton
      params = dict(compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1))
    call = pl.pallas_call(kernel, grid=(programs,), out_shape=result_shape,
                          input_output_aliases=aliases, interpret=interpret, **params)
  result = call(*operands.values())
  if out.name in rows:
    w = rows[out.name]
    result = (result[:, 0, :w] if tpu else result[:, :w])
  return result.reshape(out_shape)

