"""Structural operations on SparseArrays needed by sparsify's rules.

Reshape, squeeze, slicing and cross-group transposition are the public ones of
:mod:`jscorch.ops.shape` and :mod:`jscorch.ops.index`, named here after the lax
primitive that calls them; max/min reductions and the alignment of two patterns
work on the stored values. Padding stays padding.
"""
from __future__ import annotations

import jax

from jscorch.array import SparseArray
from jscorch.ops import elementwise as ops_elementwise
from jscorch.ops import index as ops_index
from jscorch.ops import reduce as ops_reduce
from jscorch.ops import shape as ops_shape


def reshape(A: SparseArray, new_shape, func: str = "sparsify(reshape)") -> SparseArray:
  """``A`` reshaped (row-major, as ``jnp.reshape``); see :func:`jscorch.reshape`."""
  return ops_shape.reshape_as(A, tuple(int(s) for s in new_shape), None, func)


def drop_unit_dims(A: SparseArray, dims) -> SparseArray | None:
  """``A`` without its size-1 dims ``dims`` (None when no sparse dim would remain)."""
  dims = sorted(set(int(d) for d in dims))
  nb, ns = A.n_batch, A.n_sparse
  if sum(nb <= d < nb + ns for d in dims) == ns:
    return None
  return ops_shape.squeeze(A, tuple(dims))


def transform(A: SparseArray, perm, func: str) -> SparseArray:
  """``A`` with dims permuted by ``perm`` across the batch/sparse/block groups (rebuilt)."""
  return ops_shape.transform(A, perm, func)


def slice_(A: SparseArray, start, limit, strides, func="sparsify(slice)") -> SparseArray:
  """``lax.slice`` of a SparseArray (see :func:`jscorch.ops.index.slice_`)."""
  return ops_index.slice_(A, start, limit, strides, func)


def dynamic_slice(A: SparseArray, starts, sizes, func="sparsify(dynamic_slice)") -> SparseArray:
  """``lax.dynamic_slice`` of a SparseArray (starts clamped as in lax; sizes static)."""
  return ops_index.dynamic_slice(A, starts, sizes, func)


def flip(A: SparseArray, dims, func="sparsify(rev)") -> SparseArray:
  """``lax.rev`` of a SparseArray (see :func:`jscorch.ops.index.flip`)."""
  return ops_index.flip(A, tuple(int(d) for d in dims), func)


def reduce_extremum(A: SparseArray, axes, kind: str) -> jax.Array:
  """``reduce_max`` / ``reduce_min`` over ``axes`` with the implicit zeros counted (dense)."""
  return ops_reduce.extremum(A, tuple(int(a) for a in axes), kind,
                             func=f"sparsify(reduce_{kind})")


def union_align(A: SparseArray, B: SparseArray):
  """``(pattern, a_values, b_values)``: both operands' values on the union of their patterns."""
  return ops_elementwise.union_values(A, B, func="sparsify")
