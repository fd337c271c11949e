"""Coalescing: summing duplicates, sorting coordinates, dropping stored zeros.

Two sizes describe a SparseArray: ``A.nse`` is the static **capacity** (the
length of the entry axis of ``A.data``, padding included) and ``A.nnz`` the
number of entries **in use** per batch element (a dynamic count; duplicates
count separately). These functions change which entries are in use, never
silently the capacity:

* :func:`sum_duplicates` — every coordinate stored once (values summed), in
  lexicographic storage order: the format made ordered and unique
  (:func:`jscorch.primitives.union.canonical_format`).
* :func:`sort_indices` — lexicographic storage order, duplicates kept.
* :func:`eliminate_zeros` — entries whose stored value (block) is exactly zero
  become padding; the format is kept.

The capacity of the result is ``A.nse`` unless ``nse=`` (static) is given, in
eager calls and under ``jit`` alike, so the result's shapes never depend on the
values; freed entries become padding at the end. A given ``nse`` smaller than
the entries needed raises :class:`~jscorch.SparseCapacityError` (naming the size
needed) in eager calls and poisons the values with NaN under ``jit``, as
everywhere in jscorch. To shrink to the exact size eagerly, pass
``nse=int(B.nnz.max())`` of the coalesced ``B``.

All three rebuild the level buffers with
:func:`jscorch.primitives.convert.from_coordinates`: the index path is integer,
the values move by scatter-adds, so ``jit``, ``vmap``, ``grad`` (with respect to
the values) and ``eval_shape`` all apply. Batch and block dimensions are kept.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.ops import blocks
from jscorch.primitives import checks, convert, union
from jscorch.primitives._errors import SparseCapacityError
from jscorch.primitives.formats import Format
from jscorch.primitives.layout import Layout


def _check_sparse(A, func: str) -> SparseArray:
  if not is_sparse(A):
    raise TypeError(f"{func}: expects a SparseArray; got {type(A).__name__}. Build one with "
                    "js.from_dense(x) first.")
  return A


def _capacity(A: SparseArray, fmt: Format, nse, func: str) -> int:
  """The result capacity: ``A.nse`` by default; all-dense formats store every coordinate."""
  if fmt.all_dense:
    return A.layout.fixed_nse
  cap = A.nse if nse is None else _static.static_int(nse, "nse", func)
  return Layout.make(fmt, A.shape, cap, func).nse     # validates (non-negative, index range)


def _raise_overflow(needed: int, nse: int, func: str):
  if needed > nse:
    raise SparseCapacityError(
        f"{func}: the result needs {needed} stored entries but its capacity is nse={nse}; "
        f"got nse={nse}, expected nse >= {needed}. Pass nse={needed} (or larger).")


# -- sum_duplicates -------------------------------------------------------------------------
def coalesced(A: SparseArray) -> SparseArray:
  """``A`` itself for a unique format, else :func:`sum_duplicates` of it (same ``nse``).

  What a non-linear map or a sampled output needs: one stored value per coordinate.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> from jscorch.ops.coalesce import coalesced
    >>> A = js.from_dense(jnp.array([[0., 2.], [3., 0.]]), "csr")
    >>> coalesced(A) is A
    True
  """
  return A if A.format.unique else sum_duplicates(A)


def sum_duplicates(A: SparseArray, nse: int | None = None) -> SparseArray:
  """``A`` with every coordinate stored once (duplicates summed), in sorted order.

  The result's format is ``A``'s with every level ordered and the last level
  unique (COO stays COO; an unordered, non-unique COO becomes plain COO; CSR,
  CSC, DCSR and CSF are already ordered and unique and come back unchanged when
  ``nse`` is not given). Padding stays padding and goes last. Explicitly stored
  zeros (also those that duplicates sum to) are kept; see :func:`eliminate_zeros`.

  Args:
    A: a SparseArray (any format, batch and block dims).
    nse: the result capacity (static). Default ``A.nse``, which always suffices.

  Returns:
    A SparseArray of ``A``'s shape, dtype, batch and block dims.

  Raises:
    SparseCapacityError: an eager ``nse`` below the number of distinct
      coordinates (under ``jit`` the values become NaN instead).
    TypeError: ``nse`` traced, or ``A`` not a SparseArray.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_coo(jnp.array([[1, 0], [0, 1], [1, 0]]), jnp.array([1., 2., 3.]),
    ...                 (2, 2), format=js.Format(js.compressed(ordered=False, unique=False),
    ...                 js.singleton(ordered=False, unique=False)), nse=3)
    >>> B = A.sum_duplicates()
    >>> B.format == js.COO, B.data, B.nse, int(B.nnz)
    (True, Array([2., 4., 0.], dtype=float32), 3, 2)
  """
  func = "sum_duplicates"
  A = _check_sparse(A, func)
  if A.format.blocks:       # duplicate blocks of the block view, summed
    return blocks.from_view(sum_duplicates(A.block_view(), nse))
  fmt = union.canonical_format(A.format)
  cap = _capacity(A, fmt, nse, func)
  if cap < A.nse and checks.is_concrete(*A.indices):
    _raise_overflow(union.union_size([(A.layout, A.indices)]), cap, func)
  return _to_format(A, fmt, cap)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _to_format_jit(A, fmt, nse):
  return A.asformat(fmt, nse=nse)


def _to_format(A: SparseArray, fmt: Format, nse: int) -> SparseArray:
  """``A.asformat(fmt, nse=nse)``, compiled once per layout (eager calls would otherwise
  dispatch op by op)."""
  if A.format == fmt and A.nse == nse:
    return A
  return _to_format_jit(A, fmt, nse)


# -- sort_indices ---------------------------------------------------------------------------
def sort_indices(A: SparseArray) -> SparseArray:
  """``A`` with its entries in lexicographic storage order; duplicates are kept.

  The result's format is ``A``'s with every level ordered (uniqueness
  unchanged); an already ordered format is returned as is. Capacity, values and
  padding are kept (padding goes last).

  Args:
    A: a SparseArray (any format, batch and block dims).

  Returns:
    A SparseArray storing the same entries, sorted.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> unordered = js.Format(js.compressed(ordered=False, unique=False),
    ...                       js.singleton(ordered=False, unique=False))
    >>> A = js.from_coo(jnp.array([[1, 0], [0, 1], [1, 0]]), jnp.array([1., 2., 3.]),
    ...                 (2, 2), format=unordered, nse=3)
    >>> B = A.sort_indices()
    >>> B.crd(0), B.data
    (Array([0, 1, 1], dtype=int32), Array([2., 1., 3.], dtype=float32))
  """
  func = "sort_indices"
  A = _check_sparse(A, func)
  if A.format.blocks:
    return blocks.from_view(sort_indices(A.block_view()))
  fmt = A.format.replace(levels=tuple(lvl(ordered=True) for lvl in A.format.levels))
  return _to_format(A, fmt, A.nse)


# -- dropping entries -----------------------------------------------------------------------
def drop_entries(A: SparseArray, keep: jax.Array, nse: int | None = None, *,
                 func: str) -> SparseArray:
  """``A`` with the entries where ``keep`` is False turned into padding (format kept).

  Args:
    A: a SparseArray.
    keep: `[*batch, A.nse]` bool, per stored entry.
    nse: the result capacity (static); default ``A.nse``.
    func: the public function name, for capacity errors.

  Returns:
    A SparseArray of ``A``'s format with the kept entries, in their order,
    followed by padding. All-dense formats cannot hold padding: there the
    dropped entries become explicit zeros.
  """
  fmt = A.format
  cap = _capacity(A, fmt, nse, func)
  if fmt.all_dense:
    mask = keep.reshape(keep.shape + (1,) * A.n_dense)
    return A.with_data(jnp.where(mask, A.data, jnp.zeros((), A.dtype)))
  if checks.is_concrete(keep, *A.indices) and cap < A.nse:
    valid = convert.valid_mask(A.layout, _leaf_coordinates(A.layout, A.indices))
    _raise_overflow(int(jnp.max(jnp.sum(keep & valid, axis=-1), initial=0)), cap, func)
  data, indices = _drop_jit(A, keep, cap, func)
  return SparseArray._make(data, indices, fmt, A.shape)


_leaf_coordinates = jax.jit(convert.leaf_coordinates, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _drop_jit(A, keep, cap: int, func: str):
  src = A.layout
  out = Layout(src.format, src.shape, cap)
  coords = convert.leaf_coordinates(src, A.indices)
  sizes = jnp.asarray(src.level_sizes, coords.dtype)
  valid = convert.valid_mask(src, coords) & keep
  coords = jnp.where(valid[..., None], coords, sizes)
  data = jnp.where(valid.reshape(valid.shape + (1,) * A.n_dense), A.data,
                   jnp.zeros((), A.dtype))
  ordered = src.format.ordered
  if ordered:   # a stable compaction keeps the order, so no sort is needed
    coords, data = convert.vmap_batch(_compact, src.n_batch)(coords, data, valid)
  return convert.from_coordinates(out, coords, data, func=func, is_sorted=ordered,
                                  is_unique=src.format.unique)


def _compact(coords, data, valid):
  """Moves the valid rows first, keeping their order (padding rows after them)."""
  kept = jnp.cumsum(valid) - 1
  dropped = valid.sum() + jnp.cumsum(~valid) - 1
  dest = jnp.where(valid, kept, dropped)
  return (jnp.zeros_like(coords).at[dest].set(coords, unique_indices=True),
          jnp.zeros_like(data).at[dest].set(data, unique_indices=True))


def eliminate_zeros(A: SparseArray, nse: int | None = None) -> SparseArray:
  """``A`` without its explicitly stored zeros (as ``scipy.sparse``'s ``eliminate_zeros``).

  An entry is dropped when its stored value — its whole block, with dense block
  dims — is exactly zero; it becomes padding at the end, and the other entries
  keep their order and format. Duplicates are judged one by one (as in scipy):
  call :func:`sum_duplicates` first to drop coordinates whose duplicates sum to
  zero. A dropped entry receives no gradient. All-dense formats store every
  coordinate, so for them this is the identity.

  Args:
    A: a SparseArray (any format, batch and block dims).
    nse: the result capacity (static). Default ``A.nse``, which always suffices.

  Returns:
    A SparseArray of ``A``'s format and shape.

  Raises:
    SparseCapacityError: an eager ``nse`` below the number of nonzero entries
      (under ``jit`` the values become NaN instead).
    TypeError: ``nse`` traced, or ``A`` not a SparseArray.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 2.], [0., 3.]])) * jnp.array([[1., 0.], [1., 1.]])
    >>> A.data, A.nnz
    (Array([1., 0., 3.], dtype=float32), Array(3, dtype=int32))
    >>> B = A.eliminate_zeros(nse=2)
    >>> B.data, B.crd(1), B.nnz
    (Array([1., 3.], dtype=float32), Array([0, 1], dtype=int32), Array(2, dtype=int32))
  """
  func = "eliminate_zeros"
  A = _check_sparse(A, func)
  if A.format.blocks:       # the blocks of the block view that are all zeros
    return blocks.from_view(eliminate_zeros(A.block_view(), nse))
  nonzero = A.data != 0
  if A.n_dense:
    nonzero = jnp.any(nonzero, axis=tuple(range(A.n_batch + 1, A.data.ndim)))
  return drop_entries(A, nonzero, nse, func=func)
