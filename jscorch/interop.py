"""Interoperability with ``scipy.sparse`` and ``jax.experimental.sparse`` (BCOO)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray
from jscorch.primitives import convert
from jscorch.primitives._errors import SparseFormatError
from jscorch.primitives.formats import BSR, COO, CSC, CSR, resolve_format
from jscorch.primitives.layout import Layout, block_view_shape
from jscorch.primitives.transfer import to_device


def _scipy():
  try:
    import scipy.sparse as sp
  except ImportError as e:  # pragma: no cover - exercised only without scipy
    raise ImportError("jscorch: scipy interop needs scipy; pip install 'jscorch[bench]' "
                      "or pip install scipy.") from e
  return sp


def from_scipy(m, *, nse: int | None = None) -> SparseArray:
  """A SparseArray from a ``scipy.sparse`` matrix or array.

  CSR, CSC and COO inputs (``*_matrix`` and ``*_array``) keep their format, BSR
  becomes ``js.BSR(blocksize)`` (``nse`` counts blocks); other scipy formats are
  converted to CSR first. Duplicates are summed and indices sorted (scipy allows
  neither order nor uniqueness to be guaranteed).

  Args:
    m: a scipy sparse matrix or array, 2-D.
    nse: capacity (default: exactly the stored entries).

  Example:
    >>> import scipy.sparse as sp, jscorch as js
    >>> js.from_scipy(sp.csc_array([[0., 1.], [2., 0.]])).format == js.CSC
    True
  """
  sp = _scipy()
  if not sp.issparse(m):
    raise SparseFormatError(f"from_scipy: expected a scipy.sparse matrix or array; got "
                            f"{type(m).__name__}. Use js.from_dense for dense arrays.")
  fmt = m.format
  if fmt == "bsr":
    return _from_scipy_bsr(m, nse)
  if fmt not in ("csr", "csc", "coo"):
    m, fmt = m.tocsr(), "csr"
  if fmt == "coo":
    from jscorch.construct import from_coo
    coords = np.stack([m.row, m.col], axis=-1).astype(np.int64)
    return from_coo(coords, m.data, m.shape, format=COO, nse=nse, _func="from_scipy")
  m = m.copy()
  m.sum_duplicates()           # also sorts indices
  target = CSR if fmt == "csr" else CSC
  shape = tuple(m.shape)
  used = m.nnz
  nse = used if nse is None else int(nse)
  if nse < used:
    from jscorch.primitives._errors import SparseCapacityError
    raise SparseCapacityError(f"from_scipy: the matrix has {used} entries but nse={nse}. "
                              f"Pass nse={used} (or larger).")
  lay = Layout.make(target, shape, nse, "from_scipy")
  idt = lay.index_dtype
  minor = shape[1] if fmt == "csr" else shape[0]
  crd = np.full(nse, minor, idt)
  crd[:used] = m.indices
  data = np.zeros(nse, m.dtype)
  data[:used] = m.data
  return SparseArray._make(to_device(data), (to_device(m.indptr.astype(idt)), to_device(crd)),
                           target, shape)


def _from_scipy_bsr(m, nse: int | None) -> SparseArray:
  """``js.BSR(m.blocksize)`` from a scipy BSR matrix or array (block duplicates summed)."""
  m = m.copy()
  m.sum_duplicates()           # also sorts the block indices
  fmt = BSR(tuple(int(b) for b in m.blocksize))
  used = m.indices.shape[0]
  nse = used if nse is None else int(nse)
  if nse < used:
    from jscorch.primitives._errors import SparseCapacityError
    raise SparseCapacityError(f"from_scipy: the matrix has {used} blocks but nse={nse}. "
                              f"Pass nse={used} (or larger).")
  shape = tuple(m.shape)
  lay = Layout.make(fmt.storage, block_view_shape(fmt, shape, "from_scipy", "m"), nse,
                    "from_scipy")
  idt = lay.index_dtype
  crd = np.full(nse, shape[1] // fmt.blocks[1], idt)
  crd[:used] = m.indices
  data = np.zeros((nse,) + fmt.blocks, m.dtype)
  data[:used] = m.data
  return SparseArray._make(to_device(data), (to_device(m.indptr.astype(idt)), to_device(crd)),
                           fmt, shape)


def to_scipy(A: SparseArray):
  """A ``scipy.sparse`` array: csr_array for CSR, csc_array for CSC, bsr_array for a
  blocked format (its grid converted to CSR when needed), else coo_array."""
  sp = _scipy()
  if A.format.blocks:
    if A.ndim != 2 or A.n_batch:
      raise SparseFormatError(
          f"SparseArray.to_scipy: scipy holds 2-D matrices without batch dims; got {A!r}. "
          "Index a batch element first.")
    B = A if A.format.base == CSR else A.asformat(BSR(A.format.blocks))
    used = int(B.pos(1)[-1])
    parts = (np.asarray(B.data[:used]), np.asarray(B.crd(1)[:used]), np.asarray(B.pos(1)))
    return sp.bsr_array(parts, shape=A.shape, blocksize=A.format.blocks)
  if A.ndim == 2 and not A.n_batch and A.format.n_block_levels == A.n_dense == 1:
    A = A.asformat("coo")              # rows of dense vectors: one entry per element
  if A.ndim != 2 or A.n_batch or A.n_dense:
    raise SparseFormatError(
        f"SparseArray.to_scipy: scipy holds 2-D matrices without batch or block dims; got "
        f"{A!r}. Index a batch element or densify the blocks first.")
  if A.format in (CSR, CSC):
    used = int(A.pos(1)[-1])
    parts = (np.asarray(A.data[:used]), np.asarray(A.crd(1)[:used]), np.asarray(A.pos(1)))
    return (sp.csr_array if A.format == CSR else sp.csc_array)(parts, shape=A.shape)
  coords = convert.storage_to_logical(A.layout, convert.leaf_coordinates(A.layout, A.indices))
  coords = np.asarray(coords)
  keep = np.all(coords < np.asarray(A.shape), axis=1)
  return sp.coo_array((np.asarray(A.data)[keep], (coords[keep, 0], coords[keep, 1])),
                      shape=A.shape)


def from_bcoo(b) -> SparseArray:
  """A COO SparseArray (same batch/block dims and capacity) from a ``BCOO``.

  Duplicates in ``b`` are summed; its out-of-range padding stays padding.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> from jax.experimental import sparse
    >>> js.from_bcoo(sparse.BCOO.fromdense(jnp.eye(2))).format == js.COO
    True
  """
  from jax.experimental import sparse as jsparse
  if not isinstance(b, jsparse.BCOO):
    raise SparseFormatError(f"from_bcoo: expected a jax.experimental.sparse.BCOO; got "
                            f"{type(b).__name__}.")
  fmt = resolve_format("coo", b.ndim, n_batch=b.n_batch, n_dense=b.n_dense, func="from_bcoo")
  lay = Layout.make(fmt, b.shape, b.nse, "from_bcoo")
  indices = b.indices.astype(lay.index_dtype)
  indices = jnp.broadcast_to(indices, tuple(b.shape[:b.n_batch]) + indices.shape[b.n_batch:])
  data = jnp.broadcast_to(b.data, tuple(b.shape[:b.n_batch]) + b.data.shape[b.n_batch:])
  data, bufs = convert.from_coordinates(lay, indices, data, func="from_bcoo",
                                        is_unique=b.unique_indices)
  return SparseArray._make(data, bufs, fmt, b.shape)


def to_bcoo(A: SparseArray):
  """A ``jax.experimental.sparse.BCOO`` of the same array (padding kept as padding); a
  blocked array gives its block view's BCOO (``n_dense`` = its block dims)."""
  from jax.experimental import sparse as jsparse
  A = A.block_view()
  lay = A.layout
  coords = convert.storage_to_logical(lay, convert.leaf_coordinates(lay, A.indices))
  identity = lay.format.mode_ordering == tuple(range(lay.n_sparse))
  return jsparse.BCOO((A.data, coords), shape=A.shape,
                      indices_sorted=bool(identity and lay.format.ordered),
                      unique_indices=lay.format.unique)
