"""Shape operations on SparseArrays: reshape, expand_dims, squeeze, broadcast_to, stack, concat.

Operations that only add, remove or repeat **batch** or **block** dimensions act on
the buffers directly (free). Operations that change the **sparse** dimensions
rebuild the level buffers from logical coordinates
(:func:`jscorch.primitives.union.logical_coordinates` in,
:func:`jscorch.primitives.convert.from_coordinates` out); values move by gathers
and scatters, so ``jit``, ``vmap``, ``grad`` and ``eval_shape`` come from JAX.
Padding stays padding and duplicates are summed when the result format is unique.

**Result format rule** (``format=None``): an operation that changes the number of
sparse dimensions keeps the input's *named* format when that name exists for the new
sparse rank (``"coo"`` and ``"csf"`` exist for every rank, ``"csr"`` / ``"csc"`` /
``"dcsr"`` only for 2), and uses ``"coo"`` otherwise (custom formats included). An
operation that keeps the sparse rank keeps the input's format. ``format=`` overrides.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> A = js.from_dense(jnp.array([[1., 0., 0.], [0., 0., 2.]]), format="csr")
  >>> B = js.reshape(A, (3, 2))
  >>> B.format == js.CSR, B.todense().tolist()
  (True, [[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
"""
from __future__ import annotations

import builtins
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.ops import blocks
from jscorch.ops import layout as ops_layout
from jscorch.ops._operands import no_foreign
from jscorch.primitives import convert, union
from jscorch.primitives.formats import Format, FormatLike, resolve_format
from jscorch.primitives.layout import Layout, index_dtype_for


# -- coordinates in, level buffers out ------------------------------------------------------
def entries(A: SparseArray):
  """``(coords, valid)``: `[*batch, nse, n_sparse]` logical coordinates and `[*batch, nse]` use."""
  lay = A.layout
  idt = lay.index_dtype
  coords = union.logical_coordinates(lay, A.indices).astype(idt)
  valid = jnp.all(coords < jnp.asarray(lay.sparse_shape, idt), axis=-1)
  return coords, valid


def build(coords, valid, data, shape, fmt: Format, nse: int, func: str) -> SparseArray:
  """A SparseArray of ``shape`` in ``fmt`` (with its n_batch / n_dense) from logical entries.

  Args:
    coords: `[*batch, n, n_sparse]` logical coordinates (any integer dtype).
    valid: `[*batch, n]` which rows are entries (the others become padding).
    data: `[*batch, n, *block]` values.
    shape: the full result shape; fmt: the result format; nse: its capacity.
  """
  if fmt.n_sparse and fmt.all_dense:
    nse = math.prod(shape[fmt.n_batch:fmt.n_batch + fmt.n_sparse])
  lay = Layout.make(fmt, shape, nse, func)
  idt = lay.index_dtype
  coords = jnp.where(valid[..., None], coords.astype(idt), jnp.asarray(lay.sparse_shape, idt))
  data, indices = convert.from_coordinates(lay, convert.logical_to_storage(lay, coords), data,
                                           func=func)
  return SparseArray._make(data, indices, fmt, shape)


def default_format(A: SparseArray, n_sparse: int, n_batch: int, n_dense: int,
                   format: FormatLike | None, func: str) -> Format:
  """The result format (see the module docstring) with the given dimension split."""
  if format is None:
    if n_sparse == A.n_sparse:
      return A.format.replace(n_batch=n_batch, n_dense=n_dense)
    name = A.format.name
    format = name if name in ("coo", "csf") or (name and n_sparse == 2) else "coo"
  return resolve_format(format, n_batch + n_sparse + n_dense, n_batch=n_batch, n_dense=n_dense,
                        func=func)


def flat_entries(A: SparseArray):
  """Every stored scalar of ``A`` as ``(coords [N, ndim], values [N], valid [N])``.

  Batch dims and block dims become coordinates, so ``N = prod(batch) * nse * prod(block)``.
  Duplicates stay (a unique result format sums them).
  """
  lay = A.layout
  nb, nd = A.n_batch, A.n_dense
  sp, valid = entries(A)
  idt = sp.dtype
  cols = [jax.lax.broadcasted_iota(idt, sp.shape[:-1], d) for d in range(nb)]
  cols += [sp[..., k] for k in range(A.n_sparse)]
  full = lay.batch_shape + (A.nse,) + lay.block_shape
  cols = [jnp.broadcast_to(c.reshape(c.shape + (1,) * nd), full) for c in cols]
  cols += [jax.lax.broadcasted_iota(idt, full, nb + 1 + d) for d in range(nd)]
  valid = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * nd), full)
  coords = jnp.stack([c.reshape(-1) for c in cols], axis=-1)
  return coords, A.data.reshape(-1), valid.reshape(-1)


def transform(A: SparseArray, perm: Sequence[int], func: str,
              format: FormatLike | None = None) -> SparseArray:
  """``A`` with dims permuted by ``perm`` across the batch/sparse/block groups (rebuilt).

  The result has no batch or block dims (every dim is sparse).
  """
  coords, values, valid = flat_entries(A)
  shape = tuple(A.shape[d] for d in perm)
  fmt = default_format(A, len(shape), 0, 0, format, func)
  return build(coords[:, list(perm)], valid, values, shape, fmt, values.shape[0], func)


def common_split(arrays: Sequence[SparseArray]) -> list[SparseArray]:
  """``arrays`` with their smallest ``n_batch`` and ``n_dense``: the batch and block dims
  that another operand stores as sparse become sparse (:func:`jscorch.update_layout`)."""
  nb = builtins.min(x.n_batch for x in arrays)
  nd = builtins.min(x.n_dense for x in arrays)
  return [ops_layout.update_layout(x, nb, nd, on_inefficient=None) for x in arrays]


# -- reshape ---------------------------------------------------------------------------------
def _new_shape(shape, size: int, old_shape, func: str) -> tuple[int, ...]:
  if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)) and hasattr(shape[0],
                                                                                  "__len__"):
    shape = tuple(shape[0])
  shape = _static.static_shape(shape, func)
  if builtins.sum(s == -1 for s in shape) > 1 or any(s < -1 for s in shape):
    raise ValueError(f"{func}: at most one dimension may be -1 and none other negative; got "
                     f"shape={shape}.")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if known == 0 or size % known:
      raise ValueError(f"{func}: cannot infer -1 in shape={shape} for an array of size {size} "
                       f"(shape {old_shape}); got {known=}, expected a divisor of {size}.")
    shape = tuple(size // known if s == -1 else s for s in shape)
  if math.prod(shape) != size:
    raise ValueError(f"{func}: cannot reshape an array of size {size} (shape {old_shape}) into "
                     f"shape {shape} of size {math.prod(shape)}; the sizes must be equal.")
  return shape


def reshape(A: SparseArray, shape: Sequence[int] | int, *, format: FormatLike | None = None):
  """``A`` reshaped in row-major order, as ``jnp.reshape`` (dense arrays: ``jnp.reshape``).

  When the new shape keeps ``A``'s batch shape in front and block shape at the end,
  only the sparse dims are reshaped (per batch element, same ``nse``, same
  ``n_batch`` / ``n_dense``). Otherwise every dim becomes sparse: the result has
  ``n_batch = n_dense = 0`` and capacity ``prod(batch) * nse * prod(block)``.
  The format follows the rule of :mod:`jscorch.ops.shape` unless ``format=`` is given.

  Args:
    A: a SparseArray (or a dense array).
    shape: the new shape (static), one entry may be ``-1``.
    format: the result format (static), default: see above.

  Returns:
    A SparseArray of ``shape``; duplicates are summed when the result format is unique.

  Raises:
    ValueError: the sizes differ, more than one ``-1``, or a 0-d result.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 0., 2.]]), format="coo")
    >>> js.reshape(A, (2, -1)).todense()
    Array([[1., 0.],
           [0., 2.]], dtype=float32)
  """
  if not is_sparse(A):
    return jnp.reshape(A, shape)
  return reshape_as(A, shape, format, "reshape")


def reshape_as(A: SparseArray, shape, format: FormatLike | None, func: str) -> SparseArray:
  """:func:`reshape` of a SparseArray, naming ``func`` in its errors."""
  blocks.refuse(func, A=A)
  shape = _new_shape(shape if isinstance(shape, (tuple, list)) else (shape,), A.size, A.shape,
                     func)
  if not shape:
    raise ValueError(f"{func}: a SparseArray needs at least one dimension; got shape=() for "
                     f"{A!r}. Use A.todense().reshape(()) for a scalar.")
  if shape == A.shape and format is None:
    return A
  nb, nd, ns = A.n_batch, A.n_dense, A.n_sparse
  batch, block = A.shape[:nb], A.shape[nb + ns:]
  keep = len(shape) > nb + nd and shape[:nb] == batch and shape[len(shape) - nd:] == block
  if not keep:
    coords, values, valid = flat_entries(A)
    old, new = A.shape, shape
    nb = nd = 0
    n = values.shape[0]
  else:
    coords, valid = entries(A)
    values = A.data
    old, new = A.shape[nb:nb + ns], shape[nb:len(shape) - nd]
    n = A.nse
  idt = index_dtype_for(builtins.max(math.prod(old), 1), func)
  strides = np.cumprod((1,) + tuple(old[::-1]))[::-1][1:]
  lin = jnp.sum(jnp.where(valid[..., None], coords.astype(idt), 0) * jnp.asarray(strides, idt),
                axis=-1)
  coords = jnp.stack(jnp.unravel_index(lin, new), -1)
  fmt = default_format(A, len(new), nb, nd, format, func)
  return build(coords, valid, values, shape, fmt, n, func)


# -- unit dims -------------------------------------------------------------------------------
def expand_dims(A: SparseArray, axis: int | Sequence[int], *, format: FormatLike | None = None):
  """``A`` with unit dims inserted at ``axis`` (positions in the result), as ``jnp.expand_dims``.

  A new dim at position ``p`` becomes a **batch** dim when ``p <= n_batch`` and a
  **block** dim when ``p > n_batch + n_sparse`` (both free: the buffers gain a unit
  axis); otherwise it is a new **sparse** dim (rebuilt, same ``nse``; format rule
  of :mod:`jscorch.ops.shape` unless ``format=`` is given).

  Raises:
    ValueError: ``axis`` out of range for the result, or repeated.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.eye(2), format="csr")
    >>> js.expand_dims(A, 0)
    SparseArray(float32[1, 2, 2], format=CSR, nse=2, n_batch=1)
    >>> js.expand_dims(A, 1).shape, js.expand_dims(A, 1).format.name
    ((2, 1, 2), 'coo')
  """
  func = "expand_dims"
  if not is_sparse(A):
    return jnp.expand_dims(A, axis)
  n_new = len(axis) if isinstance(axis, (tuple, list)) else 1
  for p in _static.axes(axis, A.ndim + n_new, func):     # ascending positions in the result
    A = _insert_unit(A, p, format, func)
  return A


def _insert_unit(A: SparseArray, p: int, format, func: str) -> SparseArray:
  nb, ns, nd = A.n_batch, A.n_sparse, A.n_dense
  shape = A.shape[:p] + (1,) + A.shape[p:]
  if p <= nb:
    return SparseArray._make(jnp.expand_dims(A.data, p), [jnp.expand_dims(i, p) for i in A.indices],
                             A.format.replace(n_batch=nb + 1), shape)
  if p > nb + ns:
    return SparseArray._make(jnp.expand_dims(A.data, p - ns + 1), A.indices,
                             A.format.replace(n_dense=nd + 1), shape)
  coords, valid = entries(A)
  k = p - nb
  coords = jnp.concatenate([coords[..., :k], jnp.zeros_like(coords[..., :1]), coords[..., k:]], -1)
  fmt = default_format(A, ns + 1, nb, nd, format, func)
  return build(coords, valid, A.data, shape, fmt, A.nse, func)


def squeeze(A: SparseArray, axis: int | Sequence[int] | None = None, *,
            format: FormatLike | None = None):
  """``A`` without the unit dims ``axis`` (default: all of them), as ``jnp.squeeze``.

  Batch and block dims are dropped from the buffers (free); sparse dims are dropped
  by a rebuild (same ``nse``; format rule of :mod:`jscorch.ops.shape`). Removing
  every sparse dim gives a **dense** array.

  Raises:
    ValueError: an ``axis`` whose size is not 1, or out of range.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 3., 0.]]), format="csr")
    >>> js.squeeze(A, 0).todense(), js.squeeze(A, 0).format == js.Format(js.compressed)
    (Array([0., 3., 0.], dtype=float32), True)
  """
  func = "squeeze"
  if not is_sparse(A):
    return jnp.squeeze(A, axis)
  blocks.refuse(func, A=A)
  axes = tuple(d for d, n in enumerate(A.shape) if n == 1) if axis is None else \
      _static.axes(axis, A.ndim, func)
  for d in axes:
    if A.shape[d] != 1:
      raise ValueError(f"{func}: cannot squeeze axis {d} of size {A.shape[d]} (shape {A.shape}); "
                       "expected size 1.")
  nb, ns = A.n_batch, A.n_sparse
  sparse = [d - nb for d in axes if nb <= d < nb + ns]
  if len(sparse) == ns and ns:
    return jnp.squeeze(A.todense(), axes)
  batch = tuple(d for d in axes if d < nb)
  block = tuple(d - ns + 1 for d in axes if d >= nb + ns)
  shape = tuple(n for d, n in enumerate(A.shape) if d not in axes)
  nb2, nd2 = nb - len(batch), A.n_dense - len(block)
  if not sparse:
    return SparseArray._make(jnp.squeeze(A.data, batch + block),
                             [jnp.squeeze(i, batch) for i in A.indices],
                             A.format.replace(n_batch=nb2, n_dense=nd2), shape)
  coords, valid = entries(A)
  kept = [k for k in range(ns) if k not in sparse]
  coords, valid = coords[..., kept], valid
  data = jnp.squeeze(A.data, block)
  if batch:
    data = jnp.squeeze(data, batch)
    coords, valid = jnp.squeeze(coords, batch), jnp.squeeze(valid, batch)
  fmt = default_format(A, len(kept), nb2, nd2, format, func)
  return build(coords, valid, data, shape, fmt, A.nse, func)


def broadcast_to(A: SparseArray, shape: Sequence[int]):
  """``A`` broadcast to ``shape`` over new leading **batch** dims (and its unit batch dims).

  ``shape`` must end with ``A``'s sparse and block shape; the dims in front become
  batch dims (``n_batch`` grows by their number) and the index buffers are broadcast
  with the values, so every batch element shares ``A``'s pattern.

  Raises:
    ValueError: ``shape`` would broadcast a sparse or block dim.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.broadcast_to(js.from_dense(jnp.eye(2), format="csr"), (3, 2, 2))
    SparseArray(float32[3, 2, 2], format=CSR, nse=2, n_batch=1)
  """
  func = "broadcast_to"
  if not is_sparse(A):
    return jnp.broadcast_to(A, shape)
  shape = _static.static_shape(shape, func)
  nb = A.n_batch
  lead = len(shape) - A.ndim
  rest = A.shape[nb:]
  ok = lead >= 0 and shape[len(shape) - len(rest):] == rest and all(
      a in (1, b) for a, b in zip(A.shape[:nb], shape[lead:lead + nb]))
  if not ok:
    raise ValueError(f"{func}: cannot broadcast {A!r} to shape {shape}; expected new leading "
                     f"dims, batch dims of size 1 or {A.shape[:nb]}, then exactly the sparse and "
                     f"block shape {rest}. Densify with A.todense() for other broadcasts.")
  batch = shape[:lead + nb]
  data = jnp.broadcast_to(A.data, batch + A.data.shape[nb:])
  indices = [jnp.broadcast_to(i, batch + i.shape[nb:]) for i in A.indices]
  return SparseArray._make(data, indices, A.format.replace(n_batch=len(batch)), shape)


# -- joining ---------------------------------------------------------------------------------
def _all_sparse(arrays, func: str) -> bool:
  if not any(is_sparse(x) for x in arrays):
    return False
  if not all(is_sparse(x) for x in arrays):
    kinds = [type(x).__name__ for x in arrays]
    raise TypeError(f"{func}: operands must be all SparseArrays or all dense; got {kinds}. "
                    "Convert with js.from_dense(x) or A.todense() first.")
  for k, x in enumerate(arrays):
    blocks.refuse(func, **{f"arrays[{k}]": x})
  return True


def stack(arrays: Sequence, axis: int = 0, *, dtype=None):
  """Joins equally shaped arrays along a new dim ``axis``, as ``jnp.stack``.

  SparseArrays are expanded with :func:`expand_dims` (a new **batch** dim when
  ``axis <= n_batch``: buffers stacked, capacities padded to the largest and formats
  converted to the first operand's; a new **sparse** dim otherwise: patterns
  merged) and joined with :func:`concatenate`. Block axes are refused.

  Raises:
    TypeError: a mix of sparse and dense operands.
    ValueError: different shapes or dim splits, an empty list, or a block ``axis``.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.eye(2), format="csr")
    >>> js.stack([A, 2 * A])
    SparseArray(float32[2, 2, 2], format=CSR, nse=2, n_batch=1)
  """
  func = "stack"
  arrays = list(arrays)
  if not arrays:
    raise ValueError(f"{func}: need at least one array; got an empty sequence.")
  if not _all_sparse(arrays, func):
    return jnp.stack(arrays, axis=axis, dtype=dtype)
  first = arrays[0]
  for x in arrays[1:]:
    if x.shape != first.shape or (x.n_batch, x.n_dense) != (first.n_batch, first.n_dense):
      raise ValueError(f"{func}: all operands must have the same shape and batch/block split; "
                       f"got shapes {[y.shape for y in arrays]} with (n_batch, n_dense) "
                       f"{[(y.n_batch, y.n_dense) for y in arrays]}.")
  (ax,) = _static.axes(axis, first.ndim + 1, func)
  if ax > first.n_batch + first.n_sparse:
    raise ValueError(f"{func}: axis {ax} would be a block dimension of {first!r}; got "
                     f"axis={axis}, expected axis <= {first.n_batch + first.n_sparse}. "
                     "Densify with A.todense() first.")
  return concatenate([expand_dims(x, ax) for x in arrays], axis=ax, dtype=dtype)


def concatenate(arrays: Sequence, axis: int = 0, dtype=None):
  """Joins arrays along ``axis``; SparseArrays along a sparse or batch dimension.

  All operands must be SparseArrays (or all dense) with equal shapes except
  along ``axis``; their formats may differ, and so may their batch / block splits (a
  batch or block dim that another operand stores as sparse becomes sparse, as with
  :func:`jscorch.update_layout`). Along a sparse dimension the coordinates are shifted and merged
  (the result has the first operand's format, ordered and unique, and capacity the
  sum of the capacities); along a batch dimension the buffers are stacked (formats
  converted to the first operand's, capacities padded to the largest).

  Raises:
    TypeError: a mix of sparse and dense operands.
    ValueError: mismatched shapes or dim splits, or a block ``axis``.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> js.concatenate([A, A], axis=1).todense()
    Array([[1., 0., 1., 0.],
           [0., 2., 0., 2.]], dtype=float32)
  """
  func = "concatenate"
  arrays = list(arrays)
  if not arrays:
    raise ValueError(f"{func}: need at least one array; got an empty sequence.")
  if not _all_sparse(arrays, func):
    return jnp.concatenate(arrays, axis=axis, dtype=dtype)
  (ax,) = _static.axes(axis, arrays[0].ndim, func)
  if all(x.ndim == arrays[0].ndim for x in arrays):     # mixed splits: batch / block dims
    arrays = common_split(arrays)                       # become sparse where one has them
  first = arrays[0]
  for x in arrays[1:]:
    if x.ndim != first.ndim or (x.n_batch, x.n_dense) != (first.n_batch, first.n_dense) or \
        any(s != t for d, (s, t) in enumerate(zip(x.shape, first.shape)) if d != ax):
      raise ValueError(f"{func}: operands must match except along axis {ax}; got shapes "
                       f"{[y.shape for y in arrays]} with (n_batch, n_dense) "
                       f"{[(y.n_batch, y.n_dense) for y in arrays]}, expected equal other "
                       "dimensions and the same batch/block split.")
  dtype = dtype or jnp.result_type(*[x.dtype for x in arrays])
  arrays = [x.astype(dtype) for x in arrays]
  nb, ns = first.n_batch, first.n_sparse
  if ax < nb:
    nse = builtins.max(x.nse for x in arrays)
    arrays = [x.asformat(first.format, nse=nse) for x in arrays]
    data = jnp.concatenate([x.data for x in arrays], axis=ax)
    indices = [jnp.concatenate(bufs, axis=ax) for bufs in zip(*[x.indices for x in arrays])]
    shape = first.shape[:ax] + (data.shape[ax],) + first.shape[ax + 1:]
    return SparseArray._make(data, indices, first.format, shape)
  if ax >= nb + ns:
    raise ValueError(f"{func}: axis {ax} is a block dimension of {first!r}; got axis={axis}, "
                     f"expected a batch or sparse dimension (< {nb + ns}). Densify with "
                     "A.todense() first.")
  d = ax - nb
  offsets, at = [], 0
  for x in arrays:
    offsets.append([at if k == d else 0 for k in range(ns)])
    at += x.shape[ax]
  shape = first.shape[:ax] + (at,) + first.shape[ax + 1:]
  fmt = union.canonical_format(first.format)
  nse = builtins.sum(x.nse for x in arrays)
  if fmt.all_dense:
    nse = math.prod(shape[nb:nb + ns])
  out = Layout.make(fmt, shape, nse, func)
  data, indices = union.union(out, [(x.layout, x.data, x.indices) for x in arrays],
                              func=func, offsets=offsets)
  return SparseArray._make(data, indices, fmt, shape)


def transpose(a, axes: Sequence[int] | None = None):
  """Permutes dimensions (``jnp.transpose``); free for a SparseArray within dim groups.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> js.transpose(js.from_dense(jnp.eye(2)), (1, 0)).format
    Format(dense, compressed, mode_ordering=(1, 0))
  """
  if is_sparse(a):
    return a.transpose(axes)
  no_foreign("transpose", a=a)
  return jnp.transpose(a, axes)
