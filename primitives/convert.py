"""Conversions between dense arrays, coordinate lists and level buffers (portable).

Everything here is a composition of ``jax.lax`` gathers, scatters, sorts and
``segment_sum``, so it runs on every backend and JAX derives jvp, transpose and
batching rules that are exact: the values path is linear (gather / scatter-add),
the index path is integer and gets no tangent. Batch dimensions are handled by
``vmap``-ing the per-element function once per batch dimension.

Conventions (DESIGN §3):
  * coordinates are returned in **storage (level) order** unless a function says
    ``logical``;
  * padding leaves have every coordinate equal to the dimension size and value 0;
    an entry with any coordinate out of range is treated as padding.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from . import structure
from ._errors import SparseFormatError
from .capacity import enforce_capacity
from .layout import Layout

Indices = tuple[jax.Array, ...]


def scatter_sum(target: jax.Array, index, values: jax.Array) -> jax.Array:
  """``target.at[index].add(values, mode="drop")``; logical or for booleans."""
  if target.dtype == jnp.bool_:
    return target.at[index].max(values, mode="drop")
  return target.at[index].add(values, mode="drop")


def vmap_batch(f: Callable, n_batch: int) -> Callable:
  """Maps ``f`` over ``n_batch`` leading dimensions of all its array arguments."""
  for _ in range(n_batch):
    f = jax.vmap(f)
  return f


def _element(lay: Layout) -> Layout:
  """The layout of one batch element."""
  return Layout(lay.format.replace(n_batch=0), lay.shape[lay.n_batch:], lay.nse)


# -- level buffers -> coordinates ------------------------------------------------------
def take(col: jax.Array, at: jax.Array, fill) -> jax.Array:
  """``col[at]`` (rows of ``col``) with out-of-range positions giving ``fill``, also every
  position of an empty ``col`` (a level under a dimension of size 0, an operand with
  ``nse=0``), where JAX's gather refuses."""
  if not col.shape[0]:
    return jnp.full(at.shape + col.shape[1:], fill, col.dtype)
  return col.at[at].get(mode="fill", fill_value=fill)


def _leaf_coordinates_1(lay: Layout, indices: Indices) -> jax.Array:
  sizes, caps = lay.level_sizes, lay.capacities
  idt = lay.index_dtype
  buffers = iter(indices)
  cols: list[jax.Array] = []
  for k, lvl in enumerate(lay.format.levels):
    size, cap = sizes[k], caps[k]
    bufs = tuple(next(buffers) for _ in lvl.buffers)
    parent, crd = lvl.positions(bufs, lay.parent_capacity(k), cap, size, idt)
    cols = [take(col, parent, sizes[j]) for j, col in enumerate(cols)]
    cols.append(crd.astype(idt))
  coords = jnp.stack(cols, axis=-1) if cols else jnp.zeros((lay.nse, 0), idt)
  size_row = jnp.asarray(sizes, idt)
  valid = jnp.all((coords < size_row) & (coords >= 0), axis=-1, keepdims=True)
  return jnp.where(valid, coords, size_row)


def leaf_coordinates(lay: Layout, indices: Indices) -> jax.Array:
  """Coordinates of every stored entry, in storage order.

  Returns:
    `[*batch, nse, n_sparse]` integer array; column ``k`` is the coordinate of
    level ``k``. Padding rows hold the level sizes.
  """
  el = _element(lay)
  if not indices:                         # all-dense or level-less: one pattern for all
    one = _leaf_coordinates_1(el, ())
    return jnp.broadcast_to(one, lay.batch_shape + one.shape)
  return vmap_batch(lambda *idx: _leaf_coordinates_1(el, idx), lay.n_batch)(*indices)


def storage_to_logical(lay: Layout, coords: jax.Array) -> jax.Array:
  """Reorders the last axis of coordinates from level order to dimension order."""
  return coords[..., list(lay.format.levels_of_dims)]


def logical_to_storage(lay: Layout, coords: jax.Array) -> jax.Array:
  """Reorders the last axis of coordinates from dimension order to level order."""
  return coords[..., list(lay.format.mode_ordering)]


def valid_mask(lay: Layout, coords: jax.Array) -> jax.Array:
  """`[*batch, nse]` bool: which leaves are in use (coordinates in storage order)."""
  return jnp.all(coords < jnp.asarray(lay.level_sizes, coords.dtype), axis=-1)


def count_entries(lay: Layout, indices: Indices) -> jax.Array:
  """Number of entries in use, `[*batch]` (duplicates count separately)."""
  return valid_mask(lay, leaf_coordinates(lay, indices)).sum(-1)


# -- level buffers -> dense --------------------------------------------------------------
def todense(lay: Layout, data: jax.Array, indices: Indices) -> jax.Array:
  """The dense array `lay.shape`; duplicates are summed, padding is ignored."""
  el = _element(lay)

  def one(data, *indices):
    if not el.n_sparse:                   # the one block at the empty coordinate
      return data.any(0) if data.dtype == jnp.bool_ else data.sum(0)
    out = jnp.zeros(el.sparse_shape + el.block_shape, data.dtype)
    if not out.size:            # a dimension of size 0: nothing to scatter (nor to transpose)
      return out
    coords = storage_to_logical(el, _leaf_coordinates_1(el, indices))
    return scatter_sum(out, tuple(coords.T), data)

  return vmap_batch(one, lay.n_batch)(data, *indices)


# -- coordinates -> level buffers --------------------------------------------------------
def _largest(count: jax.Array) -> jax.Array:
  """The largest per-batch-element count; 0 for an empty batch (no element needs room)."""
  return count if count.size else jnp.zeros((), count.dtype)


def _sort_coordinates(coords, data):
  """Sorts leaves lexicographically (padding rows, holding the sizes, sort last)."""
  n, n_keys = coords.shape
  if not n_keys:                          # no sparse dimension: one coordinate, no order
    return coords, data
  keys = [coords[:, k] for k in range(n_keys)]
  perm = jax.lax.sort((*keys, jnp.arange(n, dtype=coords.dtype)), num_keys=n_keys)[-1]
  return coords[perm], data[perm]


def _sum_duplicates(coords, valid, data, sizes):
  """Merges equal adjacent (sorted) rows; in-use rows end up first."""
  n = coords.shape[0]
  differs = jnp.any(coords[1:] != coords[:-1], axis=-1)
  first = jnp.concatenate([jnp.ones((1,), bool), differs]) & valid
  group = jnp.cumsum(first) - 1
  target = jnp.where(valid, group, n)
  new_coords = jnp.broadcast_to(jnp.asarray(sizes, coords.dtype), coords.shape)
  new_coords = new_coords.at[jnp.where(first, group, n)].set(coords, mode="drop")
  new_data = scatter_sum(jnp.zeros_like(data), target, data)
  return new_coords, jnp.arange(n) < first.sum(), new_data


def _build_levels_1(lay: Layout, coords, valid, data):
  """Level buffers of sorted, unique-where-required leaves (storage order)."""
  sizes, caps = lay.level_sizes, lay.capacities
  idt = lay.index_dtype
  n = coords.shape[0]
  node = jnp.zeros(n, idt)           # position of each leaf's ancestor at this level
  count = jnp.sum(valid)
  indices = []
  for k, lvl in enumerate(lay.format.levels):
    size, cap, pcap = sizes[k], caps[k], lay.parent_capacity(k)
    ck = coords[:, k].astype(idt)
    bufs, node, count = lvl.assemble(ck, node, valid, count, pcap, cap, size, idt)
    indices += list(bufs)
  leaf = jnp.where(valid, node, lay.nse)
  out = scatter_sum(jnp.zeros((lay.nse,) + data.shape[1:], data.dtype), leaf, data)
  return out, tuple(indices), count


def from_coordinates(lay: Layout, coords: jax.Array, data: jax.Array, *, func: str,
                     is_sorted: bool = False, is_unique: bool = False, check: bool = True):
  """Level buffers for the format ``lay.format`` from a coordinate list.

  Args:
    lay: the output layout (its ``nse`` is the output capacity).
    coords: `[*batch, n, n_sparse]` coordinates in **storage order** of ``lay``;
      rows with a coordinate out of range are padding.
    data: `[*batch, n, *block]` values.
    func: public function name for capacity errors.
    is_sorted: rows are already in lexicographic storage order, padding last.
    is_unique: rows are already free of duplicates.
    check: see :func:`jscorch.primitives.capacity.enforce_capacity`.

  Returns:
    ``(data, indices)`` of the layout; duplicates are summed when the format is
    unique. Overflow of ``lay.nse`` raises (eager) or poisons the values (jit).
  """
  if structure.supports(lay):       # the structure primitive (generated kernel or jnp rule)
    return structure.from_coordinates(lay, coords, data, func=func, is_sorted=is_sorted,
                                      is_unique=is_unique, check=check)
  el = _element(lay)
  sizes = jnp.asarray(el.level_sizes, coords.dtype)

  def one(coords, data):
    valid = jnp.all((coords < sizes) & (coords >= 0), axis=-1)
    coords = jnp.where(valid[:, None], coords, sizes)
    data = jnp.where(valid.reshape((-1,) + (1,) * (data.ndim - 1)), data,
                     jnp.zeros((), data.dtype))
    if not is_sorted:
      coords, data = _sort_coordinates(coords, data)
      valid = jnp.all(coords < sizes, axis=-1)
    if el.format.unique and not is_unique:
      coords, valid, data = _sum_duplicates(coords, valid, data, el.level_sizes)
    return _build_levels_1(el, coords, valid, data)

  out, indices, count = vmap_batch(one, lay.n_batch)(coords, data)
  return enforce_capacity(_largest(count), lay.nse, out, func, check=check), indices


def has_coordinate_slots(lay: Layout) -> bool:
  """Whether :func:`coordinate_slots` covers ``lay``: a unique format of built-in levels
  with at least one sparse level."""
  return structure.supports(lay) and lay.format.unique


def coordinate_slots(lay: Layout, coords: jax.Array, *, func: str):
  """The pattern of a coordinate list and the slot of each of its rows (no values).

  Args:
    lay: the output layout, of a unique format of built-in levels (its ``nse`` is
      the capacity; the count says how much of it is needed).
    coords: `[*batch, n, n_sparse]` coordinates in **storage order** of ``lay``; rows
      with a coordinate out of range are padding.
    func: public function name for errors.

  Returns:
    ``(indices, dest, count)``: the level buffers of the distinct coordinates
    (sorted), `[*batch, n]` the slot of each row (``>= lay.nse`` for padding or past
    the capacity: drop them), and `[*batch]` the number of distinct coordinates.
    Values then move with a scatter-add at ``dest`` (duplicates summed).

  Raises:
    SparseFormatError: a format the structure primitive does not cover.
  """
  if not has_coordinate_slots(lay):
    raise SparseFormatError(
        f"{func}: the slots of a coordinate list need a unique format of built-in levels; "
        f"got {lay.format!r}. Use a named format (csr, csc, coo, dcsr, csf).")
  return structure.coordinate_slots(lay, coords)


def from_dense(lay: Layout, x: jax.Array, *, func: str = "from_dense"):
  """Level buffers of ``x`` (shape ``lay.shape``) keeping its nonzeros.

  An entry (block) is stored when any of its elements is nonzero. Entries beyond
  ``lay.nse`` raise (eager) or poison the values (jit). Eagerly it runs as one jitted
  program per layout (its dozens of operations would each be an XLA program).
  """
  out, indices, count = _dense_levels(lay, x)
  return enforce_capacity(_largest(count), lay.nse, out, func), indices


@functools.partial(jax.jit, static_argnums=0)
def _dense_levels(lay: Layout, x: jax.Array):
  """``(values, level buffers, nonzero count per batch element)`` of ``x``."""
  el = _element(lay)
  n_sp = el.n_sparse
  block_axes = tuple(range(n_sp, n_sp + el.n_dense))
  perm = tuple(el.format.mode_ordering) + block_axes
  sizes = el.level_sizes
  all_dense = el.format.all_dense

  def one(x):
    if not n_sp:                          # no sparse dimension: x is the one stored block
      return x[None], (), jnp.ones((), el.index_dtype)
    xs = jnp.transpose(x, perm)
    mask = jnp.any(xs != 0, axis=block_axes) if block_axes else xs != 0
    if all_dense:
      mask = jnp.ones_like(mask)
    nz = jnp.nonzero(mask, size=el.nse, fill_value=sizes)
    coords = jnp.stack(nz, axis=-1).astype(el.index_dtype)
    values = xs.at[nz].get(mode="fill", fill_value=0) if xs.size else \
        jnp.zeros((el.nse,) + xs.shape[n_sp:], xs.dtype)        # a dimension of size 0
    valid = jnp.all(coords < jnp.asarray(sizes, coords.dtype), axis=-1)
    out, indices, _ = _build_levels_1(el, coords, valid, values)
    return out, indices, mask.sum()

  return vmap_batch(one, lay.n_batch)(x)


def convert(src: Layout, dst: Layout, data: jax.Array, indices: Indices,
            *, func: str = "asformat"):
  """Level buffers of the same tensor in the layout ``dst`` (same shape).

  Duplicates are summed when ``dst`` is unique; the capacity ``dst.nse`` must be
  at least the number of distinct entries.
  """
  assert src.shape == dst.shape, (src.shape, dst.shape)
  if structure.supports(dst, src):  # the structure primitive (generated kernel or jnp rule)
    return structure.convert(src, dst, data, indices, func=func)
  coords = leaf_coordinates(src, indices)
  logical = storage_to_logical(src, coords)
  same_order = src.format.mode_ordering == dst.format.mode_ordering
  return from_coordinates(dst, logical_to_storage(dst, logical), data, func=func,
                          is_sorted=same_order and src.format.ordered,
                          is_unique=src.format.unique)



# -- layout changes: batch <-> sparse <-> block dimensions ----------------------------------
def relayout_capacity(src: Layout, dst_format, nse: int | None = None) -> int:
  """The static capacity of ``src``'s tensor in ``dst_format`` (same shape).

  Moving batch or block dimensions into the sparse ones multiplies the capacity by
  their sizes (every stored block element becomes an entry, explicit zeros
  included); moving sparse dimensions into blocks or batches can only merge or
  split entries. A unique format never needs more than its number of coordinates;
  an all-dense (or level-less) format stores every coordinate.
  """
  probe = Layout(dst_format, src.shape, 0)
  space = math.prod(probe.level_sizes)
  if dst_format.all_dense:
    return space
  if nse is None:
    nb, nd = src.n_batch, src.n_dense
    grow = math.prod(src.shape[min(nb, probe.n_batch):nb])
    grow *= math.prod(src.block_shape[:max(nd - probe.n_dense, 0)])
    nse = src.nse * grow
  return min(nse, space) if dst_format.unique else nse


def _grid(sizes, idt):
  """`[*sizes, len(sizes)]`: the coordinates of every element of a box."""
  return jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=idt) for s in sizes], indexing="ij"),
                   -1).reshape(tuple(sizes) + (len(sizes),))


def relayout(src: Layout, dst: Layout, data: jax.Array, indices: Indices, *,
             func: str = "update_layout", check: bool = True):
  """Level buffers of the same tensor in ``dst``, whose batch / block split may differ.

  Batch dimensions that become sparse prefix the coordinates of their elements'
  entries; block dimensions that become sparse turn every block element into an
  entry (explicit zeros included); sparse dimensions that become block dimensions
  gather the entries sharing the remaining coordinates into one block; sparse
  dimensions that become batch dimensions split the entries by coordinate. The
  intermediate coordinate lists hold up to ``nse * prod(moved sizes)`` rows.

  Returns:
    ``(data, indices)`` of ``dst``; duplicates are summed where ``dst`` is unique.
    Overflow of ``dst.nse`` raises (eager) or poisons the values (jit).
  """
  assert src.shape == dst.shape, (src.shape, dst.shape)
  if (src.n_batch, src.n_dense) == (dst.n_batch, dst.n_dense):
    return convert(src, dst, data, indices, func=func)
  shape = src.shape
  coords = storage_to_logical(src, leaf_coordinates(src, indices))
  idt = dst.index_dtype
  coords = coords.astype(idt)
  valid = jnp.all(coords < jnp.asarray(src.sparse_shape, idt), axis=-1)
  nb, nd = src.n_batch, src.n_dense
  if dst.n_batch < nb:                  # batch -> sparse: prefix the batch coordinates
    lead, moved = shape[:dst.n_batch], shape[dst.n_batch:nb]
    n = coords.shape[-2]
    grid = jnp.broadcast_to(_grid(moved, idt)[..., None, :], lead + moved + (n, len(moved)))
    coords = jnp.concatenate([grid, coords], -1)
    coords = coords.reshape(lead + (math.prod(moved) * n, coords.shape[-1]))
    valid = valid.reshape(lead + (math.prod(moved) * n,))
    data = data.reshape(lead + (math.prod(moved) * n,) + data.shape[nb + 1:])
    nb = dst.n_batch
  if dst.n_dense < nd:                  # block -> sparse: one entry per block element
    moved = src.block_shape[:nd - dst.n_dense]
    q, n = math.prod(moved), coords.shape[-2]
    rows = jnp.broadcast_to(coords[..., None, :], coords.shape[:-1] + (q, coords.shape[-1]))
    grid = jnp.broadcast_to(_grid(moved, idt).reshape(q, len(moved)),
                            coords.shape[:-1] + (q, len(moved)))
    coords = jnp.concatenate([rows, grid], -1)
    coords = coords.reshape(shape[:nb] + (n * q, coords.shape[-1]))
    valid = jnp.repeat(valid, q, axis=-1)
    data = data.reshape(shape[:nb] + (n * q,) + data.shape[nb + 1 + len(moved):])
    nd = dst.n_dense
  if dst.n_dense > nd:                  # sparse -> block: gather entries into blocks
    m = dst.n_dense - nd
    moved_sizes = shape[len(shape) - dst.n_dense:len(shape) - nd]
    moved = coords[..., coords.shape[-1] - m:]
    coords = coords[..., :coords.shape[-1] - m]
    hit = jnp.all(moved.reshape(moved.shape[:-1] + (1,) * m + (m,)) ==
                  _grid(moved_sizes, idt), axis=-1)
    block = data.reshape(data.shape[:nb + 1] + (1,) * m + data.shape[nb + 1:])
    data = jnp.where(hit.reshape(hit.shape + (1,) * nd), block, jnp.zeros((), data.dtype))
    nd = dst.n_dense
  if dst.n_batch > nb:                  # sparse -> batch: split entries by coordinate
    m = dst.n_batch - nb
    lead, moved_sizes = shape[:nb], shape[nb:dst.n_batch]
    n = coords.shape[-2]
    split = lambda a: a.reshape(lead + (1,) * m + a.shape[nb:])  # noqa: E731
    here = jnp.all(split(coords)[..., :m] == _grid(moved_sizes, idt)[..., None, :], axis=-1)
    valid = split(valid) & here
    coords = jnp.broadcast_to(split(coords)[..., m:], valid.shape + (coords.shape[-1] - m,))
    data = jnp.broadcast_to(split(data), valid.shape + data.shape[nb + 1:])
    nb = dst.n_batch
  keep = valid.reshape(valid.shape + (1,) * (data.ndim - valid.ndim))
  data = jnp.where(keep, data, jnp.zeros((), data.dtype))
  coords = jnp.where(valid[..., None], coords, jnp.asarray(dst.sparse_shape, idt))
  return from_coordinates(dst, logical_to_storage(dst, coords), data, func=func, check=check)
