"""Segment reductions over the stored entries of a sparse operand (portable compositions).

A *segment* is the set of stored entries that agree on every sparse coordinate
except one (the reduced ``axis``): for a CSR matrix and the last axis, the
entries of one row. :func:`segment_ids` numbers the segments of every leaf;
:func:`segment_max`, :func:`segment_sum` and :func:`segment_softmax` reduce or
normalise values within segments with ``jax.ops.segment_max`` / ``segment_sum``.
Padding leaves get the id ``num_segments`` (out of range), which those functions
drop, so padding never takes part and keeps value 0. Everything is built from
sorts, gathers and segment reductions, so JAX derives all transformation rules.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch.primitives.formats import CSR
  >>> from jscorch.primitives.layout import Layout
  >>> lay = Layout(CSR, (2, 3), 4)                  # rows {0, 2} and {1}, one padding slot
  >>> indices = (jnp.array([0, 2, 3]), jnp.array([0, 2, 1, 3]))
  >>> ids, n = segment_ids(lay, indices, axis=1)
  >>> ids, n
  (Array([0, 0, 1, 4], dtype=int32), 4)
  >>> segment_softmax(jnp.array([0., 0., 5., 0.]), ids, n)
  Array([0.5, 0.5, 1. , 0. ], dtype=float32)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import checks, convert, row_reduce
from .layout import Layout


def segment_ids(lay: Layout, indices, axis: int) -> tuple[jax.Array, int]:
  """The segment of every leaf when reducing over sparse dimension ``axis``.

  Args:
    lay: the operand's layout.
    indices: its index buffers.
    axis: the reduced dimension, counted among the sparse dimensions
      (``0 <= axis < n_sparse``).

  Returns:
    ``(ids, num_segments)``: ``ids`` is `[*batch, nse]` int, the segment number
    of each leaf within its batch element (``0 <= id < num_segments``), or
    ``num_segments`` for padding; ``num_segments == nse``. Leaves with equal
    coordinates outside ``axis`` share an id.
  """
  assert 0 <= axis < lay.n_sparse, (axis, lay.n_sparse)
  level = lay.format.levels_of_dims[axis]
  keys = [k for k in range(lay.n_sparse) if k != level]
  sizes = lay.level_sizes
  # Ordered storage with the reduced dimension in the last level: segments are
  # contiguous runs already (CSR rows, COO rows, CSF fibres), padding last.
  contiguous = lay.format.ordered and level == lay.n_sparse - 1
  nse = lay.nse
  coords = convert.leaf_coordinates(lay, indices)
  valid = convert.valid_mask(lay, coords)

  def one(coords, valid):
    idt = coords.dtype
    n = coords.shape[0]
    cols = [jnp.where(valid, coords[:, k], sizes[k]) for k in keys]
    if not contiguous:
      order = jax.lax.sort((*cols, (~valid).astype(idt), jnp.arange(n, dtype=idt)),
                           num_keys=len(cols) + 1)[-1]
      cols = [c[order] for c in cols]
      valid = valid[order]
    differs = jnp.zeros(max(n - 1, 0), bool)
    for c in cols:
      differs |= c[1:] != c[:-1]
    first = jnp.concatenate([jnp.ones((min(n, 1),), bool), differs])
    group = jnp.where(valid, jnp.cumsum(first) - 1, nse).astype(idt)
    if contiguous:
      return group
    return jnp.zeros(n, idt).at[order].set(group)

  return convert.vmap_batch(one, lay.n_batch)(coords, valid), nse


def _mask(ids, num_segments, like):
  valid = ids < num_segments
  return valid.reshape(valid.shape + (1,) * (like.ndim - valid.ndim))


def segment_max(data: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
  """`[num_segments, *block]` maximum per segment (``-inf`` / dtype min when empty).

  ``data`` is `[n, *block]`, ``ids`` `[n]` as returned by :func:`segment_ids` for
  one batch element; leaves with ``ids >= num_segments`` are ignored.
  """
  return jax.ops.segment_max(data, ids, num_segments=num_segments)


def segment_sum(data: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
  """`[num_segments, *block]` sum per segment; leaves with ``ids >= num_segments`` ignored."""
  return jax.ops.segment_sum(data, ids, num_segments=num_segments)


def segment_softmax(data: jax.Array, ids: jax.Array, num_segments: int) -> jax.Array:
  """Softmax of ``data`` within each segment; padding leaves get 0.

  Numerically stable (the per-segment maximum, held constant for
  differentiation, is subtracted first). A segment whose entries are all
  ``-inf`` gives NaN, as ``jax.nn.softmax`` does.

  Args:
    data: `[n, *block]` floating values (block elements are independent).
    ids: `[n]` segment ids; ``>= num_segments`` marks padding.
    num_segments: the number of segments.

  Returns:
    `[n, *block]`, the same dtype as ``data``.
  """
  valid = _mask(ids, num_segments, data)
  low = jnp.array(-jnp.inf, data.dtype)
  m = segment_max(jnp.where(valid, data, low), ids, num_segments)
  m = jax.lax.stop_gradient(jnp.where(m == low, 0, m))   # +inf kept: NaN, as jax.nn.softmax
  shift = m.at[ids].get(mode="fill", fill_value=0)
  e = jnp.where(valid, jnp.exp(jnp.where(valid, data - shift, 0)), 0)
  total = segment_sum(e, ids, num_segments)
  denom = total.at[ids].get(mode="fill", fill_value=1)
  return e / jnp.where(valid, denom, 1)


def softmax(lay: Layout, data: jax.Array, indices, axis: int) -> jax.Array:
  """Softmax over sparse dimension ``axis`` of the stored entries; the values of the result.

  The segment ids depend on the pattern only: for concrete index buffers (eager
  calls, and tracing with respect to the values alone, as in ``grad`` of the data)
  they are computed once outside any trace, so only the reductions are staged.

  Args:
    lay: the operand's layout (batch dims are independent).
    data: `[*batch, nse, *block]` values.
    indices: the index buffers.
    axis: the reduced dimension among the sparse dimensions.

  Returns:
    `[*batch, nse, *block]` values at the same pattern; padding holds 0. Implicit
    zeros are absent entries, not ``exp(0)`` terms.

  When the segments are the ranges of a ``pos`` buffer (CSR rows, CSF fibres:
  :func:`segment_pos`) it runs :func:`row_reduce.softmax` (a generated kernel on CPU);
  otherwise segment ids are sorted out of the coordinates.
  """
  pos = segment_pos(lay, indices, axis)
  if pos is not None:
    return row_reduce.softmax(pos, data)
  ids = _pattern_eval(_compiled_ids(lay, axis), tuple(indices))
  return _compiled_softmax(lay.n_batch, lay.nse)(data, ids)


def segment_pos(lay: Layout, indices, axis: int):
  """The ``pos`` buffer `[*batch, segments + 1]` whose ranges are exactly the segments of
  ``axis`` (so :mod:`.row_reduce` applies), or None.

  That holds when ``axis`` is stored in the last level, that level has a ``pos`` buffer,
  and every level above it is unique (each parent position is a distinct coordinate).
  """
  levels = lay.format.levels
  if (lay.format.levels_of_dims[axis] != len(levels) - 1 or "pos" not in levels[-1].buffers
      or not all(level.unique for level in levels[:-1])):
    return None
  offset = sum(len(level.buffers) for level in levels[:-1])
  return indices[offset + levels[-1].buffers.index("pos")]


def valid_leaves(lay: Layout, indices) -> jax.Array:
  """`[*batch, nse]` bool: which leaves are in use (not padding); jitted per layout."""
  return _pattern_eval(_compiled_valid(lay), tuple(indices))


def _pattern_eval(fn, indices):
  """``fn(indices)``, evaluated outside any trace when the index buffers are concrete."""
  if checks.is_concrete(*indices):
    with jax.ensure_compile_time_eval():
      return fn(indices)
  return fn(indices)


@functools.lru_cache(maxsize=512)
def _compiled_ids(lay: Layout, axis: int):
  return jax.jit(lambda idx: segment_ids(lay, idx, axis)[0])


@functools.lru_cache(maxsize=512)
def _compiled_softmax(n_batch: int, num_segments: int):
  def run(data, ids):
    one = lambda d, i: segment_softmax(d, i, num_segments)
    return convert.vmap_batch(one, n_batch)(data, ids)
  return jax.jit(run)


@functools.lru_cache(maxsize=512)
def _compiled_valid(lay: Layout):
  return jax.jit(lambda idx: convert.valid_mask(lay, convert.leaf_coordinates(lay, idx)))
