"""Layout changes: ``asformat``, ``update_layout`` (batch / sparse / block dims) and ``todense``.

A sparse array's dimensions split into batch, sparse and dense-block dimensions
(DESIGN §3). :func:`asformat` changes the storage format and keeps that split,
except where the target format spells dense levels below its last sparse level
(``Format(compressed, dense)``: sparse rows of dense vectors), which are stored as
blocks. :func:`update_layout` moves dimensions between the groups, as
``jax.experimental.sparse.bcoo_update_layout`` does.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> x = jnp.array([[0., 0., 0.], [1., 0., 2.]])
  >>> rows = js.from_dense(x, format=js.Format(js.compressed, js.dense))
  >>> rows.nse, rows.data
  (1, Array([[1., 0., 2.]], dtype=float32))
  >>> rows.asformat("csr").to_scipy().toarray()
  array([[0., 0., 0.],
         [1., 0., 2.]], dtype=float32)
"""
from __future__ import annotations

import math
import warnings

import jax
import numpy as np

from jscorch import _static
from jscorch.array import SparseArray, is_sparse
from jscorch.primitives import checks, convert
from jscorch.primitives._errors import SparseEfficiencyWarning, SparseFormatError
from jscorch.primitives.formats import Format, FormatLike, resolve_format
from jscorch.primitives.layout import Layout

_ON_INEFFICIENT = ("warn", "error", None)


def todense(x):
  """The dense value of ``x``: ``x.todense()`` for a SparseArray, else ``x`` unchanged.

  As ``jax.experimental.sparse.todense``: code can densify its inputs without
  knowing which are sparse. Differentiable (the gradient w.r.t. a SparseArray's
  values is read at its pattern).

  Args:
    x: a :class:`SparseArray`, or any dense value (returned as is).

  Returns:
    A dense array of ``x.shape`` (padding ignored, duplicates summed), or ``x``.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.eye(2))
    >>> js.todense(A), js.todense(jnp.ones(2))
    (Array([[1., 0.],
           [0., 1.]], dtype=float32), Array([1., 1.], dtype=float32))
  """
  return x.todense() if is_sparse(x) else x


def asformat(A: SparseArray, format: FormatLike, *, nse: int | None = None,
             func: str = "SparseArray.asformat") -> SparseArray:
  """``A`` stored in another format; batch and block dimensions are kept.

  Dense levels below the last sparse level (``Format(compressed, dense)``) count
  as levels, not blocks: converting to such a format gathers each row's entries
  into a dense vector, and converting from it turns every element of a stored
  row into an entry (its explicit zeros included).

  Args:
    A: the sparse array.
    format: the target format or its name.
    nse: the target capacity (static). Default: ``A.nse`` when the split of
      batch / sparse / block dims is unchanged; otherwise ``A.nse`` times the
      size of the dims that become sparse (bounded by the number of coordinates
      for a unique format). An all-dense format always stores every coordinate.

  Raises:
    SparseFormatError: a format that does not fit ``A``'s rank.
    SparseCapacityError: ``nse`` below the number of entries (under ``jit`` the
      values are poisoned with NaN instead).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 0.], [3., 0.]]), format="coo")
    >>> A.asformat(js.Format(js.compressed, js.dense)).data
    Array([[3., 0.]], dtype=float32)
  """
  t = A.format.n_block_levels
  try:
    fmt = resolve_format(format, A.ndim, n_batch=A.n_batch, n_dense=A.n_dense - t, func=func)
  except SparseFormatError:
    if not t:
      raise
    # A's dense levels may also be the target's block dims: the same storage, respelled.
    fmt = resolve_format(format, A.ndim, n_batch=A.n_batch, n_dense=A.n_dense, func=func)
  nse = None if nse is None else _static.static_int(nse, "nse", func)
  return _to_format(A, fmt, nse, func)


def _to_format(A: SparseArray, fmt: Format, nse: int | None, func: str) -> SparseArray:
  if A.format.blocks or fmt.blocks:
    from jscorch.ops import blocks  # noqa: PLC0415 (blocks converts through this module)
    return blocks.convert(A, fmt, nse, func)
  src = A.layout
  same_split = (fmt.n_batch, fmt.n_dense) == (src.n_batch, src.n_dense)
  if nse is None:
    nse = A.nse if same_split else convert.relayout_capacity(src, fmt)
  if fmt.all_dense:
    nse = Layout(fmt, A.shape, 0).fixed_nse
  dst = Layout.make(fmt, A.shape, nse, func)
  if dst == src:
    return A
  if same_split and _storage_key(dst) == _storage_key(src):     # only the spelling differs
    return SparseArray._make(A.data, A.indices, fmt, A.shape)
  data, indices = convert.relayout(src, dst, A.data, A.indices, func=func)
  return SparseArray._make(data, indices, fmt, A.shape)


def _storage_key(lay: Layout):
  f = lay.format
  return (f.levels, f.mode_ordering, f.n_batch, f.n_dense, lay.shape, lay.nse)


def update_layout(A: SparseArray, n_batch: int | None = None, n_dense: int | None = None, *,
                  format: FormatLike | None = None, nse: int | None = None,
                  on_inefficient: str | None = "warn") -> SparseArray:
  """``A`` with a different number of batch and dense-block dimensions.

  As ``jax.experimental.sparse.bcoo_update_layout``: batch dimensions that become
  sparse merge their elements' entries (capacity times their size); block
  dimensions that become sparse turn every block element into an entry (capacity
  times the block size, explicit zeros stored); sparse dimensions that become
  block or batch dimensions gather or split entries (the capacity does not grow).
  The two growing moves can multiply memory many times, so they warn by default.

  Args:
    A: the sparse array.
    n_batch: the new number of leading batch dims (static; default ``A.n_batch``).
    n_dense: the new number of trailing block dims (static; default ``A.n_dense``),
      counting dense levels below the last sparse level.
    format: the storage format of the sparse dims (default: ``A``'s format when
      the number of sparse dims is unchanged, else its name where it fits the new
      rank, else ``"coo"``; no sparse dims give the level-less ``Format()``).
    nse: the new capacity (static); default as described above. A level-less
      or all-dense format always stores every coordinate.
    on_inefficient: ``"warn"`` (a :class:`SparseEfficiencyWarning`), ``"error"``
      (a :class:`SparseFormatError`) or ``None`` when batch or block dims become
      sparse and the capacity grows.

  Returns:
    A :class:`SparseArray` of ``A.shape`` with the same dense value.

  Raises:
    SparseFormatError: ``n_batch`` / ``n_dense`` out of range, a ``format`` that
      does not fit, or an inefficient change with ``on_inefficient="error"``.
    SparseCapacityError: a given ``nse`` below the number of entries.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]), format="coo")
    >>> B = js.update_layout(A, n_batch=1, nse=1)     # one entry per row
    >>> B.n_batch, B.nse, B.format
    (1, 1, Format(compressed, n_batch=1))
    >>> bool((B.todense() == A.todense()).all())
    True
  """
  func = "update_layout"
  if on_inefficient not in _ON_INEFFICIENT:
    raise SparseFormatError(f"{func}: unknown on_inefficient; got {on_inefficient!r}, "
                            f"expected one of {_ON_INEFFICIENT}.")
  nb = A.n_batch if n_batch is None else _static.static_int(n_batch, "n_batch", func)
  nd = A.n_dense if n_dense is None else _static.static_int(n_dense, "n_dense", func)
  if A.format.blocks and (n_batch, n_dense, format) != (None, None, None):
    from jscorch.ops import blocks  # noqa: PLC0415 (blocks converts through this module)
    blocks.refuse(func, A=A)
  if nb < 0 or nd < 0 or nb + nd > A.ndim:
    raise SparseFormatError(
        f"{func}: n_batch and n_dense must be >= 0 with n_batch + n_dense <= ndim; got "
        f"n_batch={nb}, n_dense={nd} for an array of rank {A.ndim}. Choose counts that fit.")
  fmt = _target_format(A, nb, nd, format, func)
  grow = math.prod(A.shape[fmt.n_batch:A.n_batch]) * \
      math.prod(A.shape[A.ndim - A.n_dense:A.ndim - min(fmt.n_dense, A.n_dense)])
  if grow > 1 and on_inefficient is not None:
    msg = (f"{func}: moving batch or block dims into the sparse dims multiplies the stored "
           f"entries by {grow} (n_batch {A.n_batch} -> {fmt.n_batch}, n_dense {A.n_dense} -> "
           f"{fmt.n_dense}, shape {A.shape}). Pass on_inefficient=None to allow it silently.")
    if on_inefficient == "error":
      raise SparseFormatError(msg)
    warnings.warn(msg, SparseEfficiencyWarning, stacklevel=2)
  nse = None if nse is None else _static.static_int(nse, "nse", func)
  return _to_format(A, fmt, nse, func)


def _target_format(A: SparseArray, nb: int, nd: int, format, func: str) -> Format:
  if format is not None:
    return resolve_format(format, A.ndim, n_batch=nb, n_dense=nd, func=func)
  n_sparse = A.ndim - nb - nd
  own = A.format
  if n_sparse == own.n_sparse:
    return own.replace(n_batch=nb, n_dense=nd)
  if n_sparse == 0:
    return Format(n_batch=nb, n_dense=nd)
  try:
    return resolve_format(own.name or "coo", A.ndim, n_batch=nb, n_dense=nd, func=func)
  except SparseFormatError:
    return resolve_format("coo", A.ndim, n_batch=nb, n_dense=nd, func=func)


def exact_capacity(A: SparseArray) -> int:
  """The largest number of stored entries of any batch element (needs concrete buffers).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> exact_capacity(js.from_dense(jnp.eye(3), nse=5))
    3
  """
  count = jax.device_get(A.nnz)
  return int(count.max()) if count.size else 0


def einsum_rows(subscripts: str, operands, ops, in_ids, out_ids, out_layout: Layout,
                nse: int | None, work: int | None):
  """A sparse einsum result in a format with dense levels bound by sparse operands.

  The einsum kernels fill block dimensions from dense operands only; when an
  output dimension spelled as a dense level below the last sparse one is a sparse
  dimension of an operand (``js.einsum("ij,jk->ik", A, B, out_format=
  Format(compressed, dense))`` with ``B`` sparse), the product is computed in COO
  and its rows gathered (:func:`asformat`). ``nse`` counts the result's rows.

  Returns:
    The result, or None when the kernels can fill the blocks directly.
  """
  from jscorch.einsum import einsum  # noqa: PLC0415 (einsum calls this module)
  fmt = out_layout.format
  bound = {i for x, ids in zip(ops, in_ids) if is_sparse(x)
           for i in tuple(ids)[:x.n_batch + x.n_sparse]}
  if not set(tuple(out_ids)[len(out_ids) - fmt.n_dense:]) & bound:
    return None
  t = fmt.n_block_levels
  inner = resolve_format("coo", fmt.ndim, n_batch=fmt.n_batch, n_dense=fmt.n_dense - t,
                         func="einsum")
  block = math.prod(out_layout.block_shape[:t])
  result = einsum(subscripts, *operands, out_format=inner,
                  nse=None if nse is None else nse * block, work=work)
  if nse is None and checks.is_concrete(*result.indices):      # eager: the exact row count
    nse = distinct_rows(result, fmt.n_sparse)
  return asformat(result, fmt, nse=nse, func="einsum")


def distinct_rows(A: SparseArray, n_sparse: int) -> int:
  """The largest number of distinct leading ``n_sparse`` sparse coordinates of any batch
  element of a concrete ``A`` (in use entries only)."""
  lay = A.layout
  coords = np.asarray(convert.storage_to_logical(lay, convert.leaf_coordinates(lay, A.indices)))
  coords = coords.reshape((math.prod(coords.shape[:-2]),) + coords.shape[-2:])
  sizes = np.asarray(lay.sparse_shape)
  counts = [len(np.unique(c[np.all(c < sizes, 1)][:, :n_sparse], axis=0)) for c in coords]
  return max(counts, default=0)
