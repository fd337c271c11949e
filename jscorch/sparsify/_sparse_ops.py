"""Structural operations on SparseArrays needed by sparsify's rules (portable compositions).

Reshape, slicing, max/min reductions and the alignment of two patterns work on
logical coordinates (``jscorch.primitives.union.logical_coordinates``) and rebuild
level buffers with ``jscorch.primitives.convert.from_coordinates``; values move
by gathers and scatters, so JAX derives their jvp, transpose and batching rules.
Padding stays padding (coordinates out of range are dropped by the rebuild).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import ops, ops_reduce
from jscorch.array import SparseArray
from jscorch.primitives import convert
from jscorch.primitives.formats import resolve_format
from jscorch.primitives.layout import Layout
from jscorch.primitives.union import canonical_format, logical_coordinates

from ._fusion import coalesce


def _iota_batch(lay: Layout, nse: int, idt):
  """`[*batch, nse]` coordinate of each batch dim (a list, one array per batch dim)."""
  shape = lay.batch_shape + (nse,)
  return [jax.lax.broadcasted_iota(idt, shape, d) for d in range(lay.n_batch)]


def flat_entries(A: SparseArray):
  """Every stored scalar of ``A`` as ``(coords [N, ndim], values [N], valid [N])``.

  Duplicates are summed first; batch dims and block dims become coordinates, so
  ``N = prod(batch) * nse * prod(block)``. Padding rows hold out-of-range coordinates.
  """
  A = coalesce(A)
  lay = A.layout
  idt = lay.index_dtype
  nb, nd = A.n_batch, A.n_dense
  sp = logical_coordinates(lay, A.indices).astype(idt)       # [*batch, nse, ns]
  valid = jnp.all(sp < jnp.asarray(lay.sparse_shape, idt), axis=-1)
  cols = _iota_batch(lay, A.nse, idt) + [sp[..., k] for k in range(A.n_sparse)]
  block = lay.block_shape
  full = lay.batch_shape + (A.nse,) + block
  cols = [jnp.broadcast_to(c.reshape(c.shape + (1,) * nd), full) for c in cols]
  cols += [jax.lax.broadcasted_iota(idt, full, nb + 1 + d) for d in range(nd)]
  valid = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * nd), full)
  coords = jnp.stack([c.reshape(-1) for c in cols], axis=-1)
  return coords, A.data.reshape(-1), valid.reshape(-1)


def _index_dtype(n: int):
  return Layout.make(resolve_format("coo", 1), (max(n, 1),), 0).index_dtype


def _plain_format(ndim: int):
  return resolve_format("csr" if ndim == 2 else "coo", ndim)


def from_flat(coords, values, valid, shape, func: str) -> SparseArray:
  """A SparseArray (CSR for 2-D, COO otherwise; no batch/block dims) from flat entries."""
  shape = tuple(int(s) for s in shape)
  fmt = _plain_format(len(shape))
  lay = Layout.make(fmt, shape, int(values.shape[0]), func)
  idt = lay.index_dtype
  sizes = jnp.asarray(shape, idt)
  coords = jnp.where(valid[:, None], coords.astype(idt), sizes)
  storage = convert.logical_to_storage(lay, coords)
  data, indices = convert.from_coordinates(lay, storage, values, func=func)
  return SparseArray._make(data, indices, fmt, shape)


def reshape(A: SparseArray, new_shape, func: str = "sparsify(reshape)") -> SparseArray:
  """``A`` reshaped (row-major, as ``jnp.reshape``); the result is CSR (2-D) or COO."""
  coords, values, valid = flat_entries(A)
  total = math.prod(A.shape)
  idt = _index_dtype(total)
  coords = coords.astype(idt)
  strides = np.cumprod((1,) + tuple(A.shape[::-1]))[::-1][1:]
  lin = jnp.sum(coords * jnp.asarray(strides, idt), axis=-1)
  new_shape = tuple(int(s) for s in new_shape)
  new = jnp.stack(jnp.unravel_index(jnp.where(valid, lin, 0), new_shape), -1) if new_shape \
      else jnp.zeros((lin.shape[0], 0), idt)
  return from_flat(new, values, valid, new_shape, func)


def drop_unit_dims(A: SparseArray, dims) -> SparseArray | None:
  """``A`` without its size-1 dims ``dims`` (None when a layout cannot drop them cheaply)."""
  dims = sorted(set(int(d) for d in dims))
  nb, ns = A.n_batch, A.n_sparse
  sparse_dims = [d for d in dims if nb <= d < nb + ns]
  if sparse_dims and (nb or A.n_dense or len(sparse_dims) == ns):
    return None
  if sparse_dims:
    shape = tuple(n for d, n in enumerate(A.shape) if d not in dims)
    return reshape(A, shape, "sparsify(squeeze)")
  data = A.data
  indices = list(A.indices)
  batch = [d for d in dims if d < nb]
  block = [d - ns + 1 for d in dims if d >= nb + ns]
  data = jnp.squeeze(data, tuple(batch) + tuple(block))
  indices = [jnp.squeeze(i, tuple(batch)) for i in indices]
  shape = tuple(n for d, n in enumerate(A.shape) if d not in dims)
  fmt = A.format.replace(n_batch=nb - len(batch), n_dense=A.n_dense - len(block))
  return SparseArray._make(data, indices, fmt, shape)


def transform(A: SparseArray, perm, func: str) -> SparseArray:
  """``A`` with dims permuted by ``perm`` across the batch/sparse/block groups (rebuilt)."""
  coords, values, valid = flat_entries(A)
  shape = tuple(A.shape[d] for d in perm)
  return from_flat(coords[:, list(perm)], values, valid, shape, func)


def _shift_sparse(A: SparseArray, starts, sizes, strides, func: str) -> SparseArray:
  """Keeps the entries of ``A`` inside a window of its sparse dims (same format and nse)."""
  lay = A.layout
  idt = lay.index_dtype
  nb, ns = A.n_batch, A.n_sparse
  sp = logical_coordinates(lay, A.indices).astype(idt)
  old_sizes = jnp.asarray(lay.sparse_shape, idt)
  valid = jnp.all(sp < old_sizes, axis=-1, keepdims=True)
  starts = jnp.stack([jnp.asarray(s).astype(idt) for s in starts])
  strides = jnp.asarray(strides, idt)
  rel = sp - starts
  new_sizes = jnp.asarray(sizes, idt)
  inside = valid & (rel >= 0) & (rel % strides == 0) & (rel // strides < new_sizes)
  inside = jnp.all(inside, axis=-1, keepdims=True)
  new = jnp.where(inside, rel // strides, new_sizes)
  shape = A.shape[:nb] + tuple(int(s) for s in sizes) + A.shape[nb + ns:]
  fmt = canonical_format(A.format)
  out = Layout.make(fmt, shape, A.nse, func)
  data = jnp.where(inside.reshape(inside.shape[:-1] + (1,) * A.n_dense), A.data, 0)
  data, indices = convert.from_coordinates(out, convert.logical_to_storage(out, new), data,
                                           func=func)
  return SparseArray._make(data, indices, fmt, shape)


def _slice_buffers(A: SparseArray, axis: int, slicer) -> SparseArray:
  """Applies ``slicer(buffer, axis)`` to every buffer along batch dim ``axis``."""
  data = slicer(A.data, axis)
  indices = [slicer(i, axis) for i in A.indices]
  shape = A.shape[:axis] + (data.shape[axis],) + A.shape[axis + 1:]
  return SparseArray._make(data, indices, A.format, shape)


def slice_(A: SparseArray, start, limit, strides, func="sparsify(slice)") -> SparseArray:
  """``lax.slice`` of a SparseArray; batch and block dims slice buffers, sparse dims filter."""
  strides = tuple(strides) if strides is not None else (1,) * A.ndim
  nb, ns = A.n_batch, A.n_sparse
  for d in range(nb):
    if (start[d], limit[d], strides[d]) != (0, A.shape[d], 1):
      A = _slice_buffers(A, d, lambda x, ax, d=d: jax.lax.slice_in_dim(
          x, start[d], limit[d], strides[d], axis=ax))
  for d in range(nb + ns, A.ndim):
    if (start[d], limit[d], strides[d]) != (0, A.shape[d], 1):
      n = len(range(start[d], limit[d], strides[d]))
      data = jax.lax.slice_in_dim(A.data, start[d], limit[d], strides[d], axis=d - ns + 1)
      A = SparseArray._make(data, A.indices, A.format, A.shape[:d] + (n,) + A.shape[d + 1:])
  sp = range(nb, nb + ns)
  if any((start[d], limit[d], strides[d]) != (0, A.shape[d], 1) for d in sp):
    sizes = [len(range(start[d], limit[d], strides[d])) for d in sp]
    A = _shift_sparse(A, [start[d] for d in sp], sizes, [strides[d] for d in sp], func)
  return A


def dynamic_slice(A: SparseArray, starts, sizes, func="sparsify(dynamic_slice)") -> SparseArray:
  """``lax.dynamic_slice`` of a SparseArray (starts clamped as in lax; sizes static)."""
  nb, ns = A.n_batch, A.n_sparse
  sizes = tuple(int(s) for s in sizes)
  shape0 = A.shape
  clamped = [jnp.clip(jnp.asarray(s), 0, n - k) for s, n, k in zip(starts, shape0, sizes)]
  for d in range(nb):
    if sizes[d] != shape0[d]:
      A = _slice_buffers(A, d, lambda x, ax, d=d: jax.lax.dynamic_slice_in_dim(
          x, clamped[d].astype(jnp.int32), sizes[d], axis=ax))
  for d in range(nb + ns, A.ndim):
    if sizes[d] != shape0[d]:
      ax = d - ns + 1
      data = jax.lax.dynamic_slice_in_dim(A.data, clamped[d].astype(jnp.int32), sizes[d],
                                          axis=ax)
      A = SparseArray._make(data, A.indices, A.format, A.shape[:d] + (sizes[d],)
                            + A.shape[d + 1:])
  sp = range(nb, nb + ns)
  if any(sizes[d] != shape0[d] for d in sp):
    A = _shift_sparse(A, [clamped[d] for d in sp], [sizes[d] for d in sp], [1] * ns, func)
  return A


def reduce_extremum(A: SparseArray, axes, kind: str) -> jax.Array:
  """``reduce_max`` / ``reduce_min`` over ``axes`` with the implicit zeros counted (dense)."""
  return ops_reduce.extremum(A, tuple(int(a) for a in axes), kind,
                             func=f"sparsify(reduce_{kind})")


def union_align(A: SparseArray, B: SparseArray):
  """``(pattern, a_values, b_values)``: both operands' values on the union of their patterns."""
  zero_b = B.with_data(jnp.zeros_like(B.data))
  zero_a = A.with_data(jnp.zeros_like(A.data))
  ua = ops.add(A, zero_b)
  ub = ops.add(zero_a, B)
  return ua, ua.data, ub.data
