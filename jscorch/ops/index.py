"""Indexing SparseArrays: ``A[...]``, slices (static and dynamic), flips and gathers.

Batch and block dims are indexed on the buffers (as ``jnp`` indexes them); sparse dims
filter and shift the logical coordinates and rebuild the level buffers in the same
format (:func:`jscorch.ops.shape.build`), so ``jit``, ``vmap``, ``grad`` (w.r.t. the
stored values) and ``eval_shape`` come from JAX. Padding stays padding.

``A[key]`` follows numpy's rules for:

* integers (negative too; a traced integer under ``jit`` reads like
  ``lax.dynamic_slice``: clamped into range), static slices with any step (empty
  ones too: a dim of size 0, capacity 0 when a sparse window is empty), ``None``
  and ``Ellipsis``;
* **integer arrays** of any shape, several of them broadcast together (``A[rows,
  cols]``, ``A[idx]`` with ``idx`` of shape ``[m, k]``); the broadcast shape
  replaces the indexed dims in place when the array and integer indices are
  adjacent in the key, and goes first otherwise. Repeated and negative indices are
  allowed; traced ones are clamped into range (static ones out of range raise);
* **boolean masks** over one or more consecutive dims (``A[mask]``, ``A[:, mask]``,
  a full-shape ``A[x > 0]``), read as the integer arrays of ``np.nonzero(mask)``.
  A mask must be concrete: under ``jit`` its number of ``True`` entries would fix
  the result shape, so a traced mask raises; pass ``jnp.nonzero(mask, size=n)``
  (integer arrays of static size) instead.

**Dense or sparse.** As with integers, a result in which every sparse dim of ``A``
was indexed by an integer or an array (points: ``A[1, 2]``, ``A[rows, cols]``,
``v[idx]`` of a 1-D ``v``, ``A[x > 0]``) is a **dense** array: the values at
those coordinates (duplicates summed, zero where nothing is stored), with the batch
and block dims kept. Otherwise the result is **sparse**, in the format of the
sparse dims it keeps (dropping or adding sparse dims follows the format rule of
:mod:`jscorch.ops.shape`). Arrays over batch dims gather buffers (the result's
batch dims); arrays over sparse dims copy each stored entry to every index naming
its coordinate (capacity ``nse * m``, ``m`` the largest multiplicity of a point
in the index when it is concrete, else the number of points); arrays over block
dims gather blocks. Arrays over dims of several kinds (batch and sparse, say)
first turn ``A`` into an all-sparse array (no batch or block dims).

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
  >>> A[jnp.array([0, 1, 1]), jnp.array([2, 1, 0])]      # points: a dense array
  Array([2., 3., 0.], dtype=float32)
  >>> A[:, jnp.array([True, False, True])].todense()
  Array([[1., 2.],
         [0., 0.]], dtype=float32)
  >>> A[2:2].shape
  (0, 3)
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray
from jscorch.ops import blocks
from jscorch.ops.shape import (
  build,
  default_format,
  entries,
  expand_dims,
  reshape_as,
  squeeze,
  transform,
)
from jscorch.primitives import checks, convert
from jscorch.primitives.layout import index_dtype_for


# -- windows of the sparse dims --------------------------------------------------------------
def _shift_sparse(A: SparseArray, starts, sizes, strides, func: str) -> SparseArray:
  """Keeps the entries of ``A`` inside a window of its sparse dims (same format and nse;
  capacity 0 for an empty window)."""
  nb, ns = A.n_batch, A.n_sparse
  coords, valid = entries(A)
  idt = coords.dtype
  starts = jnp.stack([jnp.asarray(s).astype(idt) for s in starts])
  strides = jnp.asarray(strides, idt)
  rel = coords - starts
  inside = (rel >= 0) & (rel % strides == 0) & (rel // strides < jnp.asarray(sizes, idt))
  valid = valid & jnp.all(inside, axis=-1)
  shape = A.shape[:nb] + tuple(int(s) for s in sizes) + A.shape[nb + ns:]
  nse = A.nse if math.prod(sizes) else 0
  return build(rel // strides, valid, A.data, shape, A.format, nse, func)


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
def _index_array(k, n: int, d: int, func: str):
  """An integer index along a dim of size ``n``: negatives wrapped; static ones checked
  (``IndexError``), traced ones clamped into range."""
  if not checks.is_concrete(k):
    k = jnp.where(k < 0, k + n, k)
    return jnp.clip(k, 0, max(n - 1, 0)).astype(index_dtype_for(n, func))
  k = np.asarray(k)
  bad = k[(k < -n) | (k >= n)]
  if bad.size:
    _check_static(int(bad.flat[0]), n, d, func)
  return np.where(k < 0, k + n, k).astype(index_dtype_for(n, func))


def take(A: SparseArray, index, axis: int, func: str = "take") -> SparseArray:
  """``A`` gathered along ``axis`` at the 1-D integer ``index`` (a sparse result).

  Negative indices wrap; out-of-range ones raise when ``index`` is concrete and are
  clamped into range when it is traced. Batch and block dims gather buffers. Along a
  sparse dim each stored entry is copied to every position of ``index`` that names
  its coordinate; the capacity becomes ``nse * m`` (``m``: the largest multiplicity
  of a value in ``index`` when it is concrete, else ``len(index)``), at most the
  number of coordinates of the result when its format is unique. An empty ``index``
  gives a dim of size 0.
  """
  blocks.refuse(func, A=A)
  index = _index_array(index, A.shape[axis], axis, func)
  if axis < A.n_batch:
    return _gather_batch(A, axis, [index])
  if axis >= A.n_batch + A.n_sparse:
    return _gather_block(A, axis, [index])
  m = _multiplicity([index]) if checks.is_concrete(index) else None
  return _gather_sparse(A, axis, [jnp.asarray(index)], m, func)


def _gather_batch(A: SparseArray, p: int, index) -> SparseArray:
  """Batch dims ``p .. p + len(index) - 1`` indexed by the (broadcast) arrays ``index``."""
  key = (slice(None),) * p + tuple(index)
  data = A.data[key]
  n_batch = A.n_batch + data.ndim - A.data.ndim
  shape = data.shape[:n_batch] + A.shape[A.n_batch:]
  return SparseArray._make(data, [i[key] for i in A.indices], A.format.replace(n_batch=n_batch),
                           shape)


def _gather_block(A: SparseArray, p: int, index) -> SparseArray:
  """Block dims ``p .. p + len(index) - 1`` indexed by the (broadcast) arrays ``index``."""
  at = p - A.n_sparse + 1                                    # the axis of ``A.data``
  data = A.data[(slice(None),) * at + tuple(index)]
  n_dense = data.ndim - 1 - A.n_batch
  shape = A.shape[:p] + data.shape[at:]
  return SparseArray._make(data, A.indices, A.format.replace(n_dense=n_dense), shape)


def _keys(columns, sizes, dtype):
  """Row-major linear keys of coordinate ``columns`` in a space of ``sizes``."""
  strides = np.cumprod((1,) + tuple(sizes[::-1]))[::-1][1:]
  return sum(c.astype(dtype) * dtype.type(s) for c, s in zip(columns, strides))


def _multiplicity(index) -> int:
  """The largest number of times one point repeats in concrete (broadcast) ``index``."""
  shape = np.broadcast_shapes(*[np.shape(i) for i in index])
  points = np.stack([np.broadcast_to(np.asarray(i), shape).reshape(-1) for i in index], -1)
  return int(np.unique(points, axis=0, return_counts=True)[1].max()) if len(points) else 0


def _broadcast_shape(index, func: str) -> tuple[int, ...]:
  """The broadcast shape of the index arrays (numpy's rules)."""
  try:
    return tuple(np.broadcast_shapes(*[np.shape(i) for i in index]))
  except ValueError:
    raise IndexError(f"{func}: shape mismatch: indexing arrays could not be broadcast "
                     f"together; got shapes {[tuple(np.shape(i)) for i in index]}, expected "
                     "shapes that broadcast (numpy rules).") from None


def _gather_sparse(A: SparseArray, p: int, index, m: int | None, func: str) -> SparseArray:
  """Sparse dims ``p .. p + k - 1`` of ``A`` at the points ``index`` (``k`` arrays of
  shape ``[P]``): a sparse result whose dim ``p`` has size ``P`` (see :func:`take`).
  ``m`` bounds how often one point repeats (None: ``P``)."""
  nb, ns, k = A.n_batch, A.n_sparse, len(index)
  sizes = A.shape[p:p + k]
  n_points = int(index[0].shape[0])
  shape = A.shape[:p] + (n_points,) + A.shape[p + k:]
  fmt = default_format(A, ns - k + 1, nb, A.n_dense, None, func)
  kdt = index_dtype_for(math.prod(sizes) + 1, func)
  m = n_points if m is None else m
  points = _keys([jnp.asarray(i) for i in index], sizes, kdt)
  coords, valid = entries(A)
  d = p - nb
  order = jnp.argsort(points)
  ordered = points[order]
  c = _keys([coords[..., d + j] for j in range(k)], sizes, kdt)
  lo = jnp.searchsorted(ordered, c, side="left")
  hi = jnp.searchsorted(ordered, c, side="right")
  slot = lo[..., None] + jnp.arange(m, dtype=lo.dtype)          # [*batch, nse, m]
  ok = valid[..., None] & (slot < hi[..., None])
  new = order[jnp.clip(slot, 0, max(n_points - 1, 0))].astype(coords.dtype) if n_points else \
      jnp.zeros(slot.shape, coords.dtype)
  rows = jnp.broadcast_to(coords[..., None, :], ok.shape + coords.shape[-1:])
  rows = jnp.concatenate([rows[..., :d], new[..., None], rows[..., d + k:]], axis=-1)
  flat = lambda x: x.reshape(x.shape[:nb] + (x.shape[nb] * x.shape[nb + 1],) + x.shape[nb + 2:])
  nse = A.nse * m
  if fmt.unique:
    nse = min(nse, math.prod(shape[nb:nb + ns - k + 1]))
  return build(flat(rows), flat(ok), jnp.repeat(A.data, m, axis=nb), shape, fmt, nse, func)


def _lookup(A: SparseArray, index, func: str) -> jax.Array:
  """The dense values `[*batch, P, *block]` of ``A`` at the points ``index`` (one array of
  shape ``[P]`` per sparse dim); duplicates summed, zero where nothing is stored."""
  from jscorch.ops.coalesce import sum_duplicates  # noqa: PLC0415 (imports ops_shape)
  nb, ns = A.n_batch, A.n_sparse
  sizes = A.shape[nb:nb + ns]
  n_points = int(index[0].shape[0])
  shape = A.shape[:nb] + (n_points,) + A.shape[nb + ns:]
  if not n_points or not A.nse:
    return jnp.zeros(shape, A.dtype)
  if not A.format.unique:
    A = sum_duplicates(A)
  kdt = index_dtype_for(math.prod(sizes) + 1, func)
  points = _keys([jnp.asarray(i) for i in index], sizes, kdt)
  coords, valid = entries(A)
  keys = jnp.where(valid, _keys([coords[..., j] for j in range(ns)], sizes, kdt),
                   kdt.type(math.prod(sizes)))       # padding: past every point

  def one(keys, data):
    order = jnp.argsort(keys)
    at = jnp.minimum(jnp.searchsorted(keys[order], points), A.nse - 1)
    hit = keys[order[at]] == points
    values = data[order[at]]
    return jnp.where(hit.reshape(hit.shape + (1,) * (values.ndim - 1)), values,
                     jnp.zeros((), values.dtype))

  return convert.vmap_batch(one, nb)(keys, A.data)


def _permute(A, perm: Sequence[int], func: str):
  """``A`` with dims permuted: free within the batch / sparse / block groups, else rebuilt
  all-sparse (:func:`jscorch.ops.shape.transform`)."""
  perm = list(perm)
  if perm == list(range(len(perm))):
    return A
  if not isinstance(A, SparseArray):
    return jnp.transpose(A, perm)
  group = [0] * A.n_batch + [1] * A.n_sparse + [2] * A.n_dense
  if all(group[q] == group[i] for i, q in enumerate(perm)):
    return A.transpose(perm)
  return transform(A, perm, func)


def _advanced(A, dims: list[int], index: list, front: bool, m: int | None, func: str):
  """``A`` indexed at ``dims`` by integer arrays ``index`` (numpy advanced indexing).

  The broadcast shape of ``index`` replaces ``dims`` at the position of the first of
  them, or at the front when ``front`` (or when ``dims`` are not adjacent). ``m``: see
  :func:`_gather_sparse`.
  """
  bshape = _broadcast_shape(index, func)
  k = len(dims)
  p = dims[0]
  if dims != list(range(p, p + k)):                      # not adjacent: numpy puts them first
    rest = [d for d in range(A.ndim) if d not in dims]
    A = _permute(A, rest[:p] + dims + rest[p:], func)
    front = True
  index = [jnp.broadcast_to(i, bshape) for i in index]
  if not isinstance(A, SparseArray):
    out = A[(slice(None),) * p + tuple(index)]
  else:
    nb, ns = A.n_batch, A.n_sparse
    points = set(range(nb, nb + ns)) <= set(range(p, p + k))     # every sparse dim indexed
    if p + k <= nb:
      out = _gather_batch(A, p, index)
    elif p >= nb + ns:
      out = _gather_block(A, p, index)
    else:
      if p < nb or p + k > nb + ns:                         # several kinds of dims
        A = transform(A, range(A.ndim), func)
      flat = [i.reshape(-1) for i in index]
      new = A.shape[:p] + bshape + A.shape[p + k:]
      if k == A.n_sparse:
        out = _lookup(A, flat, func).reshape(new)
      else:
        out = _gather_sparse(A, p, flat, m, func)
        if len(bshape) != 1:
          out = reshape_as(out, new, None, func)
        if points:
          out = out.todense()
  if front and p:
    nd = len(bshape)
    out = _permute(out, list(range(p, p + nd)) + list(range(p)) +
                   list(range(p + nd, out.ndim)), func)
  return out


# -- A[key] ----------------------------------------------------------------------------------
def _is_int(k) -> bool:
  if isinstance(k, (bool, np.bool_)):
    return False
  if isinstance(k, (int, np.integer)):
    return True
  return isinstance(k, (np.ndarray, jax.Array)) and k.ndim == 0 and jnp.issubdtype(
      k.dtype, jnp.integer)


def _array(k, func: str):
  """``k`` as an integer or boolean array index, or None when ``k`` is not an array."""
  if isinstance(k, (bool, np.bool_)):
    k = np.asarray(k)
  if isinstance(k, (list, tuple)):
    try:
      k = np.asarray(k)
    except ValueError:
      return None
  if not isinstance(k, (np.ndarray, jax.Array)):
    return None
  if k.dtype == np.bool_:
    if not checks.is_concrete(k):
      raise IndexError(
          f"{func}: a boolean mask index must be concrete; got a traced {k.dtype}{list(k.shape)} "
          "under jit, whose number of True entries would fix the result's shape. Pass integer "
          "indices of a static size instead, e.g. A[jnp.nonzero(mask, size=n)] (or "
          "A[:, jnp.nonzero(mask, size=n)[0]]), or index outside jit.")
    if k.ndim == 0:
      raise IndexError(f"{func}: a 0-d boolean index is not supported; got {k!r}. Use None "
                       "to add a unit dimension.")
    return k
  if not jnp.issubdtype(k.dtype, jnp.integer):
    raise TypeError(f"{func}: an array index must hold integers or booleans; got dtype "
                    f"{k.dtype} with shape {k.shape}. Cast it with .astype(int).")
  return k


def _check_static(i: int, n: int, d: int, func: str) -> int:
  if not -n <= i < n:
    raise IndexError(f"{func}: index {i} is out of bounds for axis {d} with size {n}.")
  return i % n


def _parse(key, shape: tuple[int, ...], func: str):
  """Expands ``key`` into ``[(kind, value)]`` with one entry per dim (plus ``None`` items
  and the ellipsis marker); boolean masks become one integer array per dim they cover."""
  ndim = len(shape)
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
      arr = _array(k, func)
      if arr is None:
        raise TypeError(f"{func}: unsupported index {k!r} of type {type(k).__name__}; expected "
                        "ints, slices, None, Ellipsis, integer arrays or boolean masks.")
      items.append(("bool" if arr.dtype == np.bool_ else "array", arr))
  if sum(kind == "ellipsis" for kind, _ in items) > 1:
    raise IndexError(f"{func}: an index can only have a single ellipsis ('...'); got {key!r}.")
  width = lambda kind, v: v.ndim if kind == "bool" else int(kind in ("slice", "int", "array"))
  used = sum(width(kind, v) for kind, v in items)
  if used > ndim:
    raise IndexError(f"{func}: too many indices for an array of rank {ndim}; got {used} "
                     f"in {key!r}.")
  fill = [("slice", slice(None))] * (ndim - used)
  at = next((i for i, (kind, _) in enumerate(items) if kind == "ellipsis"), len(items))
  # The ellipsis stays as a marker of no width: numpy counts it (even when it stands for
  # no dim) as separating the advanced indices on its two sides.
  items = items[:at] + fill + items[at:at + 1] + items[at + 1:]
  out, d = [], 0
  for kind, v in items:
    if kind == "bool":
      want = shape[d:d + v.ndim]
      if tuple(v.shape) != want:
        raise IndexError(f"{func}: boolean index did not match the indexed dims {d}.."
                         f"{d + v.ndim - 1}; got a mask of shape {tuple(v.shape)}, expected "
                         f"{want}.")
      out += [("array", nz) for nz in np.nonzero(np.asarray(v))]
    else:
      out.append((kind, v))
    d += width(kind, v)
  return out


def getitem(A: SparseArray, key):
  """``A[key]``; see the module docstring.

  The key is checked and resolved here (static bounds, masks to integer arrays, the
  multiplicity of concrete points) into a static plan that :func:`_index` applies.
  """
  func = "SparseArray.__getitem__"
  blocks.refuse(func, A=A)
  items = _parse(key, A.shape, func)
  dims = [i for i, (kind, _) in enumerate(items) if kind not in ("none", "ellipsis")]
  start, limit, stride = [0] * A.ndim, list(A.shape), [1] * A.ndim
  flips, ints, dynamic, arrays = [], [], {}, []
  for d, i in enumerate(dims):
    kind, k = items[i]
    n = A.shape[d]
    if kind == "array":
      arrays.append((d, _index_array(k, n, d, func)))
    elif kind == "int":
      ints.append(d)
      if not checks.is_concrete(k):
        dynamic[d] = jnp.where(k < 0, k + n, k)
      else:
        j = _check_static(int(k), n, d, func)
        start[d], limit[d] = j, j + 1
    else:
      r = range(*k.indices(n))
      if not r:
        limit[d] = 0                                     # an empty window
      elif r.step > 0:
        start[d], limit[d], stride[d] = r.start, r[-1] + 1, r.step
      else:
        start[d], limit[d], stride[d] = r[-1], r.start + 1, -r.step
        flips.append(d)
  # numpy: the arrays' broadcast dims go where the advanced indices (arrays and ints) are
  # when those are adjacent in the key, and first otherwise.
  adv = [i for i, (kind, _) in enumerate(items) if kind in ("array", "int")]
  front = bool(arrays) and adv[-1] - adv[0] + 1 != len(adv)
  index = [a for _, a in arrays]
  n_new, m = 0, None
  if arrays:
    n_new = len(_broadcast_shape(index, func))
    if checks.is_concrete(*index):
      m = _multiplicity(index)
  out = []
  for i, (kind, _) in enumerate(items):
    if kind == "slice":
      out.append("dim")
    elif kind == "none":
      out.append("none")
    elif arrays and i == adv[0] and not front:
      out += ["dim"] * n_new
  if front:
    out = ["dim"] * n_new + out
  plan = _Plan(start=tuple(start), limit=tuple(limit), stride=tuple(stride), flips=tuple(flips),
               ints=tuple(ints), dynamic=tuple(dynamic),
               at=tuple(d - sum(j < d for j in ints) for d, _ in arrays), front=front, m=m,
               new_axes=tuple(p for p, t in enumerate(out) if t == "none"))
  return _index(A, tuple(dynamic.values()), tuple(index), plan=plan, func=func)


class _Plan(NamedTuple):
  """A resolved key (static): the window, flips, squeezed and dynamic int dims, the dims
  the arrays index (after the squeeze), their placement and multiplicity, new unit dims."""
  start: tuple
  limit: tuple
  stride: tuple
  flips: tuple
  ints: tuple
  dynamic: tuple
  at: tuple
  front: bool
  m: int | None
  new_axes: tuple


def _index(A: SparseArray, dynamic, index, *, plan: _Plan, func: str):
  """``A`` indexed by a resolved key (see :func:`getitem`)."""
  A = slice_(A, plan.start, plan.limit, plan.stride, func)
  if plan.flips:
    A = flip(A, plan.flips, func)
  if plan.dynamic:
    at = dict(zip(plan.dynamic, dynamic))
    starts = [at.get(d, 0) for d in range(A.ndim)]
    sizes = [1 if d in at else n for d, n in enumerate(A.shape)]
    A = dynamic_slice(A, starts, sizes, func)
  if plan.ints:
    A = squeeze(A, plan.ints)
  if index:
    A = _advanced(A, list(plan.at), list(index), plan.front, plan.m, func)
  return expand_dims(A, plan.new_axes) if plan.new_axes else A
