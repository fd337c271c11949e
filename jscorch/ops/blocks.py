"""Blocked formats (BSR): conversions and the operators that work on the block view.

A SparseArray in a blocked format (``js.BSR((bm, bn))``, ``js.blocked(base, block)``)
has the logical shape `[*batch, M, N]` and the buffers of its **block view**
(:meth:`SparseArray.block_view`): the base format of shape `[*batch, M/bm, N/bn, bm,
bn]` with two block dims, values `[*batch, nse, bm, bn]` (``nse`` and ``nnz`` count
blocks). Everything here works on that view and reinterprets the result:

* :func:`from_view` — an unblocked array with block dims, read as blocked;
* :func:`convert` — to and from every other format, through coordinates (a
  blocked source gives each block element an entry: explicit zeros are stored; an
  unblocked source's entries are gathered into the blocks that hold them);
* :func:`transpose`, :func:`union` (``+``, ``-``, ``maximum``, ``minimum`` of two
  blocked arrays of the same blocks),
  :func:`multiply` (with a dense array or another blocked array); reductions and
  products are einsums, which run on the block view (:mod:`jscorch._block_einsum`).

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> x = jnp.zeros((4, 6)).at[0, 1].set(1.).at[3, 5].set(2.)
  >>> A = js.from_dense(x, format=js.BSR((2, 3)))
  >>> A, A.data.shape
  (SparseArray(float32[4, 6], format=BSR((2, 3)), nse=2), (2, 2, 3))
  >>> A.asformat("csr").nse, A.asformat("csr").asformat(js.BSR((2, 3))).nse
  (12, 2)
"""
from __future__ import annotations

import builtins
import math

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray, is_sparse
from jscorch.primitives import checks
from jscorch.primitives import convert as conv
from jscorch.primitives._errors import SparseFormatError
from jscorch.primitives.capacity import enforce_capacity
from jscorch.primitives.formats import Format, blocked, compressed, resolve_format
from jscorch.primitives.layout import Layout, block_view_shape


def is_blocked(x) -> bool:
  """True for a SparseArray in a blocked format."""
  return is_sparse(x) and bool(x.format.blocks)


def from_view(V: SparseArray, n_blocks: int | None = None) -> SparseArray:
  """The blocked array whose block view is ``V`` (an unblocked SparseArray whose last
  ``n_blocks`` dims, default as many as its sparse dims, are block dims).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> V = js.from_dense(jnp.ones((2, 1, 2, 3)), n_dense=2)
    >>> from_view(V)
    SparseArray(float32[4, 3], format=BSR((2, 3)), nse=2)
  """
  n = V.n_sparse if n_blocks is None else n_blocks
  fmt = V.format
  if fmt.blocks or fmt.n_dense != n or fmt.n_block_levels or n != fmt.n_sparse:
    raise SparseFormatError(
        f"from_view: a block view has one block dim per sparse dim and no other; got "
        f"{V!r} with format {fmt!r}, expected n_dense == n_sparse == {n}.")
  nb = V.n_batch
  shape = V.shape
  grid, block = shape[nb:nb + n], shape[nb + n:]
  out = blocked(fmt.replace(n_batch=0, n_dense=0), block).replace(n_batch=nb)
  logical = shape[:nb] + tuple(g * b for g, b in zip(grid, block))
  return SparseArray._make(V.data, V.indices, out, logical)


def block_dense(x: jax.Array, fmt: Format, func: str, operand: str = "x") -> jax.Array:
  """A dense `[*batch, *sparse]` array as its block view `[*batch, *grid, *block]`
  (the divisibility error of :func:`~jscorch.primitives.layout.block_view_shape` first)."""
  view = block_view_shape(fmt, x.shape, func, operand)
  n = len(fmt.blocks)
  nb = x.ndim - n
  split = x.shape[:nb] + tuple(s for k in range(n) for s in (view[nb + k], fmt.blocks[k]))
  perm = tuple(range(nb)) + tuple(nb + 2 * k for k in range(n)) + \
      tuple(nb + 2 * k + 1 for k in range(n))
  return jnp.transpose(x.reshape(split), perm)


# -- conversions ------------------------------------------------------------------------------
def element_coordinates(A: SparseArray):
  """``(coords, values)``: `[*batch, n, n_sparse]` logical coordinates of every stored
  element (padding: out of range) and `[*batch, n]` values; ``n = nse * prod(blocks)`` for a
  blocked ``A`` (every block element, explicit zeros included)."""
  V = A.block_view()
  lay = V.layout
  leaves = conv.leaf_coordinates(lay, V.indices)
  valid = conv.valid_mask(lay, leaves)
  coords = conv.storage_to_logical(lay, leaves)
  n = A.n_sparse
  coords = jnp.where(valid[..., None], coords, jnp.asarray(lay.sparse_shape, coords.dtype))
  blocks = A.format.blocks
  if not blocks:
    return coords, V.data
  nb = A.n_batch
  offsets = conv._grid(blocks, coords.dtype)
  scaled = coords * jnp.asarray(blocks, coords.dtype)
  coords = scaled.reshape(scaled.shape[:-1] + (1,) * n + (n,)) + offsets
  rows = coords.shape[nb] * math.prod(blocks)
  return coords.reshape(coords.shape[:nb] + (rows, n)), \
      V.data.reshape(V.data.shape[:nb] + (rows,))


def convert(A: SparseArray, fmt: Format, nse: int | None, func: str) -> SparseArray:
  """``A`` in ``fmt`` (resolved, same batch dims) where either is blocked.

  Blocked to unblocked: one entry per block element (default capacity ``A.nse *
  prod(blocks)``, at most the number of coordinates for a unique format). Unblocked
  (or other blocks) to blocked: the blocks holding a stored entry (default capacity:
  the exact count when ``A``'s buffers are concrete, else the fewest of the entries
  and the grid's cells). The same blocks in another base format: the block view
  converted (``nse`` kept by default).

  Dense levels below the last sparse level (``Format(compressed, dense)``) are levels,
  not block dims, on either side: a source's stored rows give one entry per element
  (their explicit zeros included), and the target's rows are gathered from the elements
  (``nse`` counts rows; default: the exact count when concrete).

  Raises:
    SparseFormatError: block dims on either side (``n_dense``), other batch dims,
      a shape that is not a multiple of the target's blocks.
  """
  from jscorch.ops import layout  # noqa: PLC0415 (layout converts through this module)
  if not A.format.blocks and A.n_dense and A.n_dense == A.format.n_block_levels:
    A = layout.update_layout(A, A.n_batch, 0, on_inefficient=None)
  if not fmt.blocks and fmt.n_dense and fmt.n_dense == fmt.n_block_levels:
    coo = resolve_format("coo", fmt.ndim, n_batch=fmt.n_batch, n_dense=0, func=func)
    elements = convert(A, coo, None, func)
    if nse is None and checks.is_concrete(*elements.indices):
      nse = layout.distinct_rows(elements, fmt.n_sparse)
    return layout.asformat(elements, fmt, nse=nse, func=func)
  if A.n_dense or fmt.ndim != A.ndim or fmt.n_batch != A.n_batch or \
      fmt.n_dense - len(fmt.blocks):
    raise SparseFormatError(
        f"{func}: converting to or from a blocked format keeps the batch dims and needs no "
        f"other block dims; got {A!r} to format {fmt!r}. Use update_layout(n_dense=0) "
        "first, or a format with the same n_batch.")
  if fmt.blocks:
    block_view_shape(fmt, A.shape, func, "A")
    if A.format.blocks == fmt.blocks:
      V = A.block_view().asformat(fmt.storage, nse=nse)
      return from_view(V)
    coords, values = element_coordinates(A)
    if _gathers_directly(fmt, A.shape, func):
      return _gather_blocks(coords, values, fmt, A.shape, nse, func)
    # an all-dense or non-unique grid: gather into a hypersparse grid, then convert the view
    grid = blocked(Format(*(compressed,) * len(fmt.blocks)), fmt.blocks).replace(
        n_batch=fmt.n_batch)
    B = _gather_blocks(coords, values, grid, A.shape, None, func)
    return from_view(B.block_view().asformat(fmt.storage, nse=nse))
  coords, values = element_coordinates(A)
  space = math.prod(A.shape[A.n_batch:])
  if fmt.all_dense:
    nse = space
  elif nse is None:
    nse = A.nse * math.prod(A.format.blocks)
    nse = builtins.min(nse, space) if fmt.unique else nse
  dst = Layout.make(fmt, A.shape, nse, func)
  data, indices = conv.from_coordinates(dst, conv.logical_to_storage(dst, coords), values,
                                        func=func, is_unique=A.format.unique)
  return SparseArray._make(data, indices, fmt, A.shape)


def _gathers_directly(fmt: Format, shape, func: str) -> bool:
  """Whether :func:`_gather_blocks` can fill ``fmt``'s grid (it needs its coordinate
  slots: a unique grid format with a sparse level)."""
  nb, n = fmt.n_batch, len(fmt.blocks)
  grid = block_view_shape(fmt, shape, func, "A")[:nb + n]
  return conv.has_coordinate_slots(Layout(fmt.base, grid, 0))


def _gather_blocks(coords, values, fmt: Format, shape, nse, func: str) -> SparseArray:
  """The blocked array (``fmt``) of the elements ``coords``/``values`` (summed)."""
  nb, n, blocks = fmt.n_batch, len(fmt.blocks), fmt.blocks
  view = block_view_shape(fmt, shape, func, "A")
  grid_shape = view[:nb + n]
  sizes = np.asarray(shape[nb:])
  if nse is None:
    if checks.is_concrete(coords):
      host = np.asarray(coords).reshape((math.prod(coords.shape[:nb]),) + coords.shape[nb:])
      cells = [np.unique(h[np.all(h < sizes, 1)] // np.asarray(blocks), axis=0) for h in host]
      nse = builtins.max((len(c) for c in cells), default=0)
    else:
      nse = builtins.min(coords.shape[nb], math.prod(grid_shape[nb:]))
  if fmt.base.all_dense:
    nse = math.prod(grid_shape[nb:])
  glay = Layout.make(fmt.base, grid_shape, nse, func)
  idt = glay.index_dtype
  coords = coords.astype(idt)
  valid = jnp.all((coords >= 0) & (coords < jnp.asarray(sizes, idt)), axis=-1)
  grid = jnp.where(valid[..., None], coords // jnp.asarray(blocks, idt),
                   jnp.asarray(grid_shape[nb:], idt))
  offsets = coords % jnp.asarray(blocks, idt)
  indices, dest, count = conv.coordinate_slots(glay, conv.logical_to_storage(glay, grid),
                                               func=func)

  def one(dest, offsets, values):
    at = (dest,) + tuple(offsets[:, k] for k in range(n))
    return conv.scatter_sum(jnp.zeros((nse,) + blocks, values.dtype), at, values)

  data = conv.vmap_batch(one, nb)(dest, offsets, values)
  data = enforce_capacity(count, nse, data, func)
  return SparseArray._make(data, indices, fmt, shape)


# -- operators on the block view ----------------------------------------------------------------
def transpose(A: SparseArray, axes) -> SparseArray:
  """``A.transpose(axes)``: the block view's grid and block dims permuted alike (the grid
  by its mode ordering, free; each block's values transposed): BSR ``(bm, bn)`` gives
  ``blocked(CSC, (bn, bm))``, which ``asformat(js.BSR((bn, bm)))`` turns into BSR."""
  func = "SparseArray.transpose"
  nd, nb, n = A.ndim, A.n_batch, A.n_sparse
  axes = tuple(reversed(range(nd))) if axes is None else tuple(int(a) for a in axes)
  axes = tuple(a + nd if a < 0 else a for a in axes)
  if sorted(axes) != list(range(nd)) or sorted(axes[:nb]) != list(range(nb)):
    raise SparseFormatError(
        f"{func}: axes must be a permutation of range({nd}) that keeps the batch dims "
        f"{tuple(range(nb))} among themselves; got axes={axes} for {A!r}.")
  sparse = [a - nb for a in axes[nb:]]
  view_axes = axes[:nb] + tuple(nb + d for d in sparse) + tuple(nb + n + d for d in sparse)
  return from_view(A.block_view().transpose(view_axes))


def _same_blocks(a: SparseArray, b: SparseArray, func: str) -> None:
  if a.shape != b.shape or a.format.blocks != b.format.blocks or a.n_batch != b.n_batch:
    raise ValueError(
        f"{func}: two blocked operands need the same shape, batch dims and blocks; got "
        f"{a!r} and {b!r}. Convert one with .asformat(other.format), or an unblocked "
        "operand to the other's blocks.")


def union(a: SparseArray, b: SparseArray, func: str, on_views) -> SparseArray:
  """An elementwise op that is zero where both operands are (``a + b``, ``maximum``) of
  two blocked arrays with the same blocks: ``on_views`` applied to their block views,
  whose union stores a block stored by either once."""
  if not (is_blocked(a) and is_blocked(b)):
    raise ValueError(
        f"{func}: a blocked operand combines with another blocked operand with the same "
        f"blocks or with a dense array; got {a!r} and {b!r}. Convert the unblocked one "
        "with .asformat(blocked.format).")
  _same_blocks(a, b, func)
  return from_view(on_views(a.block_view(), b.block_view()))


def refuse(func: str, **operands) -> None:
  """Raises, before any work, for a blocked operand of an operation that does not handle
  blocked formats (docs/blocks.md lists those that do), naming ``func`` and the operand."""
  for name, x in operands.items():
    if is_blocked(x):
      raise SparseFormatError(
          f"{func}: {name} has the blocked format {x.format!r}, which {func} does not "
          f"handle; got {x!r}. Convert it first ({name}.asformat('csr')) or work on its "
          f"block view, {name}.block_view() (docs/blocks.md lists what blocked arrays "
          "support).")


def multiply(a, b, func: str):
  """``a * b`` with a blocked operand: sampled at its pattern (an einsum on the block
  views); ``b`` dense (numpy-broadcast against ``a``'s shape) or blocked like ``a``."""
  from jscorch.einsum import einsum  # noqa: PLC0415 (einsum imports the ops layer)
  from jscorch.ops._operands import letters  # noqa: PLC0415
  A, x = (a, b) if is_blocked(a) else (b, a)
  if is_sparse(x):
    if not is_blocked(x):
      raise ValueError(
          f"{func}: a blocked operand multiplies a dense array or another blocked operand; "
          f"got {a!r} and {b!r}. Convert the unblocked one with .asformat(blocked.format).")
    _same_blocks(A, x, func)
    ids = letters(A.ndim)
    return einsum(f"{ids},{ids}->{ids}", A, x)
  x = jnp.asarray(x)
  if x.ndim == 0:
    return A.with_data(A.data * x)
  if x.ndim > A.ndim or any(s not in (1, t) for s, t in zip(x.shape[::-1], A.shape[::-1])):
    raise ValueError(
        f"{func}: the dense operand must broadcast to the blocked operand's shape {A.shape} "
        f"(a blocked array does not broadcast); got x.shape={x.shape}. Reshape it.")
  ids = letters(A.ndim)
  x = x.reshape((1,) * (A.ndim - x.ndim) + x.shape)
  keep = [d for d in range(A.ndim) if x.shape[d] != 1]
  if not keep:
    return A.with_data(A.data * x.reshape(()))
  x = x.reshape(tuple(x.shape[d] for d in keep))
  return einsum(f"{ids},{''.join(ids[d] for d in keep)}->{ids}", A, x)


def softmax(A: SparseArray, axis: int) -> SparseArray:
  """Softmax along sparse dimension ``axis`` (of ``A``'s dims, batch dims excluded) over
  the elements of the stored blocks of each slice: for BSR and the last axis, over every
  element of the blocks stored in one block row, separately for each element row.

  The block view's segments along the grid's ``axis`` (:func:`segment_ids`) are reduced
  over the stored blocks *and* the block's own ``axis``; padding blocks keep 0.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 1., 0., 0.], [0., 0., 0., 0.]]), format=js.BSR((1, 2)))
    >>> softmax(A, 1).todense()
    Array([[0.5, 0.5, 0. , 0. ],
           [0. , 0. , 0. , 0. ]], dtype=float32)
  """
  from jscorch.primitives.segment import segment_ids, segment_max, segment_sum
  V = A.block_view()
  nb = V.n_batch
  one = Layout(V.format.replace(n_batch=0), V.shape[nb:], V.nse)
  within = 1 + axis                       # the block axis of ``axis`` in one element's data

  def normalise(data, indices):
    ids, n = segment_ids(one, indices, axis)
    valid = (ids < n).reshape((-1,) + (1,) * (data.ndim - 1))
    low = jnp.array(-jnp.inf, data.dtype)
    peak = segment_max(jnp.where(valid, data, low).max(axis=within, keepdims=True), ids, n)
    peak = jax.lax.stop_gradient(jnp.where(peak == low, 0, peak))   # +inf kept: NaN
    shift = peak.at[ids].get(mode="fill", fill_value=0)
    e = jnp.where(valid, jnp.exp(jnp.where(valid, data - shift, 0)), 0)
    total = segment_sum(e.sum(axis=within, keepdims=True), ids, n)
    return e / jnp.where(valid, total.at[ids].get(mode="fill", fill_value=1), 1)

  fn = normalise
  for _ in range(nb):
    fn = jax.vmap(fn)
  return A.with_data(fn(V.data, V.indices))
