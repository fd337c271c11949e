"""Reductions of SparseArrays: ``sum``, ``max``, ``min``, ``mean``, ``count_nonzero``,
and the stored-entries-only ``segment_max`` / ``segment_min``.

``sum`` is an einsum over the stored entries (implicit zeros add nothing).

``max``, ``min``, ``mean`` and ``count_nonzero`` reduce the **dense** array a
SparseArray stands for: its implicit zeros take part. The maximum of a row that
stores only negative values is 0 when the row has an implicit zero, and its
largest stored value when every coordinate of the row is stored. Duplicates are
summed before anything is compared (a coordinate's value is the sum of its
duplicates); padding is ignored. Results are dense arrays.

``segment_max`` / ``segment_min`` reduce the **stored** entries only (implicit
zeros are absent, as in ``js.softmax``): the row maximum of graph attention or
of a sparse log-sum-exp. A slice without stored entries gets ``empty``.

Gradients (with respect to the stored values) follow ``jnp.max``: the cotangent
of a maximum is split evenly among the elements that attain it — including an
implicit zero, whose share is dropped, since it is not a stored value.

Every function works under ``jit`` (``axis`` static), ``vmap`` and ``grad``, and
accepts dense arrays too (then it is the ``jax.numpy`` function).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.ops import blocks, coalesce
from jscorch.ops._operands import letters, no_foreign
from jscorch.primitives.layout import index_dtype_for
from jscorch.primitives.union import logical_coordinates

Axis = int | Sequence[int] | None


# -- the stored scalars and their output slots ------------------------------------------------
def scalars(A: SparseArray):
  """Every stored scalar of ``A`` as ``(coords, values, valid)`` (no duplicate summing).

  Returns:
    ``coords`` `[N, ndim]` int logical coordinates (batch, sparse and block dims),
    ``values`` `[N]` and ``valid`` `[N]` bool (False for padding), with
    ``N = prod(batch) * nse * prod(block)``.
  """
  lay = A.layout
  idt = lay.index_dtype
  nb, nd = A.n_batch, A.n_dense
  sp = logical_coordinates(lay, A.indices).astype(idt)                 # [*batch, nse, ns]
  valid = jnp.all(sp < jnp.asarray(lay.sparse_shape, idt), axis=-1)
  full = A.data.shape
  expand = lambda c: jnp.broadcast_to(c.reshape(c.shape + (1,) * nd), full)
  cols = [jax.lax.broadcasted_iota(idt, full, d) for d in range(nb)]
  cols += [expand(sp[..., k]) for k in range(A.n_sparse)]
  cols += [jax.lax.broadcasted_iota(idt, full, nb + 1 + d) for d in range(nd)]
  coords = jnp.stack([c.reshape(-1) for c in cols], axis=-1)
  return coords, A.data.reshape(-1), expand(valid).reshape(-1)


def _slots(A: SparseArray, coords, valid, axes: tuple[int, ...]):
  """The flat output position of each scalar when reducing ``axes`` (padding: ``n_out``)."""
  kept = [d for d in range(A.ndim) if d not in axes]
  out_shape = tuple(A.shape[d] for d in kept)
  n_out = math.prod(out_shape)
  idt = index_dtype_for(n_out + 1)
  strides = np.cumprod((1,) + out_shape[::-1])[::-1][1:]
  seg = jnp.zeros(coords.shape[:1], idt)
  for d, s in zip(kept, strides):
    seg = seg + coords[:, d].astype(idt) * idt.type(s)
  return jnp.where(valid, seg, n_out), n_out, out_shape


@functools.partial(jax.jit, static_argnums=(1, 2))
def _reduce(A: SparseArray, axes: tuple[int, ...], kind: str):
  """``(result, stored)``: per output slot, the max / min / nonzero count of the stored
  scalars of the coalesced ``A``, and how many coordinates are stored there."""
  A = coalesce.sum_duplicates(A)
  coords, values, valid = scalars(A)
  seg, n_out, out_shape = _slots(A, coords, valid, axes)
  stored = jax.ops.segment_sum(valid.astype(seg.dtype), seg, num_segments=n_out)
  if kind == "count":
    result = jax.ops.segment_sum((valid & (values != 0)).astype(seg.dtype), seg,
                                 num_segments=n_out)
  else:
    reduce = jax.ops.segment_max if kind == "max" else jax.ops.segment_min
    result = reduce(values, seg, num_segments=n_out)
  return result.reshape(out_shape), stored.reshape(out_shape)


def _check_values(A: SparseArray, func: str):
  if jnp.issubdtype(A.dtype, jnp.complexfloating):
    raise TypeError(f"{func}: complex values have no order; got dtype {A.dtype}, expected "
                    "real values. Reduce A.real or abs(A) instead.")


def _unsupported(func: str, **kwargs):
  extra = {k: v for k, v in kwargs.items() if v is not None}
  if extra:
    raise TypeError(f"{func}: {sorted(extra)} not supported for a SparseArray; got "
                    f"{extra!r}. Call A.todense() first.")


def _reduced_size(A: SparseArray, axes) -> int:
  return math.prod(A.shape[d] for d in axes)


def _finish(result, axes, keepdims: bool):
  return jnp.expand_dims(result, axes) if keepdims else result


def extremum(A: SparseArray, axes: Axis, kind: str, keepdims: bool = False,
             func: str | None = None) -> jax.Array:
  """``max`` (``kind="max"``) or ``min`` of the dense array of ``A`` over ``axes`` (dense).

  The implementation behind :func:`max`, :func:`min` and the ``reduce_max`` /
  ``reduce_min`` rules of :func:`jscorch.sparsify`.
  """
  func = func or kind
  _check_values(A, func)
  if A.format.blocks:     # every element of a stored block is one of the dense array's
    A = A.asformat(A.format.base)
  axes = _static.axes(axes, A.ndim, func)
  if _reduced_size(A, axes) == 0:
    raise ValueError(f"{func}: zero-size reduction has no identity; got axis={axes} of "
                     f"shape {A.shape}, expected non-empty reduced dimensions. Use "
                     f"js.segment_{kind} with empty= for a default value.")
  best, stored = _reduce(A, axes, kind)
  zero = jnp.zeros((), A.dtype)
  with_zero = jnp.maximum(best, zero) if kind == "max" else jnp.minimum(best, zero)
  return _finish(jnp.where(stored < _reduced_size(A, axes), with_zero, best), axes, keepdims)


def max(a, axis: Axis = None, out=None, keepdims: bool = False, initial=None,  # noqa: A001
        where=None):
  """``jnp.max``; for a SparseArray the maximum of its dense array (implicit zeros count).

  Duplicates are summed first, padding is ignored, ``axis`` must be static. The
  gradient reaches the stored values that attain the maximum (ties split evenly,
  as ``jnp.max``; an implicit zero that ties takes its share away).

  Args:
    a: a SparseArray (real values) or a dense array.
    axis: an int, a tuple of ints or None (all axes); any dims (batch, sparse, block).
    keepdims: keep the reduced dims with size 1.
    out, initial, where: ``jnp.max``'s; not supported for a SparseArray.

  Returns:
    A dense array of ``a.dtype``.

  Raises:
    ValueError: ``axis`` out of range or repeated; a zero-size reduction.
    TypeError: complex values; ``out``, ``initial`` or ``where`` with a SparseArray.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[-1., 0., -2.], [-1., -3., -4.]]))
    >>> A.max(axis=1), js.max(A, axis=0)
    (Array([ 0., -1.], dtype=float32), Array([-1.,  0., -2.], dtype=float32))
  """
  if not is_sparse(a):
    return jnp.max(a, axis=axis, out=out, keepdims=keepdims, initial=initial, where=where)
  _unsupported("max", out=out, initial=initial, where=where)
  return extremum(a, axis, "max", keepdims)


def min(a, axis: Axis = None, out=None, keepdims: bool = False, initial=None,  # noqa: A001
        where=None):
  """``jnp.min``; for a SparseArray the minimum of its dense array (see :func:`max`).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 2.], [1., 3., 4.]]))
    >>> A.min(axis=1), A.min()
    (Array([0., 1.], dtype=float32), Array(0., dtype=float32))
  """
  if not is_sparse(a):
    return jnp.min(a, axis=axis, out=out, keepdims=keepdims, initial=initial, where=where)
  _unsupported("min", out=out, initial=initial, where=where)
  return extremum(a, axis, "min", keepdims)


def sum(a, axis: int | Sequence[int] | None = None, dtype=None, out=None,
        keepdims: bool = False, initial=None, where=None, promote_integers: bool = True):
  """``jnp.sum``; a SparseArray gives a dense result (an einsum over its stored entries).

  ``dtype`` follows ``jnp.sum`` (bools and small integers promote to the default
  integer). Padding is ignored. ``axis`` must be static. ``out``, ``initial`` and
  ``where`` are not supported for a SparseArray.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [3., 2.]]))
    >>> A.sum(), A.sum(axis=0), A.sum(1, keepdims=True).shape
    (Array(6., dtype=float32), Array([4., 2.], dtype=float32), (2, 1))
  """
  func = "sum"
  no_foreign(func, a=a)
  if not is_sparse(a):
    return jnp.sum(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims, initial=initial,
                   where=where, promote_integers=promote_integers)
  extra = {k: v for k, v in (("out", out), ("initial", initial), ("where", where))
           if v is not None}
  if extra:
    raise TypeError(f"{func}: {sorted(extra)} not supported for a SparseArray; got "
                    f"{extra!r}. Call A.todense() first.")
  axes = _static.axes(axis, a.ndim, func)
  target = dtype or jax.eval_shape(
      lambda v: jnp.sum(v, promote_integers=promote_integers),
      jax.ShapeDtypeStruct((), a.dtype)).dtype
  A = a.astype(target) if a.dtype != target else a
  ids = letters(a.ndim)
  result = einsum(f"{ids}->{''.join(x for d, x in enumerate(ids) if d not in axes)}", A,
                  out_format="dense")
  return jnp.expand_dims(result, axes) if keepdims else result


def mean(a, axis: Axis = None, dtype=None, out=None, keepdims: bool = False, *, where=None):
  """``jnp.mean``; for a SparseArray the sum of its entries over the dense size of ``axis``.

  Implicit zeros count in the denominator (``A.sum(axis) / prod(A.shape[axis])``),
  duplicates are summed, padding is ignored. The dtype follows ``jnp.mean``
  (integers give the default float; an integer ``dtype`` divides as integers, truncating;
  float16 and bfloat16 are summed in float32). Differentiable like :func:`jscorch.sum`.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 2.], [0., 0., 4.]]))
    >>> A.mean(axis=1), A.mean()
    (Array([1.       , 1.3333334], dtype=float32), Array(1.1666666, dtype=float32))
  """
  if not is_sparse(a):
    return jnp.mean(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims, where=where)
  func = "mean"
  _unsupported(func, out=out, where=where)
  axes = _static.axes(axis, a.ndim, func)
  target = jax.eval_shape(lambda v: jnp.mean(v, dtype=dtype),
                          jax.ShapeDtypeStruct((), a.dtype)).dtype
  upcast = target in (jnp.float16, jnp.bfloat16)
  compute = jnp.dtype(jnp.float32) if upcast else target
  total = sum(a, axis=axes, dtype=compute, keepdims=keepdims)
  size = jnp.full(total.shape, _reduced_size(a, axes), compute)
  return jax.lax.div(total, size).astype(target)       # integers: truncating, as jnp


def count_nonzero(a, axis: Axis = None, keepdims: bool = False):
  """``jnp.count_nonzero``; for a SparseArray the nonzeros of its dense array.

  Counts coordinates whose value (duplicates summed) is nonzero: explicitly
  stored zeros and duplicates that cancel do not count; padding is ignored.
  Returns a dense int array (``jnp.count_nonzero``'s dtype).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 2.], [0., 0., 4.]]))
    >>> js.count_nonzero(A), js.count_nonzero(A, axis=0)
    (Array(3, dtype=int32), Array([1, 0, 2], dtype=int32))
  """
  if not is_sparse(a):
    return jnp.count_nonzero(a, axis=axis, keepdims=keepdims)
  func = "count_nonzero"
  if a.format.blocks:     # every element of a stored block is one of the dense array's
    a = a.asformat(a.format.base)
  axes = _static.axes(axis, a.ndim, func)
  count, _ = _reduce(a, axes, "count")
  dtype = jax.eval_shape(jnp.count_nonzero, jax.ShapeDtypeStruct((1,), a.dtype)).dtype
  return _finish(count.astype(dtype), axes, keepdims)


# -- over the stored entries only ---------------------------------------------------------------
def _segment(A, axis, empty, kind: str):
  func = f"segment_{kind}"
  if not is_sparse(A):
    raise TypeError(f"{func}: expects a SparseArray; got {type(A).__name__}. For a dense "
                    f"array use jnp.{kind}.")
  blocks.refuse(func, A=A)
  _check_values(A, func)
  axes = _static.axes(axis, A.ndim, func)
  best, stored = _reduce(A, axes, kind)
  if empty is None:
    return best
  return jnp.where(stored > 0, best, jnp.asarray(empty, A.dtype))


def segment_max(A: SparseArray, axis: Axis = -1, *, empty=None) -> jax.Array:
  """The maximum of the **stored** entries along ``axis`` (implicit zeros absent): dense.

  For the last axis of a matrix, the largest stored value of each row — what a
  numerically stable sparse softmax or log-sum-exp subtracts. Duplicates are
  summed first; padding is ignored. Ties split the gradient evenly.

  Args:
    A: a SparseArray with real values.
    axis: an int or a tuple of ints (static); default the last axis.
    empty: the value of a slice without stored entries; default the identity
      of ``max``: ``-inf`` for floats, the smallest integer for ints.

  Returns:
    A dense array of ``A.dtype`` with the shape of ``A`` without ``axis``.

  Raises:
    ValueError: ``axis`` out of range or repeated.
    TypeError: ``A`` is dense or complex.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[-1., 0., -2.], [0., 0., 0.]]))
    >>> js.segment_max(A), js.segment_max(A, empty=0.)
    (Array([ -1., -inf], dtype=float32), Array([-1.,  0.], dtype=float32))
  """
  return _segment(A, axis, empty, "max")


def segment_min(A: SparseArray, axis: Axis = -1, *, empty=None) -> jax.Array:
  """The minimum of the stored entries along ``axis`` (see :func:`segment_max`).

  ``empty`` defaults to ``+inf`` for floats, the largest integer for ints.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0., 2.], [0., 0., 0.]]))
    >>> js.segment_min(A, empty=0.)
    Array([1., 0.], dtype=float32)
  """
  return _segment(A, axis, empty, "min")

