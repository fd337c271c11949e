"""Pattern union and concatenation of sparse operands, as compositions (portable).

``A + B`` for two sparse operands stores every coordinate stored by either, once.
The *pattern* is integer work only: the coordinates of both operands are
concatenated and sorted, equal neighbours are merged, and
:func:`convert.from_coordinates` builds the level buffers of the distinct
coordinates; along the way every input entry learns its destination leaf. The
*values* are then one gather per operand from those leaves (by the inverse of the
destinations): linear, so JAX derives exact (and cheap) jvp, transpose and batching
rules, and the gradient of each operand's values is a scatter of the cotangent.
Padding (coordinates out of range) stays padding.

The integer half is one ``jscorch_union_pattern`` primitive
(:mod:`jscorch.primitives.structure.union_kernel`): on CPU, for CSR / CSC parts in
the output's storage order, a generated merge kernel; else (COO, DCSR, mixed
storage orders, unordered or duplicate entries, no compiler) the sort above.

Concatenation along a sparse dimension is the same composition with the second
operand's coordinates shifted by the first one's size.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch.primitives import convert
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> a = Layout(CSR, (2, 3), 2); b = Layout(CSR, (2, 3), 2)
  >>> ia = (jnp.array([0, 1, 2]), jnp.array([0, 2]))    # (0, 0) and (1, 2)
  >>> ib = (jnp.array([0, 1, 2]), jnp.array([1, 2]))    # (0, 1) and (1, 2)
  >>> union_size([(a, ia), (b, ib)])
  3
  >>> out = Layout(CSR, (2, 3), 3)
  >>> data, indices = union(out, [(a, jnp.array([1., 2.]), ia), (b, jnp.array([3., 4.]), ib)],
  ...                       func="add")
  >>> data, indices[1]
  (Array([1., 3., 6.], dtype=float32), Array([0, 1, 2], dtype=int32))
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import checks, convert
from .capacity import enforce_capacity
from .formats import Format
from .layout import Layout

Part = tuple     # (Layout, data, indices)


def canonical_format(fmt: Format) -> Format:
  """``fmt`` with every level ordered and the last level unique (duplicates merged).

  This is the format of a union or concatenation result: a non-unique input
  format such as unordered COO comes back as plain COO.

  Example:
    >>> from jscorch.primitives.formats import compressed, singleton
    >>> canonical_format(Format(compressed(ordered=False, unique=False),
    ...                         singleton(ordered=False, unique=False)))
    Format(compressed(nonunique), singleton)
  """
  if not fmt.levels:
    return fmt
  levels = [lvl(ordered=True) for lvl in fmt.levels[:-1]]
  levels.append(fmt.levels[-1](ordered=True, unique=True))
  return fmt.replace(levels=tuple(levels))


def logical_coordinates(lay: Layout, indices) -> jax.Array:
  """`[*batch, nse, n_sparse]` logical coordinates of every leaf (padding: the sizes)."""
  return convert.storage_to_logical(lay, convert.leaf_coordinates(lay, indices))


def _shifted(lay: Layout, indices, offset: Sequence[int] | None, idt) -> jax.Array:
  coords = logical_coordinates(lay, indices).astype(idt)
  if offset is None:
    return coords
  sizes = jnp.asarray(lay.sparse_shape, idt)
  valid = jnp.all(coords < sizes, axis=-1, keepdims=True)
  # Padding must stay out of range after the shift (also a zero one: a 1-D operand's
  # padding coordinate, its size, is the next operand's first): send it past every size.
  big = jnp.asarray(np.iinfo(np.dtype(idt)).max // 2, idt)
  return jnp.where(valid, coords + jnp.asarray(offset, idt), big)


def union(out: Layout, parts: Sequence[Part], *, func: str,
          offsets: Sequence[Sequence[int] | None] | None = None):
  """Level buffers (in ``out``) of the sum of sparse operands over the union of their patterns.

  Args:
    out: the result layout; its format should be unique (see
      :func:`canonical_format`) so duplicates are merged, and ``out.nse`` at least
      the number of distinct coordinates (overflow poisons the values with NaN;
      callers that can should check :func:`union_size` first).
    parts: ``(layout, data, indices)`` per operand; same batch and block shapes as
      ``out``, sparse shapes fitting into ``out`` once shifted.
    func: the public function name, for capacity errors.
    offsets: per part, a shift of its logical sparse coordinates (concatenation),
      or None.

  Returns:
    ``(data, indices)`` of ``out``; values at equal coordinates are summed.
  """
  indices = [b for _, _, idx in parts for b in idx]
  datas = tuple(d for _, d, _ in parts)
  if not _all_unique(parts):
    out_indices, count, dest = _pattern(out, parts, func, offsets, dest=True)
    data = functools.reduce(_combine, [_compiled_scatter(out, lay.nse, at)(dest, d)
                                       for lay, d, at in _slices(parts)])
    return _capped(count, out, parts, data, func), out_indices
  if not checks.is_concrete(*indices) and len({jnp.result_type(d) for d in datas}) == 1:
    # Traced indices: pattern and values in one primitive (on CPU one kernel pass, no
    # src arrays); its jvp is the gathers below.
    from .structure import union_kernel
    layouts = tuple(lay for lay, _, _ in parts)
    offs = tuple(None if o is None else tuple(int(v) for v in o)
                 for o in (offsets or [None] * len(parts)))
    plan = union_kernel.UnionPlan(out, layouts, offs, func, dest=False)
    *out_indices, count, data = _compiled_sum(plan)(
        tuple(tuple(idx) for _, _, idx in parts), datas)
    return _capped(count, out, parts, data, func), tuple(out_indices)
  out_indices, count, sources = _pattern(out, parts, func, offsets)
  data = _compiled_values(out)(sources, datas)
  return _capped(count, out, parts, data, func), out_indices


def _capped(count, out: Layout, parts: Sequence[Part], data, func: str):
  """``data`` poisoned with NaN where the union overflowed ``out.nse``; no pass at all when
  it cannot (a capacity of every part's entries together: the default under ``jit``)."""
  if out.nse >= sum(lay.nse for lay, _, _ in parts):
    return data
  return enforce_capacity(count, out.nse, data, func)


@functools.lru_cache(maxsize=512)
def _compiled_sum(plan):
  from .structure import union_kernel
  return jax.jit(lambda indices, datas: union_kernel.union_sum(plan, indices, datas))


def union_each(out: Layout, parts: Sequence[Part], *, func: str,
               offsets: Sequence[Sequence[int] | None] | None = None):
  """Every part's values on the union of the patterns, from one pattern computation.

  Args and capacity rules as :func:`union`.

  Returns:
    ``(datas, indices)``: per part, its values at every leaf of ``out``
    `[*batch, out.nse, *block]` (0 where it stores nothing), and ``out``'s index buffers.
  """
  if not _all_unique(parts):
    out_indices, count, dest = _pattern(out, parts, func, offsets, dest=True)
    datas = [_compiled_scatter(out, lay.nse, at)(dest, d) for lay, d, at in _slices(parts)]
  else:
    out_indices, count, sources = _pattern(out, parts, func, offsets)
    datas = _compiled_each(out)(sources, tuple(d for _, d, _ in parts))
  return [_capped(count, out, parts, d, func) for d in datas], out_indices


def _all_unique(parts: Sequence[Part]) -> bool:
  """Whether every part stores each coordinate at most once: then each output leaf holds at
  most one entry of a part and its values are gathered (by ``sources``); a part with
  duplicates needs them summed, a scatter-add by ``dest``."""
  return all(lay.format.unique for lay, _, _ in parts)


def _slices(parts: Sequence[Part]):
  """``(layout, data, offset)`` per part: where its entries start in the concatenated ``dest``."""
  at = 0
  for lay, data, _ in parts:
    yield lay, data, at
    at += lay.nse


def _pattern(out: Layout, parts: Sequence[Part], func: str, offsets, dest: bool = False):
  """``(out_indices, count, sources)`` of the union (``(out_indices, count, dest)`` with
  ``dest``); outside any trace when the index buffers are concrete."""
  layouts = tuple(lay for lay, _, _ in parts)
  offs = tuple(None if o is None else tuple(int(v) for v in o)
               for o in (offsets or [None] * len(parts)))
  indices = tuple(tuple(i) for _, _, i in parts)
  pattern = _compiled_pattern(out, layouts, func, offs, dest)
  if checks.is_concrete(*[b for idx in indices for b in idx]):
    # A fixed pattern (eager calls, and values-only tracing such as grad with respect
    # to the data) is computed once, outside any trace: only the gathers are staged.
    with jax.ensure_compile_time_eval():
      return pattern(indices)
  return pattern(indices)


@functools.lru_cache(maxsize=512)
def _compiled_pattern(out: Layout, layouts: tuple, func: str, offsets: tuple,
                      dest: bool = False):
  """The union pattern, jitted per static signature: index buffers -> (indices, count, src),
  or (indices, count, dest) with ``dest``.

  One ``jscorch_union_pattern`` primitive: a generated merge kernel on CPU where one
  applies, else :func:`portable_pattern` (its reference rule).
  """
  from .structure import union_kernel
  plan = union_kernel.UnionPlan(out, layouts, offsets, func, dest=dest)
  n_out = len(out.index_shapes)

  def run(indices):
    flat = union_kernel.union_pattern(plan, indices)
    if dest:
      return tuple(flat[:n_out]), flat[n_out + 1], flat[n_out]
    return tuple(flat[:n_out]), flat[n_out], tuple(flat[n_out + 1:])

  return jax.jit(run)


def portable_pattern(out: Layout, layouts: tuple, func: str, offsets: tuple):
  """The union pattern in XLA (concatenate, sort, merge): index buffers -> (indices, dest, count).

  ``dest`` `[*batch, n]` is the output leaf of every input entry (concatenated in
  part order; ``nse`` for padding), ``count`` `[*batch]` the distinct coordinates.
  """
  el = Layout(out.format.replace(n_batch=0), out.shape[out.n_batch:], out.nse)
  sizes = el.level_sizes
  all_dense = el.format.all_dense

  def pattern(coords):
    """Level buffers of the distinct coordinates and each input row's destination leaf."""
    n = coords.shape[0]
    idt = coords.dtype
    size_row = jnp.asarray(sizes, idt)
    valid = jnp.all((coords < size_row) & (coords >= 0), axis=-1)
    coords = jnp.where(valid[:, None], coords, size_row)
    keys = [coords[:, k] for k in range(el.n_sparse)]
    perm = jax.lax.sort((*keys, jnp.arange(n, dtype=idt)), num_keys=len(keys))[-1]
    ordered = coords[perm]
    valid_sorted = valid[perm]
    differs = jnp.any(ordered[1:] != ordered[:-1], axis=-1)
    first = jnp.concatenate([jnp.ones((min(n, 1),), bool), differs]) & valid_sorted
    rank = (jnp.cumsum(first) - 1).astype(idt)
    count = first.sum()
    distinct = jnp.broadcast_to(size_row, coords.shape).at[
        jnp.where(first, rank, n)].set(ordered, mode="drop")
    _, indices = convert.from_coordinates(el, distinct, jnp.zeros((n,), jnp.float32), func=func,
                                          is_sorted=True, is_unique=True)
    if all_dense:     # every coordinate has its leaf: the row-major position in level order
      leaf = jnp.zeros((n,), idt)
      for k, size in enumerate(sizes):
        leaf = leaf * size + ordered[:, k]
    else:             # leaves hold the distinct coordinates in storage order
      leaf = rank
    dest_sorted = jnp.where(valid_sorted, leaf, el.nse)
    dest = jnp.zeros((n,), idt).at[perm].set(dest_sorted)
    return indices, dest, count

  def run(indices):
    idt = out.index_dtype
    coords = [_shifted(lay, idx, off, idt) for lay, idx, off in zip(layouts, indices, offsets)]
    # Under vmap a part may be unbatched while another is batched; all have rank
    # n_batch + 2 here, so a plain concatenate along the entry axis is enough.
    coords = convert.logical_to_storage(out, jnp.concatenate(coords, axis=out.n_batch))
    return convert.vmap_batch(pattern, out.n_batch)(coords)

  return run


@functools.lru_cache(maxsize=512)
def _compiled_values(out: Layout):
  """The union values: at every leaf, the sum of each part's entry there (a gather per part,
  by the pattern's ``sources``: on CPU several times faster than a scatter-add by ``dest``)."""
  def values(sources, datas):
    total = None
    for src, data in zip(sources, datas):
      taken = convert.take(data, src, 0)
      total = taken if total is None else total + taken
    return total

  def run(sources, datas):
    return convert.vmap_batch(values, out.n_batch)(sources, datas)

  return jax.jit(run)


def _combine(a: jax.Array, b: jax.Array) -> jax.Array:
  """Two parts' summed values: ``a + b``, a logical or for booleans."""
  return a | b if a.dtype == b.dtype == jnp.bool_ else a + b


@functools.lru_cache(maxsize=512)
def _compiled_scatter(out: Layout, part_nse: int, at: int):
  """One part's values summed at every leaf: a scatter-add by its slice of ``dest``
  (entries ``at:at + part_nse``), for parts that may store a coordinate more than once."""
  def values(dest, data):
    d = jax.lax.dynamic_slice_in_dim(dest, at, part_nse, axis=0)
    return convert.scatter_sum(jnp.zeros((out.nse,) + data.shape[1:], data.dtype), d, data)

  def run(dest, data):
    return convert.vmap_batch(values, out.n_batch)(dest, data)

  return jax.jit(run)


@functools.lru_cache(maxsize=512)
def _compiled_each(out: Layout):
  """Per part, its values at every leaf (a gather by its ``sources``)."""
  def each(sources, datas):
    return tuple(convert.take(data, src, 0) for src, data in zip(sources, datas))

  def run(sources, datas):
    return convert.vmap_batch(each, out.n_batch)(sources, datas)

  return jax.jit(run)


@functools.lru_cache(maxsize=512)
def _logical_jit(lay: Layout):
  return jax.jit(lambda idx: logical_coordinates(lay, idx))


def union_size(parts: Sequence[tuple[Layout, tuple]],
               offsets: Sequence[Sequence[int] | None] | None = None) -> int:
  """Exact capacity of :func:`union` on concrete index buffers.

  Args:
    parts: ``(layout, indices)`` per operand (index buffers must be concrete).
    offsets: as in :func:`union`.

  Returns:
    The largest number of distinct in-range coordinates of any batch element.
  """
  offsets = offsets or [None] * len(parts)
  counted = _kernel_size(parts, offsets)
  if counted is not None:
    return counted
  host = []
  for (lay, idx), off in zip(parts, offsets):
    # Concrete buffers closed over by a jit-traced function still trace unless forced.
    with jax.ensure_compile_time_eval():
      c = np.asarray(_logical_jit(lay)(tuple(idx))).astype(np.int64)
    valid = np.all(c < np.asarray(lay.sparse_shape), axis=-1)
    if off is not None:
      c = c + np.asarray(off, np.int64)
    flat = math.prod(c.shape[:-2])          # (explicit: nse may be 0)
    host.append((c.reshape((flat,) + c.shape[-2:]), valid.reshape(flat, c.shape[-2])))
  n_batch_total = host[0][0].shape[0]
  best = 0
  for b in range(n_batch_total):
    rows = np.concatenate([c[b][v[b]] for c, v in host], axis=0)
    if len(rows):
      best = max(best, len(np.unique(rows, axis=0)))
  return best


def _kernel_size(parts, offsets) -> int | None:
  """:func:`union_size` from the union kernel's ``count`` (no host sort), or None where no
  kernel applies (then the host computes it)."""
  from . import kernel_build
  from .settings import settings
  from .structure import union_kernel
  if len(parts) < 2 or settings.lowering == "portable" or kernel_build.compiler() is None:
    return None
  layouts = tuple(lay for lay, _ in parts)
  offs = tuple(None if o is None else tuple(int(v) for v in o) for o in offsets)
  first = layouts[0]
  sparse = list(first.sparse_shape)
  for lay, off in zip(layouts, offs):
    for d, size in enumerate(lay.sparse_shape):
      sparse[d] = max(sparse[d], size + (off[d] if off else 0))
  out = Layout(canonical_format(first.format),       # (count does not depend on nse)
               first.batch_shape + tuple(sparse) + first.block_shape, 1)
  plan = union_kernel.UnionPlan(out, layouts, offs, "union_size", dest=False)
  if union_kernel.kernel_reason(plan) != "kernel" or any(
      np.dtype(lay.index_dtype) != np.dtype(out.index_dtype) for lay in layouts):
    return None
  with jax.ensure_compile_time_eval():
    count = np.asarray(_compiled_pattern(out, layouts, "union_size", offs)(
        tuple(tuple(idx) for _, idx in parts))[1])
  return int(count.max()) if count.size else 0
