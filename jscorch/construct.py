"""Constructors: from dense arrays, coordinate lists, random patterns and the identity."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jscorch import _static
from jscorch.array import SparseArray
from jscorch.primitives import checks, convert
from jscorch.primitives._errors import SparseFormatError
from jscorch.primitives.formats import FormatLike, resolve_format
from jscorch.primitives.layout import Layout
from jscorch.primitives.transfer import to_device


def from_dense(x, format: FormatLike = "csr", *, nse: int | None = None,
               n_batch: int | None = None, n_dense: int | None = None) -> SparseArray:
  """A sparse array holding the nonzero entries (blocks) of a dense array.

  Args:
    x: dense array `[*batch, *sparse, *block]`.
    format: the storage format (a :class:`Format` or a name); default CSR. A
      blocked format (``js.BSR((bm, bn))``) keeps the blocks holding a nonzero
      (``nse`` counts blocks); each sparse dim must be a multiple of its block.
    nse: capacity per batch element (static). Default: the largest number of
      nonzero entries of any batch element, which needs a concrete ``x``; under
      ``jit`` pass it. Extra capacity is padding.
    n_batch: leading dimensions that are batch dimensions (default: the format's, or 0).
    n_dense: trailing dimensions stored as dense blocks (default: the format's, or 0).

  Returns:
    A :class:`SparseArray` of ``x.shape``. Gradients flow to ``x`` at the stored
    positions (a gather); ``x``'s zeros get no stored entry.

  Raises:
    SparseCapacityError: ``nse`` is smaller than the number of nonzeros (under
      ``jit`` the values are poisoned with NaN instead).
    TypeError: ``nse`` is traced.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]), format="coo", nse=3)
    >>> A.nse, A.crd(0), A.crd(1)
    (3, Array([0, 1, 2], dtype=int32), Array([0, 1, 2], dtype=int32))
  """
  func = "from_dense"
  x = to_device(x)
  fmt = resolve_format(format, x.ndim, n_batch=n_batch, n_dense=n_dense, func=func)
  if fmt.blocks:       # blocked (BSR): the block view's blocks holding a nonzero
    from jscorch.ops.blocks import block_dense  # noqa: PLC0415 (ops import this module)
    view = from_dense(block_dense(x, fmt, func), fmt.storage, nse=nse)
    return SparseArray._make(view.data, view.indices, fmt, x.shape)
  probe = Layout(fmt, x.shape, 0)
  if fmt.all_dense:
    nse = math.prod(probe.level_sizes)
  elif nse is None:
    if not checks.is_concrete(x):
      raise TypeError(
          f"{func}: nse must be given under jit, because the number of nonzeros of a traced "
          f"x (shape {x.shape}) is unknown at trace time. Pass nse= as a static int.")
    sparse_axes = tuple(range(fmt.n_batch, fmt.n_batch + fmt.n_sparse))
    mask = np.asarray(x != 0)
    if fmt.n_dense:
      mask = mask.any(axis=tuple(range(x.ndim - fmt.n_dense, x.ndim)))
    nse = int(mask.sum(axis=sparse_axes).max()) if mask.size else 0
  nse = _static.static_int(nse, "nse", func)
  lay = Layout.make(fmt, x.shape, nse, func)
  data, indices = convert.from_dense(lay, x, func=func)
  return SparseArray._make(data, indices, fmt, x.shape)


def _check_in_range(host: np.ndarray, sizes: np.ndarray, shape, func: str) -> None:
  """Raises for the first coordinate of concrete ``host`` `[..., n_sparse]` outside ``sizes``."""
  bad = (host < 0) | (host >= sizes)
  if bad.any():
    at = np.argwhere(bad)[0]
    row = tuple(int(v) for v in host[tuple(at[:-1])])
    if max(abs(v) for v in row) > np.iinfo(np.int32).max and \
        not jax.config.jax_enable_x64:
      fix = (" Coordinates beyond int32 need 64-bit indices: this index space needs "
             "jax_enable_x64 (jax.config.update('jax_enable_x64', True)).")
    elif min(row) < 0:
      fix = (" Negative coordinates are not wrapped; mark unused slots with the dimension "
             "size or pass check=False to drop them.")
    else:
      fix = " Fix the coordinates or the shape, or pass check=False to drop them."
    raise SparseFormatError(
        f"{func}: coordinate out of range: indices[{', '.join(map(str, at[:-1]))}] = "
        f"{row} for shape {shape}; expected 0 <= index < {tuple(int(s) for s in sizes)} "
        f"in every dimension.{fix}")


def from_coo(indices, values, shape, format: FormatLike = "coo", *, nse: int | None = None,
             check: bool = True, _func: str = "from_coo") -> SparseArray:
  """A sparse array from coordinates and values; sorts and sums duplicates.

  Args:
    indices: integer `[*batch, n, n_sparse]` coordinates in logical dimension order.
      Negative coordinates are **never wrapped** (``-1`` is not the last row, as it
      would be in numpy indexing): concrete input with ``check=True`` raises, and
      under ``jit`` (or with ``check=False``) an entry with a negative or too large
      coordinate is padding (dropped), so ``-1`` or the dimension size can mark
      unused slots.
    values: `[*batch, n, *block]`.
    shape: the full shape ``(*batch, *sparse, *block)`` (static).
    format: the storage format; batch and block dims are read from the operands.
      For a format with dense levels below its last sparse level
      (``Format(compressed, dense)``), ``indices`` may give every element's
      coordinates (the rows are gathered; ``nse`` then counts rows) or only the
      sparse ones, with ``values`` `[n, *dense_level_sizes, *block]`.
    nse: capacity (static). Default: the number of distinct coordinates (all
      in-range entries for a non-unique format) when the inputs are concrete, else ``n``.
    check: on concrete input, raise on out-of-range (or negative) coordinates.

  Coordinates are range-checked in their own dtype, before the cast to the index
  dtype (int32 unless ``jax_enable_x64``), so a large int64 coordinate is never
  wrapped into range. A host (numpy) coordinate of ``2**31`` or more with x64 off is
  reported as needing ``jax_enable_x64``.

  Raises:
    TypeError: non-integer ``indices``.
    SparseFormatError: shapes that do not agree, out-of-range coordinates, an index
      space that needs ``jax_enable_x64``.
    SparseCapacityError: ``nse`` below the number of distinct coordinates.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_coo(jnp.array([[1, 0], [0, 1], [1, 0]]), jnp.array([1., 2., 3.]),
    ...                 (2, 2), format="csr")
    >>> A.todense()
    Array([[0., 2.],
           [4., 0.]], dtype=float32)
  """
  func = _func
  if not isinstance(indices, jax.Array) and checks.is_concrete(*jax.tree.leaves(indices)):
    host = np.asarray(indices)      # integer host input keeps its dtype: JAX would narrow int64
    indices = host if np.issubdtype(host.dtype, np.integer) else jnp.asarray(host)
  else:
    indices = jnp.asarray(indices)
  values = to_device(values)
  shape = _static.static_shape(shape, func)
  if not jnp.issubdtype(indices.dtype, jnp.integer):
    raise TypeError(f"{func}: indices must be integers; got dtype {indices.dtype}. Cast them "
                    "with .astype(jnp.int32).")
  if indices.ndim < 2:
    raise SparseFormatError(
        f"{func}: indices must have shape [*batch, n, n_sparse]; got {indices.shape}. For a "
        "1-D array pass indices[:, None].")
  n_batch = indices.ndim - 2
  n_sparse = indices.shape[-1]
  n_dense = values.ndim - n_batch - 1
  fmt = resolve_format(format, len(shape), n_batch=n_batch, n_dense=n_dense, func=func)
  target = None
  if fmt.n_block_levels and fmt.n_sparse < n_sparse:
    # element coordinates for dense levels below the last sparse one: COO, then rows
    target, target_nse, nse = fmt, nse, None
    fmt = resolve_format("coo", len(shape), n_batch=n_batch, n_dense=n_dense, func=func)
  if fmt.n_sparse != n_sparse or n_dense < 0 or \
      values.shape[:n_batch + 1] != indices.shape[:-1] or \
      tuple(shape[:n_batch]) != indices.shape[:n_batch] or \
      tuple(shape[len(shape) - n_dense:]) != values.shape[n_batch + 1:]:
    raise SparseFormatError(
        f"{func}: indices {indices.shape} and values {values.shape} do not fit shape {shape}; "
        "expected indices [*batch, n, n_sparse] and values [*batch, n, *block] with "
        "shape == (*batch, *sparse, *block).")
  sizes = np.asarray(shape[n_batch:n_batch + n_sparse])
  concrete = checks.is_concrete(indices)
  if concrete and check and indices.size:
    _check_in_range(np.asarray(indices), sizes, shape, func)
  if nse is None and fmt.all_dense:        # stores every coordinate
    nse = Layout(fmt, shape, 0).fixed_nse
  if nse is None:
    nse = indices.shape[-2]
    if concrete and indices.size:
      host = np.asarray(indices).reshape((-1,) + indices.shape[-2:])
      kept = [h[np.all((h >= 0) & (h < sizes), 1)] for h in host]
      nse = max(len(np.unique(h, axis=0)) if fmt.unique else len(h) for h in kept)
      if target is not None and target_nse is None:      # distinct rows
        target_nse = max(len(np.unique(h[:, :target.n_sparse], axis=0)) for h in kept)
  nse = _static.static_int(nse, "nse", func)
  lay = Layout.make(fmt, shape, nse, func)
  idt = lay.index_dtype
  # out of range (negative included) -> the dimension size (padding), in the input's own
  # dtype, before the cast to idt could wrap a large coordinate into range
  if isinstance(indices, np.ndarray):
    with np.errstate(all="ignore"):
      indices = np.where((indices < 0) | (indices >= sizes), sizes, indices).astype(idt)
  else:
    if jnp.iinfo(indices.dtype).bits < jnp.iinfo(idt).bits:
      indices = indices.astype(idt)
    size_arr = jnp.asarray(sizes, indices.dtype)
    indices = jnp.where((indices < 0) | (indices >= size_arr), size_arr, indices)
  storage = convert.logical_to_storage(lay, jnp.asarray(indices).astype(idt))
  data, bufs = convert.from_coordinates(lay, storage, values, func=func)
  out = SparseArray._make(data, bufs, fmt, shape)
  if target is not None:
    from jscorch.ops import layout as ops_layout  # noqa: PLC0415 (imports construct's peers)
    out = ops_layout.asformat(out, target, nse=target_nse, func=func)
  return out


def random(key, shape, density: float, format: FormatLike = "csr", dtype=jnp.float32, *,
           n_batch: int | None = None, n_dense: int | None = None) -> SparseArray:
  """A random sparse array: uniformly placed entries with standard normal values.

  Each batch element gets its own pattern of ``ceil(density * prod(sparse_shape))``
  entries (capacity ``nse``; as ``jax.experimental.sparse.random_bcoo``, so any
  positive density stores at least one entry). For a format with dense levels
  below its last sparse level the entries are rows of dense vectors (``density``
  is the fraction of stored rows). Small index spaces are sampled without replacement;
  large ones (over 2**24 coordinates) with replacement and de-duplicated, so a few
  slots may be padding. Integer dtypes get values in ``[1, 10)``.

  Args:
    key: a ``jax.random`` key.
    shape: full shape (static). density: fraction in ``[0, 1]`` (static).
    format, n_batch, n_dense: as in :func:`from_dense`.
    dtype: the value dtype.

  Example:
    >>> import jax, jscorch as js
    >>> A = js.random(jax.random.key(0), (4, 5), 0.5, format="csr")
    >>> A.nse, int(A.nnz)
    (10, 10)
  """
  func = "random"
  shape = _static.static_shape(shape, func)
  fmt = resolve_format(format, len(shape), n_batch=n_batch, n_dense=n_dense, func=func)
  if not 0 <= float(density) <= 1:
    raise SparseFormatError(f"{func}: density must be in [0, 1]; got {density}.")
  probe = Layout(fmt, shape, 0)
  sizes = probe.sparse_shape
  space = math.prod(sizes)
  nse = math.ceil(round(float(density) * space, 9))     # rounding: no ceil of float noise
  if fmt.all_dense:
    nse = space
  batch = probe.batch_shape
  n_keys = math.prod(batch)
  keys = jax.random.split(key, 2 * n_keys)
  keys = keys.reshape(batch + (2,) + keys.shape[1:])
  idt = Layout.make(fmt, shape, nse, func).index_dtype

  def one(k):
    k_idx, k_val = k[0], k[1]
    if space <= 2 ** 24:
      flat = jax.random.choice(k_idx, space, (nse,), replace=False).astype(idt)
      coords = jnp.stack(jnp.unravel_index(flat, sizes), -1).astype(idt)
    else:
      cols = jax.random.split(k_idx, len(sizes))
      coords = jnp.stack([jax.random.randint(c, (nse,), 0, s, idt)
                          for c, s in zip(cols, sizes)], -1)
    vshape = (nse,) + probe.block_shape
    if jnp.issubdtype(dtype, jnp.integer):
      values = jax.random.randint(k_val, vshape, 1, 10, dtype)
    elif jnp.issubdtype(dtype, jnp.bool_):
      values = jnp.ones(vshape, dtype)
    else:
      values = jax.random.normal(k_val, vshape, dtype)
    return coords, values

  coords, values = convert.vmap_batch(one, len(batch))(keys)
  lay = Layout.make(fmt, shape, nse, func)
  data, bufs = convert.from_coordinates(
      lay, convert.logical_to_storage(lay, coords), values, func=func)
  return SparseArray._make(data, bufs, fmt, shape)


def eye(n: int, m: int | None = None, k: int = 0, format: FormatLike | None = None,
        dtype=jnp.float32, *, n_batch: int = 0, n_dense: int = 0) -> SparseArray:
  """The ``n × m`` identity (ones on diagonal ``k``) as a sparse array.

  As ``jax.experimental.sparse.eye``, ``n_batch`` / ``n_dense`` choose how the two
  dimensions are stored, the shape stays ``(n, m)``: ``n_batch=1`` makes each row a
  batch element holding its one entry (``nse == 1``), ``n_dense=1`` stores the
  rows with an entry as dense vectors. For a stack of identities use
  :func:`jscorch.broadcast_to`.

  Args:
    n, m: rows and columns (static; ``m`` defaults to ``n``).
    k: the diagonal (static): 0 the main one, > 0 above, < 0 below.
    format: the storage format of the sparse dims; default ``"csr"`` with two
      sparse dims, else ``"coo"`` (and ``Format()`` with none).
    dtype: the value dtype.
    n_batch, n_dense: batch and block dimension counts (static, sum at most 2).

  Raises:
    SparseFormatError: counts out of range, a format that does not fit.

  Example:
    >>> import jscorch as js
    >>> js.eye(3, format="coo").todense()[2]
    Array([0., 0., 1.], dtype=float32)
    >>> E = js.eye(3, n_batch=1)
    >>> E.shape, E.n_batch, E.nse
    ((3, 3), 1, 1)
  """
  from jscorch.ops import layout as ops_layout  # noqa: PLC0415 (imports the array module)
  func = "eye"
  n = _static.static_int(n, "n", func)
  m = n if m is None else _static.static_int(m, "m", func)
  k = _static.static_int(k, "k", func)
  nb = _static.static_int(n_batch, "n_batch", func)
  nd = _static.static_int(n_dense, "n_dense", func)
  if nb < 0 or nd < 0 or nb + nd > 2:
    raise SparseFormatError(f"{func}: n_batch and n_dense must be >= 0 with a sum of at most "
                            f"2; got n_batch={nb}, n_dense={nd}. The identity is 2-D.")
  rows = np.arange(max(0, -k), min(n, m - k))
  coords = np.stack([rows, rows + k], axis=-1).astype(np.int32).reshape(-1, 2)
  if format is None:
    format = "csr" if nb + nd == 0 else "coo"
  A = from_coo(coords, jnp.ones(len(rows), dtype), (n, m),
               format=format if nb + nd == 0 else "coo", _func=func)
  if nb + nd == 0:
    return A
  # the exact capacity of the new split: a row per entry, or one entry per batch element
  nse = len(rows) if (nb, nd) == (0, 1) else 1
  return ops_layout.update_layout(A, nb, nd, format=format, nse=nse, on_inefficient=None)
