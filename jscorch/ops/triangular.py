"""Triangles and diagonals of SparseArrays: ``tril``, ``triu``, ``diagonal``, ``diag``.

``tril`` / ``triu`` mask the stored entries of the last two dimensions and keep
the format and capacity: when both are batch or sparse dimensions a masked
entry becomes **padding** (it is no longer stored; ``A.nnz`` drops, ``A.nse``
stays); when one is a dense block dimension, the masked elements of the
blocks become explicit zeros (a block is stored or not as a whole).
``diagonal`` reads a diagonal into a dense array; ``diag`` builds a sparse
diagonal matrix from a dense vector (or reads the diagonal of a sparse matrix,
as ``numpy.diag``). All work under ``jit`` (``k`` / ``offset`` / axes static),
``vmap`` and ``grad`` with respect to the values; duplicates are summed where a
value is read, padding is ignored.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.ops import blocks, coalesce, reduce
from jscorch.primitives import convert
from jscorch.primitives.formats import FormatLike, resolve_format
from jscorch.primitives.layout import Layout, index_dtype_for
from jscorch.primitives.union import logical_coordinates


# -- tril / triu ------------------------------------------------------------------------------
def _coordinate(A: SparseArray, d: int, sp):
  """The coordinate along dim ``d`` of every stored element: `A.data.shape` ints."""
  nb, ns = A.n_batch, A.n_sparse
  shape = A.data.shape
  idt = sp.dtype
  if d < nb:
    return jax.lax.broadcasted_iota(idt, shape, d)
  if d < nb + ns:
    c = sp[..., d - nb]
    return jnp.broadcast_to(c.reshape(c.shape + (1,) * A.n_dense), shape)
  return jax.lax.broadcasted_iota(idt, shape, d - ns + 1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _triangle_mask(A: SparseArray, k: int, lower: bool):
  """`A.data.shape` bool: which stored elements lie in the triangle."""
  sp = logical_coordinates(A.layout, A.indices)
  i = _coordinate(A, A.ndim - 2, sp)
  j = _coordinate(A, A.ndim - 1, sp)
  return (j - i <= k) if lower else (j - i >= k)


def _triangle(a, k, lower: bool, func: str):
  if not is_sparse(a):
    return jnp.tril(a, k) if lower else jnp.triu(a, k)
  blocks.refuse(func, a=a)
  k = _static.static_int(k, "k", func)
  if a.ndim < 2:
    raise ValueError(f"{func}: needs an array of rank >= 2; got {a!r}, expected at least two "
                     "dimensions (the triangle is taken in the last two).")
  mask = _triangle_mask(a, k, lower)
  if a.n_dense:     # the last dim is a block dim: zero the elements inside the blocks
    return a.with_data(jnp.where(mask, a.data, jnp.zeros((), a.dtype)))
  return coalesce.drop_entries(a, mask, func=func)


def tril(a, k: int = 0):
  """The lower triangle (``j - i <= k``) of the last two dimensions, as ``jnp.tril``.

  For a SparseArray the result keeps ``a``'s format and capacity: entries
  outside the triangle become padding (or, if a dense block dimension is one
  of the last two, zeros inside the stored blocks). Values are not summed or
  reordered otherwise. A dense ``a`` gives ``jnp.tril(a, k)``.

  Args:
    a: a SparseArray or dense array of rank >= 2.
    k: the diagonal offset (static int): 0 the main diagonal, > 0 above it.

  Returns:
    A SparseArray of ``a``'s format, shape and ``nse`` (dense for dense ``a``).

  Raises:
    ValueError: rank below 2.
    TypeError: ``k`` traced or not an int.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.arange(1., 10.).reshape(3, 3))
    >>> L = js.tril(A)
    >>> L.todense(), L.nse, int(L.nnz)
    (Array([[1., 0., 0.],
           [4., 5., 0.],
           [7., 8., 9.]], dtype=float32), 9, 6)
  """
  return _triangle(a, k, True, "tril")


def triu(a, k: int = 0):
  """The upper triangle (``j - i >= k``) of the last two dimensions (see :func:`tril`).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.arange(1., 10.).reshape(3, 3), format="coo")
    >>> js.triu(A, k=1).todense()
    Array([[0., 2., 3.],
           [0., 0., 6.],
           [0., 0., 0.]], dtype=float32)
  """
  return _triangle(a, k, False, "triu")


# -- diagonal ---------------------------------------------------------------------------------
def _diagonal_length(n1: int, n2: int, offset: int) -> int:
  return max(0, min(n1, n2 - offset) if offset >= 0 else min(n1 + offset, n2))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _diagonal(A: SparseArray, offset: int, axis1: int, axis2: int):
  coords, values, valid = reduce.scalars(A)
  others = [d for d in range(A.ndim) if d not in (axis1, axis2)]
  length = _diagonal_length(A.shape[axis1], A.shape[axis2], offset)
  out_shape = tuple(A.shape[d] for d in others) + (length,)
  n_out = math.prod(out_shape)
  idt = index_dtype_for(max(n_out, max(A.shape, default=0)) + 1)
  coords = coords.astype(idt)
  on = valid & (coords[:, axis2] - coords[:, axis1] == offset)
  flat = jnp.zeros(values.shape, idt)
  for d in others:
    flat = flat * A.shape[d] + coords[:, d]
  flat = flat * length + coords[:, axis1 if offset >= 0 else axis2]
  flat = jnp.where(on, flat, n_out)
  out = convert.scatter_sum(jnp.zeros((n_out,), A.dtype), flat, values)
  return out.reshape(out_shape)


def diagonal(a, offset: int = 0, axis1: int = 0, axis2: int = 1):
  """The diagonal of ``a`` over ``axis1`` and ``axis2``, as ``numpy.diagonal``: dense.

  The two axes are removed and the diagonal (elements ``a[..., i, i + offset]``)
  is appended as the last axis. For a SparseArray only the stored entries are
  read (duplicates summed, padding ignored); its gradient reaches the stored
  values on the diagonal. Any dims qualify (batch, sparse, block).

  Args:
    a: a SparseArray or dense array of rank >= 2.
    offset: the diagonal (static int): > 0 above the main one, < 0 below.
    axis1, axis2: the two (distinct) axes (static).

  Returns:
    A dense array of ``a.dtype``.

  Raises:
    ValueError: an axis out of range, or ``axis1 == axis2``.
    TypeError: ``offset`` or an axis traced or not an int.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 2., 0.], [0., 3., 4.]]))
    >>> A.diagonal(), js.diagonal(A, offset=1)
    (Array([1., 3.], dtype=float32), Array([2., 4.], dtype=float32))
  """
  if not is_sparse(a):
    return jnp.diagonal(a, offset, axis1, axis2)
  func = "diagonal"
  blocks.refuse(func, a=a)
  offset = _static.static_int(offset, "offset", func)
  if a.ndim < 2:
    raise ValueError(f"{func}: needs an array of rank >= 2; got {a!r}.")
  (ax1,), (ax2,) = _static.axes(axis1, a.ndim, func), _static.axes(axis2, a.ndim, func)
  if ax1 == ax2:
    raise ValueError(f"{func}: axis1 and axis2 must differ; got axis1={axis1}, "
                     f"axis2={axis2} (both dimension {ax1}). Pick two different axes.")
  return _diagonal(a, offset, ax1, ax2)


def diag(v, k: int = 0, *, format: FormatLike = "csr"):
  """``numpy.diag``: a 1-D dense ``v`` gives a sparse diagonal matrix; a 2-D ``v`` its diagonal.

  * ``v`` dense, 1-D (length ``n``): a SparseArray of shape ``(n + |k|, n + |k|)``
    in ``format`` storing ``v`` on diagonal ``k`` — every element of ``v``,
    zeros included, so the pattern (and ``nse = n``) does not depend on the
    values (call ``eliminate_zeros`` to drop zeros). Differentiable in ``v``.
  * ``v`` a 2-D SparseArray: its diagonal ``k`` as a dense array
    (:func:`diagonal`); ``v`` dense 2-D: ``jnp.diag(v, k)``.

  Args:
    v: a dense vector, or a 2-D matrix (sparse or dense).
    k: the diagonal (static int).
    format: the format of a built matrix (2-D; default CSR).

  Raises:
    ValueError: ``v`` of another rank.
    TypeError: ``k`` traced or not an int.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> D = js.diag(jnp.array([1., 2.]), k=1)
    >>> D.todense(), D.nse
    (Array([[0., 1., 0.],
           [0., 0., 2.],
           [0., 0., 0.]], dtype=float32), 2)
    >>> js.diag(D, k=1)
    Array([1., 2.], dtype=float32)
  """
  func = "diag"
  k = _static.static_int(k, "k", func)
  if is_sparse(v):
    if v.ndim != 2:
      raise ValueError(f"{func}: a SparseArray must be 2-D (its diagonal is read); got "
                       f"{v!r}. For a sparse vector call js.diag(v.todense(), k).")
    return diagonal(v, k)
  v = jnp.asarray(v)
  if v.ndim == 2:
    return jnp.diag(v, k)
  if v.ndim != 1:
    raise ValueError(f"{func}: expects a 1-D vector or a 2-D matrix; got v.shape={v.shape}.")
  fmt = resolve_format(format, 2, n_batch=0, n_dense=0, func=func)
  m = v.shape[0] + abs(k)
  data, indices = _diag_matrix(v, k, fmt)
  return SparseArray._make(data, indices, fmt, (m, m))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _diag_matrix(v, k: int, fmt):
  """The level buffers of the ``(n + |k|)``-square matrix with ``v`` on diagonal ``k``."""
  n = v.shape[0]
  m = n + abs(k)
  nse = m * m if fmt.all_dense else n
  lay = Layout.make(fmt, (m, m), nse, "diag")
  i = jnp.arange(n, dtype=lay.index_dtype)
  coords = jnp.stack([i + max(-k, 0), i + max(k, 0)], axis=-1)
  # The diagonal is monotone in both coordinates: sorted in every storage order.
  return convert.from_coordinates(lay, convert.logical_to_storage(lay, coords), v,
                                  func="diag", is_sorted=True, is_unique=True)
