"""Indexing SparseArrays: ``A[...]``, slices (static and dynamic), flips and gathers.

Batch and block dims are indexed on the buffers (as ``jnp`` indexes them); sparse dims
filter and shift the logical coordinates and rebuild the level buffers in the same
format (:func:`jscorch.ops_shape.build`), so ``jit``, ``vmap``, ``grad`` (w.r.t. the
stored values) and ``eval_shape`` come from JAX. Padding stays padding.

``A[key]`` accepts integers (negative too; a traced integer under ``jit`` reads like
``lax.dynamic_slice``: clamped into range), static slices with any step, ``None``,
``Ellipsis`` and one integer array along one axis (a gather; repeated indices
allowed). Integer keys drop their dims as in numpy (a result with no sparse dim left
is dense). The result keeps the format of the sparse dims it keeps; dropping a sparse
dim follows the format rule of :mod:`jscorch.ops_shape`.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> A = js.from_dense(jnp.array([[1., 0., 2.], [0., 3., 0.]]), format="csr")
  >>> A[:, ::-1].todense()
  Array([[2., 0., 1.],
         [0., 3., 0.]], dtype=float32)
  >>> A[1], A[1].todense()
  (SparseArray(float32[3], format=COO, nse=3), Array([0., 3., 0.], dtype=float32))
  >>> A[jnp.array([1, 1, 0])].todense()
  Array([[0., 3., 0.],
         [0., 3., 0.],
         [1., 0., 2.]], dtype=float32)
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray
from jscorch.ops_shape import build, entries, expand_dims, squeeze, transform


# -- windows of the sparse dims --------------------------------------------------------------
def _shift_sparse(A: SparseArray, starts, sizes, strides, func: str) -> SparseArray:
  """Keeps the entries of ``A`` inside a window of its sparse dims (same format and nse)."""
  nb, ns = A.n_batch, A.n_sparse
  coords, valid = entries(A)
  idt = coords.dtype
  starts = jnp.stack([jnp.asarray(s).astype(idt) for s in starts])
  strides = jnp.asarray(strides, idt)
  rel = coords - starts
  inside = (rel >= 0) & (rel % strides == 0) & (rel // strides < jnp.asarray(sizes, idt))
  valid = valid & jnp.all(inside, axis=-1)
  shape = A.shape[:nb] + tuple(int(s) for s in sizes) + A.shape[nb + ns:]
  return build(rel // strides, valid, A.data, shape, A.format, A.nse, func)


def _slice_buffers(A: SparseArray, axis: int, slicer) -> SparseArray:
  """Applies ``slicer(buffer, axis)`` to every buffer along batch dim ``axis``."""
  data = slicer(A.data, axis)
  indices = [slicer(i, axis) for i in A.indices]
  shape = A.shape[:axis] + (data.shape[axis],) + A.shape[axis + 1:]
  return SparseArray._make(data, indices, A.format, shape)


def _with_block(A: SparseArray, d: int, f) -> SparseArray:
  """``A`` with ``f(data, axis)`` applied along block dim ``d``."""
  data = f(A.data, d - A.n_sparse + 1)
  return SparseArray._make(data, A.indices, A.format,
                           A.shape[:d] + (data.shape[d - A.n_sparse + 1],) + A.shape[d + 1:])


def slice_(A: SparseArray, start, limit, strides=None, func="slice") -> SparseArray:
  """``lax.slice`` of a SparseArray; batch and block dims slice buffers, sparse dims filter."""
  strides = tuple(strides) if strides is not None else (1,) * A.ndim
  nb, ns = A.n_batch, A.n_sparse
  changed = [(start[d], limit[d], strides[d]) != (0, A.shape[d], 1) for d in range(A.ndim)]
  for d in range(nb):
    if changed[d]:
      A = _slice_buffers(A, d, lambda x, ax, d=d: jax.lax.slice_in_dim(
          x, start[d], limit[d], strides[d], axis=ax))
  for d in range(nb + ns, A.ndim):
    if changed[d]:
      A = _with_block(A, d, lambda x, ax, d=d: jax.lax.slice_in_dim(
          x, start[d], limit[d], strides[d], axis=ax))
  sp = range(nb, nb + ns)
  if any(changed[d] for d in sp):
    sizes = [len(range(start[d], limit[d], strides[d])) for d in sp]
    A = _shift_sparse(A, [start[d] for d in sp], sizes, [strides[d] for d in sp], func)
  return A


def dynamic_slice(A: SparseArray, starts, sizes, func="dynamic_slice") -> SparseArray:
  """``lax.dynamic_slice`` of a SparseArray (starts clamped as in lax; sizes static)."""
  nb, ns = A.n_batch, A.n_sparse
  sizes = tuple(int(s) for s in sizes)
  shape0 = A.shape
  clamped = [jnp.clip(jnp.asarray(s), 0, n - k).astype(jnp.int32)
             for s, n, k in zip(starts, shape0, sizes)]
  for d in range(nb):
    if sizes[d] != shape0[d]:
      A = _slice_buffers(A, d, lambda x, ax, d=d: jax.lax.dynamic_slice_in_dim(
          x, clamped[d], sizes[d], axis=ax))
  for d in range(nb + ns, A.ndim):
    if sizes[d] != shape0[d]:
      A = _with_block(A, d, lambda x, ax, d=d: jax.lax.dynamic_slice_in_dim(
          x, clamped[d], sizes[d], axis=ax))
  sp = range(nb, nb + ns)
  if any(sizes[d] != shape0[d] for d in sp):
    A = _shift_sparse(A, [clamped[d] for d in sp], [sizes[d] for d in sp], [1] * ns, func)
  return A


def flip(A: SparseArray, axes: Sequence[int], func: str = "flip") -> SparseArray:
  """``A`` reversed along ``axes`` (same format; sparse dims rebuilt)."""
  nb, ns = A.n_batch, A.n_sparse
  sparse = [d - nb for d in axes if nb <= d < nb + ns]
  for d in axes:
    if d < nb:
      A = _slice_buffers(A, d, lambda x, ax: jnp.flip(x, ax))
    elif d >= nb + ns:
      A = _with_block(A, d, lambda x, ax: jnp.flip(x, ax))
  if not sparse:
    return A
  coords, valid = entries(A)
  sizes = np.asarray(A.shape[nb:nb + ns])
  mirror = np.isin(np.arange(ns), sparse)
  coords = jnp.where(mirror, jnp.asarray(sizes - 1, coords.dtype) - coords, coords)
  return build(coords, valid, A.data, A.shape, A.format, A.nse, func)


# -- gathers ---------------------------------------------------------------------------------
def take(A: SparseArray, index, axis: int, func: str = "take") -> SparseArray:
  """``A`` gathered along ``axis`` at the 1-D integer ``index`` (clamped into range).

  Batch and block dims gather buffers. Along a sparse dim each stored entry is copied
  to every position of ``index`` that names its coordinate; the capacity becomes
  ``nse * m`` (``m``: the largest multiplicity of a value in ``index`` when it is
  concrete, else ``len(index)``), at most the number of coordinates of the result.
  """
  nb, ns = A.n_batch, A.n_sparse
  n = A.shape[axis]
  k = int(np.shape(index)[0])
  if not k:
    raise IndexError(f"{func}: an empty index array along axis {axis} gives an empty result, "
                     "which SparseArrays do not support. Index A.todense() instead.")
  if isinstance(index, jax.core.Tracer):
    index = jnp.clip(jnp.where(index < 0, index + n, index), 0, max(n - 1, 0)).astype(jnp.int32)
    m = k
  else:
    index = np.clip(np.where(np.asarray(index) < 0, np.asarray(index) + n, index), 0,
                    max(n - 1, 0)).astype(np.int32)
    m = int(np.bincount(index).max())
  index = jnp.asarray(index)
  if axis < nb:
    return _slice_buffers(A, axis, lambda x, ax: jnp.take(x, index, axis=ax))
  if axis >= nb + ns:
    return _with_block(A, axis, lambda x, ax: jnp.take(x, index, axis=ax))
  shape = A.shape[:axis] + (k,) + A.shape[axis + 1:]
  nse = min(A.nse * m, math.prod(shape[nb:nb + ns]))
  coords, valid = entries(A)
  d = axis - nb
  order = jnp.argsort(index)
  ordered = index[order]
  c = coords[..., d]
  lo = jnp.searchsorted(ordered, c, side="left")
  hi = jnp.searchsorted(ordered, c, side="right")
  t = jnp.arange(m, dtype=lo.dtype)
  slot = lo[..., None] + t                                       # [*batch, nse, m]
  ok = valid[..., None] & (slot < hi[..., None])
  new = order[jnp.clip(slot, 0, k - 1)].astype(coords.dtype)
  rows = coords[..., None, :].repeat(m, axis=-2)       # [*batch, nse, m, ns]
  rows = rows.at[..., d].set(new)
  flat = lambda x: x.reshape(x.shape[:nb] + (-1,) + x.shape[nb + 2:])
  data = jnp.repeat(A.data, m, axis=nb)
  return build(flat(rows), flat(ok), data, shape, A.format, nse, func)


# -- A[key] ----------------------------------------------------------------------------------
def _is_int(k) -> bool:
  if isinstance(k, (bool, np.bool_)):
    return False
  if isinstance(k, (int, np.integer)):
    return True
  return isinstance(k, (np.ndarray, jax.Array)) and k.ndim == 0 and jnp.issubdtype(
      k.dtype, jnp.integer)


def _int_array(k, func: str):
  """``k`` as a 1-D integer array index, or None when ``k`` is not an array."""
  if isinstance(k, (list, tuple)):
    k = np.asarray(k)
  if not isinstance(k, (np.ndarray, jax.Array)):
    return None
  if not jnp.issubdtype(k.dtype, jnp.integer) or k.ndim != 1:
    raise TypeError(f"{func}: an array index must be 1-D of integers; got dtype {k.dtype} with "
                    f"shape {k.shape}. Boolean masks and multi-dimensional indices are not "
                    "supported: index A.todense() instead.")
  return k


def _check_static(i: int, n: int, d: int, func: str) -> int:
  if not -n <= i < n:
    raise IndexError(f"{func}: index {i} is out of bounds for axis {d} with size {n}.")
  return i % n


def _parse(key, ndim: int, func: str):
  """Expands ``key`` into ``[(kind, value)]`` with one entry per dim (plus ``None`` items)."""
  key = key if isinstance(key, tuple) else (key,)
  items = []
  for k in key:
    if k is None:
      items.append(("none", None))
    elif k is Ellipsis:
      items.append(("ellipsis", None))
    elif isinstance(k, slice):
      for v in (k.start, k.stop, k.step):
        if v is not None and not isinstance(v, (int, np.integer)):
          raise TypeError(f"{func}: slice bounds must be static ints; got {k}. Use "
                          "jax.lax.dynamic_slice semantics through an integer index, or pass "
                          "the bounds as Python ints.")
      items.append(("slice", k))
    elif _is_int(k):
      items.append(("int", k))
    else:
      arr = _int_array(k, func)
      if arr is None:
        raise TypeError(f"{func}: unsupported index {k!r} of type {type(k).__name__}; expected "
                        "ints, slices, None, Ellipsis or one 1-D integer array.")
      items.append(("array", arr))
  if sum(kind == "ellipsis" for kind, _ in items) > 1:
    raise IndexError(f"{func}: an index can only have a single ellipsis ('...'); got {key!r}.")
  used = sum(kind in ("slice", "int", "array") for kind, _ in items)
  if used > ndim:
    raise IndexError(f"{func}: too many indices for an array of rank {ndim}; got {used} "
                     f"in {key!r}.")
  if sum(kind == "array" for kind, _ in items) > 1:
    raise IndexError(f"{func}: at most one integer-array index is supported; got {key!r}. "
                     "Index one axis at a time.")
  fill = [("slice", slice(None))] * (ndim - used)
  at = next((i for i, (kind, _) in enumerate(items) if kind == "ellipsis"), len(items))
  return items[:at] + fill + [it for it in items[at:] if it[0] != "ellipsis"]


def getitem(A: SparseArray, key):
  """``A[key]``; see the module docstring."""
  func = "SparseArray.__getitem__"
  items = _parse(key, A.ndim, func)
  dims = [i for i, (kind, _) in enumerate(items) if kind != "none"]   # item of each dim
  start, limit, stride = [0] * A.ndim, list(A.shape), [1] * A.ndim
  flips, ints, dynamic = [], [], {}
  for d, i in enumerate(dims):
    kind, k = items[i]
    n = A.shape[d]
    if kind == "array":
      if not isinstance(k, jax.core.Tracer):
        bad = np.asarray(k)[(np.asarray(k) < -n) | (np.asarray(k) >= n)]
        if bad.size:
          _check_static(int(bad[0]), n, d, func)
      A = take(A, k, d, func)
      limit[d] = A.shape[d]
    elif kind == "int":
      ints.append(d)
      if isinstance(k, jax.core.Tracer):
        dynamic[d] = jnp.where(k < 0, k + n, k)
      else:
        j = _check_static(int(k), n, d, func)
        start[d], limit[d] = j, j + 1
    else:
      r = range(*k.indices(n))
      if not r:
        raise IndexError(f"{func}: the slice {k} selects nothing along axis {d} of size {n}; "
                         "empty results are not supported for SparseArrays. Index "
                         "A.todense() instead.")
      if r.step > 0:
        start[d], limit[d], stride[d] = r.start, r[-1] + 1, r.step
      else:
        start[d], limit[d], stride[d] = r[-1], r.start + 1, -r.step
        flips.append(d)
  A = slice_(A, start, limit, stride, func)
  if flips:
    A = flip(A, flips, func)
  if dynamic:
    starts = [dynamic.get(d, 0) for d in range(A.ndim)]
    sizes = [1 if d in dynamic else n for d, n in enumerate(A.shape)]
    A = dynamic_slice(A, starts, sizes, func)
  if ints:
    A = squeeze(A, tuple(ints))
  # numpy moves the array dim to the front when the advanced indices are not adjacent.
  adv = [i for i, (kind, _) in enumerate(items) if kind in ("array", "int")]
  arr = [i for i, (kind, _) in enumerate(items) if kind == "array"]
  out = [i for i, (kind, _) in enumerate(items) if kind in ("slice", "array", "none")]
  if arr and adv[-1] - adv[0] + 1 != len(adv):
    out.remove(arr[0])
    out.insert(0, arr[0])
    kept = [i for i in out if items[i][0] != "none"]
    src = sorted(kept).index(arr[0])
    A = _move_to_front(A, src, func)
  new_axes = tuple(p for p, i in enumerate(out) if items[i][0] == "none")
  return expand_dims(A, new_axes) if new_axes else A


def _move_to_front(A, src: int, func: str):
  perm = [src] + [d for d in range(A.ndim) if d != src]
  if not isinstance(A, SparseArray):
    return jnp.transpose(A, perm)
  if src < A.n_batch or (A.n_batch == 0 and src < A.n_sparse):
    return A.transpose(perm)
  return transform(A, perm, func)
