"""Portable evaluation of a sparse einsum: joins, gathers, one dense einsum, one scatter.

This is the reference lowering (``jscorch.config.lowering = "portable"``); it is
built from sorts, gathers, ``jnp.einsum`` and ``segment_sum`` and runs on every
backend. Following the :class:`Plan`:

1. every sparse source becomes a **row table**: one row per stored entry, holding
   the coordinate of each batch/sparse index, the row's position in the source's
   flattened values, and a validity bit (padding and disagreeing repeated indices
   are invalid);
2. sources are **joined** in plan order by sort-merge on their shared indices:
   a *lookup* keeps the row count, an *expand* enumerates all matching pairs into
   ``spec.work`` rows (overflow is never silent);
3. each operand is **gathered** at the rows' coordinates (dense operands by their
   bound axes, sparse values by row position) and multiplied in one
   ``jnp.einsum`` over the row axis, masked by validity;
4. the per-row values are **assembled**: scattered into a dense result,
   segment-summed into the sampled pattern, or coalesced into a new pattern.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import convert
from .capacity import enforce_capacity
from .einsum_spec import DENSE_OUT, SAMPLED_OUT, SPARSE_OUT, EinsumSpec
from .formats import CSC as _CSC
from .formats import CSR as _CSR
from .layout import Layout
from .planner import PATTERN, make_plan, source_operand

_ROW = -1        # the row axis id in the final jnp.einsum


@dataclasses.dataclass
class _Table:
  """Rows of a (partial) join: coordinates per index id, source row per source."""
  cols: dict
  ptr: dict
  valid: jax.Array

  @property
  def n(self) -> int:
    return self.valid.shape[0]

  def take(self, rows) -> _Table:
    return _Table({i: c[rows] for i, c in self.cols.items()},
                  {s: p[rows] for s, p in self.ptr.items()}, self.valid[rows])


def _rows(spec: EinsumSpec, source: int, indices) -> _Table:
  """The row table of one sparse source (rows = flattened ``[*batch, nse]``)."""
  op = source_operand(spec, source)
  lay = op.layout
  coords = convert.storage_to_logical(lay, convert.leaf_coordinates(lay, indices))
  n_rows = math.prod(lay.batch_shape) * lay.nse
  idt = coords.dtype
  columns = []
  for axis in range(len(lay.batch_shape)):
    iota = jax.lax.broadcasted_iota(idt, lay.batch_shape + (lay.nse,), axis)
    columns.append(iota.reshape(n_rows))
  flat = coords.reshape(n_rows, lay.n_sparse)
  columns += [flat[:, d] for d in range(lay.n_sparse)]
  valid = jnp.all(flat < jnp.asarray(lay.sparse_shape, idt), axis=1)
  cols = {}
  for index, col in zip(op.bound, columns):
    if index in cols:
      valid &= cols[index] == col
    else:
      cols[index] = col
  return _Table(cols, {source: jnp.arange(n_rows, dtype=idt)}, valid)


def _merge_sorted(t_keys, s_keys, n_t, n_s):
  """Sorts S rows then T rows by key (S first on ties); returns the merged order info."""
  flag = jnp.concatenate([jnp.zeros(n_s, jnp.int32), jnp.ones(n_t, jnp.int32)])
  ids = jnp.arange(n_s + n_t, dtype=jnp.int32)
  keys = [jnp.concatenate([s, t]) for s, t in zip(s_keys, t_keys)]
  out = jax.lax.sort((*keys, flag, ids), num_keys=len(keys) + 1)
  keys, flag, ids = out[:-2], out[-2], out[-1]
  differs = jnp.zeros(max(n_s + n_t - 1, 0), bool)
  for k in keys:
    differs |= k[1:] != k[:-1]
  new_group = jnp.concatenate([jnp.ones((min(n_s + n_t, 1),), bool), differs])
  return flag == 0, ids, new_group


def _keys(table: _Table, index_ids, sizes_of, invalid_to_size: bool):
  out = []
  for i in index_ids:
    col = table.cols[i]
    out.append(jnp.where(table.valid, col, sizes_of(i)) if invalid_to_size else col)
  return out


def _lookup(spec, table: _Table, src: _Table, source: int) -> _Table:
  """Joins a unique source whose bound indices are all bound already (≤ 1 match per row)."""
  ids = list(src.cols)
  n_t, n_s = table.n, src.n
  is_s, order, new_group = _merge_sorted(
      _keys(table, ids, spec.size, True), _keys(src, ids, spec.size, True), n_t, n_s)
  pos = jnp.arange(n_t + n_s, dtype=jnp.int32)
  last_s = jax.lax.cummax(jnp.where(is_s, pos, -1))
  group = jnp.cumsum(new_group, dtype=jnp.int32)
  same = (last_s >= 0) & (group[jnp.maximum(last_s, 0)] == group)
  s_row = order[jnp.maximum(last_s, 0)]
  t_at = jnp.where(is_s, n_t, order - n_s)
  match = jnp.zeros(n_t, jnp.int32).at[t_at].set(s_row, mode="drop")
  found = jnp.zeros(n_t, bool).at[t_at].set(same, mode="drop")
  joined = dataclasses.replace(table, ptr=dict(table.ptr), valid=table.valid & found)
  joined.valid &= src.valid[match]
  joined.ptr[source] = src.ptr[source][match]
  return joined


def _expand(spec, table: _Table, src: _Table, source: int, work: int | None):
  """Joins a source that binds new indices: every matching (row, source row) pair.

  ``work`` is the static row capacity; ``None`` (eager only) sizes it exactly.
  """
  shared = [i for i in src.cols if i in table.cols]
  n_t, n_s = table.n, src.n
  is_s, order, new_group = _merge_sorted(
      _keys(table, shared, spec.size, True), _keys(src, shared, spec.size, True), n_t, n_s)
  pos = jnp.arange(n_t + n_s, dtype=jnp.int32)
  s_before = jnp.cumsum(is_s, dtype=jnp.int32) - is_s    # S rows strictly before each position
  group_start = jax.lax.cummax(jnp.where(new_group, pos, 0))
  lo = s_before[group_start]
  count = s_before - lo
  t_at = jnp.where(is_s, n_t, order - n_s)
  lo_t = jnp.zeros(n_t, jnp.int32).at[t_at].set(lo, mode="drop")
  count_t = jnp.zeros(n_t, jnp.int32).at[t_at].set(count, mode="drop")
  count_t = jnp.where(table.valid, count_t, 0)
  s_order = jnp.zeros(n_s, jnp.int32).at[jnp.where(is_s, s_before, n_s)].set(order, mode="drop")
  ends = jnp.cumsum(count_t, dtype=jnp.int32)
  total = ends[-1] if n_t else jnp.int32(0)
  if work is None:
    work = int(total)
  p = jnp.arange(work, dtype=jnp.int32)
  t = jnp.minimum(jnp.searchsorted(ends, p, side="right"), max(n_t - 1, 0)).astype(jnp.int32)
  j = p - (ends[t] - count_t[t])
  s = s_order[jnp.clip(lo_t[t] + j, 0, max(n_s - 1, 0))]
  joined = table.take(t)
  joined.valid = joined.valid & (p < total) & src.valid[s]
  for i, col in src.cols.items():
    if i not in joined.cols:
      joined.cols[i] = col[s]
  joined.ptr[source] = src.ptr[source][s]
  return joined, total


def _join(spec: EinsumSpec, groups, pattern, work):
  """Joins the sparse sources in plan order; returns the table and the largest expansion."""
  table, needed = None, None
  for mode, source in make_plan(spec).steps:
    idx = pattern if source == PATTERN else groups[source][1:]
    src = _rows(spec, source, idx)
    if mode == "scan":
      table = src
    elif mode == "lookup":
      table = _lookup(spec, table, src, source)
    else:
      table, total = _expand(spec, table, src, source, work)
      needed = total if needed is None else jnp.maximum(needed, total)
  return table, needed


def exact_capacities(spec: EinsumSpec, *flat) -> tuple[int, int]:
  """Eager symbolic phase: the exact ``(work, nse)`` that ``spec`` needs on these inputs.

  ``work`` is the largest intermediate join; ``nse`` the most distinct output
  entries of any batch element (0 unless the output is a new sparse pattern).
  """
  groups, pattern = spec.split_inputs(flat)
  if is_empty(spec, out=False):         # (a new pattern's nse is what is being sized)
    return 0, 0
  table, needed = _join(spec, groups, pattern, None)
  work = 0 if needed is None else int(needed)
  if spec.out_kind != SPARSE_OUT:
    return work, 0
  out = spec.out_operand
  valid = np.asarray(table.valid)
  keys = np.stack([np.asarray(table.cols[i]) for i in out.bound], axis=1)[valid]
  if not len(keys):
    return work, 0
  rows = np.unique(keys, axis=0)
  n_b = out.layout.n_batch
  if not n_b:
    return work, len(rows)
  _, counts = np.unique(rows[:, :n_b], axis=0, return_counts=True)
  return work, int(counts.max())


def in_float32(spec: EinsumSpec, fn):
  """``fn(*flat)`` (flat inputs to flat outputs of ``spec``) with float16 / bfloat16 values
  computed in float32 and rounded once at the end, as ``jnp`` accumulates them (summed in
  bfloat16, a row of 4096 ones stalls at 256); other dtypes run as they are."""
  def run(*flat):
    groups, pattern = spec.split_inputs(flat)
    dtype = jnp.result_type(*[g[0].dtype for g in groups])
    if dtype not in (jnp.float16, jnp.bfloat16):
      return fn(*flat)
    wide = [b for g in groups for b in [g[0].astype(jnp.float32), *g[1:]]]
    out = fn(*wide, *pattern)
    return [out[0].astype(dtype), *out[1:]]
  return run


def evaluate(spec: EinsumSpec, *flat):
  """Evaluates ``spec`` on flat inputs; returns the list of flat outputs."""
  if spec.work == 0 and is_spgemm(spec):      # (sized without work: see is_spgemm)
    return spgemm(spec, *flat)
  if spec.work == 0 and sampled_product_form(spec) is not None:
    return [sampled_product(spec, *flat)]
  if spec.work == 0 and dense_product_form(spec) is not None:
    return [dense_product(spec, *flat)]
  groups, pattern = spec.split_inputs(flat)
  if is_empty(spec):
    return _zeros(spec, groups[0][0].dtype)
  table, needed_work = _join(spec, groups, pattern, spec.work)

  operands, subscripts = [], []
  for k, (op, bufs) in enumerate(zip(spec.operands, groups)):
    if op.sparse:
      value, block = _sparse_values(table, k, op, bufs[0])
      operands.append(value)
      subscripts.append((_ROW,) + block)
      continue
    array = bufs[0]
    bound = [a for a, i in enumerate(op.indices) if i in table.cols]
    if not bound:
      operands.append(array)
      subscripts.append(op.indices)
      continue
    rest = [a for a in range(array.ndim) if a not in bound]
    moved = jnp.transpose(array, bound + rest)
    where = tuple(table.cols[op.indices[a]] for a in bound)
    operands.append(moved.at[where].get(mode="fill", fill_value=0))
    subscripts.append((_ROW,) + tuple(op.indices[a] for a in rest))
  dtype = jnp.result_type(*[o.dtype for o in operands])
  operands.append(table.valid.astype(dtype))
  subscripts.append((_ROW,))

  if spec.out_kind == DENSE_OUT:
    out = _assemble_dense(spec, table, operands, subscripts)
  elif spec.out_kind == SAMPLED_OUT:
    out = [_assemble_sampled(spec, table, operands, subscripts)]
  else:
    out = _assemble_sparse(spec, table, operands, subscripts)
  if needed_work is not None:
    out[0] = enforce_capacity(needed_work, spec.work, out[0],
                              "einsum (intermediate join, work=)", check=False)
  return out


def is_empty(spec: EinsumSpec, *, out: bool = True) -> bool:
  """Whether the result is zero (or empty) by shapes alone: some index has size 0, a
  sparse operand has capacity 0 (the product has a zero factor everywhere), or (with
  ``out``) a sampled or new pattern has no slot to fill."""
  return any(size == 0 for _, size in spec.sizes) or \
      any(op.sparse and op.layout.nse == 0 for op in spec.operands) or \
      out and spec.out_kind != DENSE_OUT and spec.out_layout.nse == 0


def _zeros(spec: EinsumSpec, dtype) -> list:
  """The result when :func:`is_empty`: every sum is empty."""
  if spec.out_kind == DENSE_OUT:
    return [jnp.zeros(spec.out_shape, dtype)]
  lay = spec.out_layout
  data = jnp.zeros(lay.data_shape, dtype)
  if spec.out_kind == SAMPLED_OUT:
    return [data]
  padding = jnp.broadcast_to(jnp.asarray(lay.level_sizes, lay.index_dtype),
                             lay.batch_shape + (lay.nse, lay.n_sparse))
  data, indices = convert.from_coordinates(lay, padding, data, func="einsum", is_sorted=True,
                                           is_unique=True, check=False)
  return [data, *indices]


def _sparse_values(table: _Table, k: int, op, data):
  """Operand ``k``'s values at each row: ``(n_rows, *free block)`` and the free block ids.

  A block index that the row table binds (a sparse or batch index of another
  operand) is taken at the row's coordinate, not left free.
  """
  block = op.block
  data = data.reshape((-1,) + op.layout.block_shape)
  bound = [a for a, i in enumerate(block) if i in table.cols]
  if not bound:
    return data.at[table.ptr[k]].get(mode="fill", fill_value=0), block
  rest = [a for a in range(len(block)) if a not in bound]
  moved = jnp.transpose(data, [0] + [1 + a for a in bound] + [1 + a for a in rest])
  where = (table.ptr[k],) + tuple(table.cols[block[a]] for a in bound)
  return moved.at[where].get(mode="fill", fill_value=0), tuple(block[a] for a in rest)


def _einsum(operands, subscripts, out_subscripts):
  args = []
  for o, s in zip(operands, subscripts):
    args += [o, [_sub(i) for i in s]]
  return jnp.einsum(*args, [_sub(i) for i in out_subscripts],
                    precision=jax.lax.Precision.HIGHEST)


def _sub(i):
  """Einsum subscripts are small non-negative ints; shift ours (row id is -1)."""
  return i + 1


def _assemble_dense(spec, table, operands, subscripts):
  bound = [i for i in spec.out if i in table.cols]
  free = [i for i in spec.out if i not in table.cols]
  if not bound:
    return [_einsum(operands, subscripts, free)]
  vals = _einsum(operands, subscripts, [_ROW] + free)
  shape = tuple(spec.size(i) for i in bound) + tuple(spec.size(i) for i in free)
  where = tuple(table.cols[i] for i in bound)
  result = jnp.zeros(shape, vals.dtype).at[where].add(vals, mode="drop")
  order = bound + free
  return [jnp.transpose(result, [order.index(i) for i in spec.out])]


def _assemble_sampled(spec, table, operands, subscripts):
  """Accumulates each row into its pattern slot; a block index the row table binds (a
  sparse index of another operand) selects the block element the row adds to."""
  out = spec.out_operand
  lay = out.layout
  bound = [i for i in out.block if i in table.cols]
  free = [i for i in out.block if i not in table.cols]
  vals = _einsum(operands, subscripts, [_ROW] + free)
  n_rows = math.prod(lay.batch_shape) * lay.nse
  if not bound:
    summed = jax.ops.segment_sum(vals, table.ptr[PATTERN], num_segments=n_rows)
    return summed.reshape(lay.data_shape)
  order = bound + free
  shape = (n_rows,) + tuple(spec.size(i) for i in order)
  where = (table.ptr[PATTERN],) + tuple(table.cols[i] for i in bound)
  summed = jnp.zeros(shape, vals.dtype).at[where].add(vals, mode="drop")
  summed = jnp.transpose(summed, [0] + [1 + order.index(i) for i in out.block])
  return summed.reshape(lay.data_shape)


def _assemble_sparse(spec, table, operands, subscripts):
  out = spec.out_operand
  lay = out.layout
  vals = _einsum(operands, subscripts, [_ROW] + list(out.block))
  order, keys, valid, rank, flat_b, counts = _distinct_coordinates(spec, table)
  vals = vals[order]
  n_b = lay.n_batch
  n_batch_total = math.prod(lay.batch_shape)
  slot = jnp.where(valid, flat_b * lay.nse + rank, n_batch_total * lay.nse)
  slot = jnp.where(valid & (rank < lay.nse), slot, n_batch_total * lay.nse)
  idt = lay.index_dtype
  sizes = jnp.asarray(lay.level_sizes, idt)
  coords = jnp.broadcast_to(sizes, (n_batch_total * lay.nse, lay.n_sparse))
  coords = coords.at[slot].set(jnp.stack(keys[n_b:], -1), mode="drop")
  data = jnp.zeros((n_batch_total * lay.nse,) + vals.shape[1:], vals.dtype)
  data = data.at[slot].add(vals, mode="drop")
  coords = coords.reshape(lay.batch_shape + (lay.nse, lay.n_sparse))
  data = data.reshape(lay.data_shape)
  data, indices = convert.from_coordinates(lay, coords, data, func="einsum",
                                           is_sorted=True, is_unique=True, check=False)
  data = enforce_capacity(counts.max() if n_batch_total else 0, lay.nse, data, "einsum",
                          check=False)
  return [data, *indices]


def _distinct_coordinates(spec, table):
  """Sorts the join's rows by output coordinate (batch, then storage order).

  Returns ``(order, sorted keys, valid, rank, flat batch index, counts)``: ``rank`` is
  each row's distinct-coordinate number within its batch element (its output slot)
  and ``counts`` the distinct coordinates per batch element.
  """
  out = spec.out_operand
  lay = out.layout
  batch_ids = out.indices[:lay.n_batch]
  sparse_ids = out.indices[lay.n_batch:lay.n_batch + lay.n_sparse]
  storage_ids = [sparse_ids[d] for d in lay.format.mode_ordering]
  idt = lay.index_dtype
  keys = [jnp.where(table.valid, table.cols[i], spec.size(i)).astype(idt)
          for i in list(batch_ids) + storage_ids]
  n = table.n
  order = jax.lax.sort((*keys, jnp.arange(n, dtype=idt)), num_keys=len(keys))[-1]
  keys = [k[order] for k in keys]
  valid = table.valid[order]
  differs = jnp.zeros(max(n - 1, 0), bool)
  for k in keys:
    differs |= k[1:] != k[:-1]
  first = jnp.concatenate([jnp.ones((min(n, 1),), bool), differs]) & valid
  unique_id = jnp.cumsum(first) - 1
  # Rank within the batch element: unique id minus the first unique id of that batch.
  n_b = len(batch_ids)
  if n_b:
    bdiff = jnp.zeros(max(n - 1, 0), bool)
    for k in keys[:n_b]:
      bdiff |= k[1:] != k[:-1]
    bstart = jnp.concatenate([jnp.ones((min(n, 1),), bool), bdiff])
    first_uid = jax.lax.cummax(jnp.where(bstart, unique_id, -1))
    rank = unique_id - first_uid
    flat_b = jnp.ravel_multi_index(tuple(jnp.minimum(k, s - 1) for k, s in
                                         zip(keys[:n_b], lay.batch_shape)),
                                   lay.batch_shape, mode="clip")
  else:
    rank, flat_b = unique_id, jnp.zeros(n, idt)
  n_batch_total = math.prod(lay.batch_shape)
  counts = jax.ops.segment_sum(first.astype(idt), jnp.where(valid, flat_b, n_batch_total),
                               num_segments=n_batch_total)
  return order, keys, valid, rank, flat_b, counts


def needed_capacities(spec: EinsumSpec, *flat) -> tuple[jax.Array, jax.Array]:
  """Traced ``(work, nse)`` that ``spec`` needs on these inputs (for a ``checkify`` check).

  Evaluated outside the lowering, where checks can be functionalized; ``nse`` is
  exact when ``work`` suffices (otherwise the ``work`` check already fails).
  """
  groups, pattern = spec.split_inputs(flat)
  if is_empty(spec, out=False):
    return jnp.int32(0), jnp.int32(0)
  table, needed_work = _join(spec, groups, pattern, spec.work)
  needed_work = jnp.int32(0) if needed_work is None else needed_work
  if spec.out_kind != SPARSE_OUT or not math.prod(spec.out_layout.batch_shape):
    return needed_work, jnp.int32(0)
  return needed_work, _distinct_coordinates(spec, table)[-1].max()


# -- CSR x CSR -> CSR without a work capacity -------------------------------------------------
def is_spgemm(spec: EinsumSpec) -> bool:
  """Whether ``spec`` is ``ij,jk->ik`` of CSR operands into a new CSR pattern, or of CSC
  into CSC (with the same batch dims throughout): the product :func:`spgemm` evaluates
  without ``work``.

  Decided from the spec alone, so the capacities a traced einsum needs never depend on
  which backend lowers it.
  """
  if spec.out_kind != SPARSE_OUT or len(spec.operands) != 2:
    return False
  a, b = spec.operands
  out = spec.out_operand
  if not (a.sparse and b.sparse):
    return False
  lays = (a.layout, b.layout, out.layout)
  n_b = a.layout.n_batch
  if a.layout.format.replace(n_batch=0) not in (_CSR, _CSC) or \
      any(lay.format != a.layout.format for lay in lays) or \
      any(lay.batch_shape != a.layout.batch_shape for lay in lays):
    return False
  batch = a.indices[:n_b]
  if b.indices[:n_b] != batch or out.indices[:n_b] != batch:
    return False
  (i, j), (j2, k), out_ik = a.indices[n_b:], b.indices[n_b:], out.indices[n_b:]
  return j == j2 and out_ik == (i, k) and len({*batch, i, j, k}) == n_b + 3


def csr_equivalent(spec: EinsumSpec) -> EinsumSpec | None:
  """The CSR x CSR -> CSR spec that computes ``spec``, a 2-D sparse product of other
  formats (DCSR, COO, CSC mixed with CSR ...; batched alike, no block dims), between
  format conversions; None when ``spec`` is one already (:func:`is_spgemm`) or has no such form.
  The capacities are ``spec``'s own, and no ``work`` is needed.

  Example:
    >>> from jscorch.primitives.layout import Layout
    >>> from jscorch.primitives.formats import DCSR
    >>> from jscorch.primitives.einsum_spec import Operand
    >>> spec = EinsumSpec((Operand((0, 1), Layout(DCSR, (3, 4), 5)),
    ...                    Operand((1, 2), Layout(DCSR, (4, 6), 7))), out=(0, 2),
    ...                   sizes=((0, 3), (1, 4), (2, 6)), out_kind="sparse",
    ...                   out_layout=Layout(DCSR, (3, 6), 9))
    >>> csr_equivalent(spec).out_layout.format
    Format(dense, compressed)
  """
  if spec.out_kind != SPARSE_OUT or len(spec.operands) != 2 or \
      not all(op.sparse for op in spec.operands) or is_spgemm(spec):
    return None
  lays = [op.layout for op in spec.operands] + [spec.out_layout]
  n_b = lays[0].n_batch
  if any(lay.n_batch != n_b or lay.n_dense or lay.n_sparse != 2 for lay in lays):
    return None
  fmt = _CSR.replace(n_batch=n_b)
  csr = spec.replace(
      operands=tuple(dataclasses.replace(op, layout=Layout(fmt, op.layout.shape, op.layout.nse))
                     for op in spec.operands),
      out_layout=Layout(fmt, spec.out_layout.shape, spec.out_layout.nse))
  return csr if is_spgemm(csr) else None


def spgemm(spec: EinsumSpec, *flat) -> list:
  """``C = A @ B`` for CSR ``A``, ``B`` into CSR ``C`` of capacity ``spec.out_layout.nse``
  (or CSC throughout, as ``C^T = B^T A^T`` on the same buffers; :func:`is_spgemm`), by
  Gustavson's row-wise algorithm; needs no ``work``.

  One loop over A's stored entries (in row order); for each, a loop over the matching
  row of B. A column-indexed workspace remembers, per output column, the last row that
  touched it and that entry's slot, so a repeated ``(i, k)`` accumulates in place and a
  new one is appended: ``nse`` slots, no ``flops``-sized intermediate. Rows come out in
  order; one sort of the ``nse`` slots orders the columns within rows. Padding
  coordinates (out of range) are skipped. A result that needs more than ``nse`` entries
  is poisoned (see :func:`~jscorch.primitives.capacity.enforce_capacity`).
  """
  (a_data, a_pos, a_crd, b_data, b_pos, b_crd) = flat
  lay = spec.out_layout
  a, b = spec.operands
  n_b = lay.n_batch
  m, n, p = (spec.size(x) for x in a.indices[n_b:] + b.indices[n_b + 1:])
  if lay.format.mode_ordering != (0, 1):     # CSC: the CSR product C^T = B^T A^T
    (a_data, a_pos, a_crd, b_data, b_pos, b_crd), (m, p) = flat[3:] + flat[:3], (p, m)
  nse, idt = lay.nse, lay.index_dtype
  dtype = jnp.result_type(a_data, b_data)
  if is_empty(spec):
    return _zeros(spec, dtype)

  def one(a_data, a_pos, a_crd, b_data, b_pos, b_crd):
    nse_a, nse_b = a_crd.shape[0], b_crd.shape[0]
    a_end = jnp.minimum(a_pos[m], nse_a)
    a_row = jnp.searchsorted(a_pos, jnp.arange(nse_a, dtype=a_pos.dtype), side="right") - 1

    def entry(e, carry):
      def product(state):
        q, hi, (stamp, slot, rows, cols, vals, count) = state
        c = b_crd[q]
        ok = c < p
        c = jnp.where(ok, c, 0)
        seen = stamp[c] == a_row[e]
        at = jnp.where(seen, slot[c], count)
        at = jnp.where(ok, at, nse)                 # dropped
        v = (a_data[e] * b_data[q]).astype(dtype)
        vals = vals.at[at].add(v, mode="drop")
        new = ok & ~seen
        rows = rows.at[jnp.where(new, at, nse)].set(a_row[e], mode="drop")
        cols = cols.at[jnp.where(new, at, nse)].set(c, mode="drop")
        stamp = stamp.at[c].set(jnp.where(ok, a_row[e], stamp[c]))
        slot = slot.at[c].set(jnp.where(new, count, slot[c]))
        return q + 1, hi, (stamp, slot, rows, cols, vals, count + new)

      j = a_crd[e]
      live = (e < a_end) & (j >= 0) & (j < n)
      j = jnp.where(live, j, 0)
      lo = jnp.where(live, b_pos[j], 0)
      hi = jnp.where(live, jnp.minimum(b_pos[j + 1], nse_b), 0)
      return jax.lax.while_loop(lambda s: s[0] < s[1], product, (lo, hi, carry))[2]

    init = (jnp.full((p,), -1, a_row.dtype), jnp.zeros((p,), jnp.int32),
            jnp.full((nse,), m, idt), jnp.full((nse,), p, idt), jnp.zeros((nse,), dtype),
            jnp.int32(0))
    _, _, rows, cols, vals, count = jax.lax.fori_loop(0, nse_a, entry, init)
    rows, cols, vals = jax.lax.sort((rows, cols, vals), num_keys=2)
    return jnp.stack([rows, cols], -1), vals, count

  fn = one
  for _ in range(n_b):
    fn = jax.vmap(fn)
  coords, vals, counts = fn(a_data, a_pos, a_crd, b_data, b_pos, b_crd)
  data, indices = convert.from_coordinates(lay, coords, vals, func="einsum", is_sorted=True,
                                           is_unique=True, check=False)
  data = enforce_capacity(counts.max() if counts.size else 0, nse, data, "einsum", check=False)
  return [data, *indices]


# -- a sampled product of two sparse operands without a work capacity -------------------------
def _rows_over(spec: EinsumSpec, groups, k: int, first: int) -> tuple:
  """Operand ``k`` (2-D sparse, batch dims apart) as CSR buffers ``(data, pos, crd)`` whose
  rows run over index ``first`` (a linear-time conversion unless it is stored so)."""
  op = spec.operands[k]
  nb = op.layout.n_batch
  order = (0, 1) if op.bound[nb] == first else (1, 0)
  csr = Layout(_CSR.replace(n_batch=nb, n_dense=op.layout.n_dense, mode_ordering=order),
               op.layout.shape, op.layout.nse)
  bufs = groups[k]
  if csr == op.layout:
    return bufs[0], *bufs[1:]
  data, indices = convert.convert(op.layout, csr, bufs[0], tuple(bufs[1:]), func="einsum")
  return data, *indices


def sampled_product_form(spec: EinsumSpec) -> tuple[int, int, int, int, int] | None:
  """``(a, b, x, y, z)`` when ``spec`` is ``out[x,z] = sum_y A[x,y] B[y,z]`` (any index
  order in the operands) of two 2-D sparse operands ``a``, ``b``, sampled at a 2-D
  pattern over ``(x, z)`` (batch dims alike, block dims apart from the sparse indices):
  the tangent and cotangents of a sparse product, which :func:`sampled_product` evaluates
  without ``work``; else None. Decided from the spec alone."""
  if spec.out_kind != SAMPLED_OUT or len(spec.operands) != 2 or \
      not all(op.sparse for op in spec.operands):
    return None
  out = spec.out_operand
  ops = (*spec.operands, out)
  nb = out.layout.n_batch
  batch = out.indices[:nb]
  if any(op.layout.n_batch != nb or op.indices[:nb] != batch or op.layout.n_sparse != 2 or
         op.layout.batch_shape != out.layout.batch_shape for op in ops):
    return None
  x, z = out.bound[nb:]
  a_ids, b_ids = (set(op.bound[nb:]) for op in spec.operands)
  if x in b_ids and z in a_ids:
    a, b, a_ids, b_ids = 1, 0, b_ids, a_ids
  else:
    a, b = 0, 1
  y = (a_ids - {x}) & (b_ids - {z})
  if len({x, z}) != 2 or len(y) != 1 or a_ids != {x, *y} or b_ids != {z, *y}:
    return None
  (y,) = y
  if any({x, y, z, *batch} & set(op.block) for op in ops):
    return None
  return a, b, x, y, z


def sampled_product(spec: EinsumSpec, *flat) -> jax.Array:
  """The values of ``spec`` (:func:`sampled_product_form`) at its pattern's entries:
  ``A`` converted to rows over ``x``, ``B`` to rows over ``z`` (CSR, linear-time), then
  for each pattern entry ``(x, z)`` the sorted rows ``A[x, :]`` and ``B[:, z]`` are merged
  and the products of matching ``y`` summed (one merge per entry, all entries at once);
  needs no ``work``. Padding entries of the pattern get 0; a pattern that stores a
  coordinate twice gets the sum at each slot."""
  a, b, x, y, z = sampled_product_form(spec)
  groups, pattern = spec.split_inputs(flat)
  out = spec.out_operand
  lay = out.layout
  nb = lay.n_batch
  if is_empty(spec):
    return _zeros(spec, groups[0][0].dtype)[0]

  coords = convert.storage_to_logical(lay, convert.leaf_coordinates(lay, pattern))
  sx, sy, sz = spec.size(x), spec.size(y), spec.size(z)
  a_op, b_op = spec.operands[a], spec.operands[b]

  def one(a_data, a_pos, a_crd, b_data, b_pos, b_crd, coords):
    def entry(c):
      cx, cz = c[out.bound[nb:].index(x)], c[out.bound[nb:].index(z)]
      ok = (cx < sx) & (cz < sz)
      cx, cz = jnp.where(ok, cx, 0), jnp.where(ok, cz, 0)
      acc = jnp.zeros(lay.block_shape, jnp.result_type(a_data, b_data))
      ends = (jnp.minimum(a_pos[cx + 1], a_crd.shape[0]), jnp.minimum(b_pos[cz + 1],
                                                                       b_crd.shape[0]))

      def step(state):
        qa, qb, acc = state
        ca, cb = a_crd[qa], b_crd[qb]
        term = _einsum([a_data[qa], b_data[qb]], [a_op.block, b_op.block], out.block)
        acc = acc + jnp.where((ca == cb) & (ca < sy), term, 0)
        return qa + (ca <= cb), qb + (cb <= ca), acc

      _, _, acc = jax.lax.while_loop(
          lambda s: (s[0] < ends[0]) & (s[1] < ends[1]), step, (a_pos[cx], b_pos[cz], acc))
      return jnp.where(ok, acc, 0)

    return jax.vmap(entry)(coords)

  fn = one
  for _ in range(nb):
    fn = jax.vmap(fn)
  a_rows, b_rows = _rows_over(spec, groups, a, x), _rows_over(spec, groups, b, z)
  return fn(*a_rows, *b_rows, coords).reshape(lay.data_shape)


# -- a dense product of two sparse operands without a work capacity ---------------------------
def dense_product_form(spec: EinsumSpec) -> tuple[int, int, int, int, int] | None:
  """``(a, b, x, y, z)`` when ``spec`` is ``out[x, z] = sum_y A[x, y] B[y, z]`` (any index
  order in the operands and the result) of two 2-D sparse operands without block dims
  into a dense result (batch dims alike), which :func:`dense_product` evaluates without
  ``work``; else None. Decided from the spec alone."""
  if spec.out_kind != DENSE_OUT or len(spec.operands) != 2 or \
      not all(op.sparse for op in spec.operands):
    return None
  a_op, b_op = spec.operands
  nb = a_op.layout.n_batch
  batch = a_op.indices[:nb]
  if any(op.layout.n_batch != nb or op.indices[:nb] != batch or op.layout.n_sparse != 2 or
         op.layout.n_dense or op.layout.batch_shape != a_op.layout.batch_shape
         for op in spec.operands) or spec.out[:nb] != batch:
    return None
  a_ids, b_ids = set(a_op.bound[nb:]), set(b_op.bound[nb:])
  y = a_ids & b_ids
  if len(a_ids) != 2 or len(b_ids) != 2 or len(y) != 1:
    return None
  (y,) = y
  (x,), (z,) = a_ids - {y}, b_ids - {y}
  if len({*batch, x, y, z}) != nb + 3 or sorted(spec.out[nb:]) != sorted((x, z)):
    return None
  return 0, 1, x, y, z


def dense_product(spec: EinsumSpec, *flat) -> jax.Array:
  """The dense result of ``spec`` (:func:`dense_product_form`): ``A`` converted to rows
  over ``x`` and ``B`` to rows over ``y`` (CSR, linear-time), then Gustavson's loop: each
  stored ``A[x, y]`` adds ``A[x, y] * B[y, :]`` into row ``x`` of the result. Needs no
  ``work``; padding coordinates (out of range) are skipped.

  Example:
    >>> from jscorch.primitives.layout import Layout
    >>> from jscorch.primitives.einsum_spec import Operand
    >>> spec = EinsumSpec((Operand((0, 1), Layout(_CSR, (2, 2), 2)),
    ...                    Operand((1, 2), Layout(_CSR, (2, 2), 2))), out=(0, 2),
    ...                   sizes=((0, 2), (1, 2), (2, 2)), out_kind="dense")
    >>> one = jnp.ones(2); pos = jnp.array([0, 1, 2]); crd = jnp.array([1, 0])
    >>> dense_product(spec, one, pos, crd, one, pos, crd).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  a, b, x, y, z = dense_product_form(spec)
  groups, _ = spec.split_inputs(flat)
  nb = spec.operands[a].layout.n_batch
  sx, sy, sz = spec.size(x), spec.size(y), spec.size(z)
  dtype = jnp.result_type(groups[a][0], groups[b][0])
  if is_empty(spec):
    return _zeros(spec, dtype)[0]

  def one(a_data, a_pos, a_crd, b_data, b_pos, b_crd):
    nse_a, nse_b = a_crd.shape[0], b_crd.shape[0]
    a_end = jnp.minimum(a_pos[sx], nse_a)
    a_row = jnp.searchsorted(a_pos, jnp.arange(nse_a, dtype=a_pos.dtype), side="right") - 1

    def entry(e, out):
      j = a_crd[e]
      live = (e < a_end) & (j >= 0) & (j < sy)
      j = jnp.where(live, j, 0)
      lo = jnp.where(live, b_pos[j], 0)
      hi = jnp.where(live, jnp.minimum(b_pos[j + 1], nse_b), 0)

      def step(state):
        q, out = state
        c = b_crd[q]
        at = jnp.where((c >= 0) & (c < sz), c, sz)         # padding: dropped
        return q + 1, out.at[a_row[e], at].add((a_data[e] * b_data[q]).astype(dtype),
                                               mode="drop")

      return jax.lax.while_loop(lambda s: s[0] < hi, step, (lo, out))[1]

    return jax.lax.fori_loop(0, nse_a, entry, jnp.zeros((sx, sz), dtype))

  fn = one
  for _ in range(nb):
    fn = jax.vmap(fn)
  out = fn(*_rows_over(spec, groups, a, x), *_rows_over(spec, groups, b, y))
  return out if spec.out[nb:] == (x, z) else jnp.swapaxes(out, -1, -2)


def sized_without_work(spec: EinsumSpec) -> bool:
  """Whether the portable lowering evaluates ``spec`` without a ``work`` capacity although
  its plan joins sparse operands that contract: a 2-D product into a new pattern
  (:func:`is_spgemm`, :func:`csr_equivalent`), at a given pattern
  (:func:`sampled_product_form`) or into a dense result (:func:`dense_product_form`).
  Decided from the spec alone, so a traced einsum needs the same capacities whichever
  backend lowers it."""
  return is_spgemm(spec) or csr_equivalent(spec) is not None or \
      sampled_product_form(spec) is not None or dense_product_form(spec) is not None
