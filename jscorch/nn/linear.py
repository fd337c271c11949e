"""``SparseLinear``: a linear layer whose weight is stored sparse (element- or block-wise) with
a fixed pattern."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jscorch import graph
from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum
from jscorch.nn import _util
from jscorch.primitives.formats import BSR, CSC, CSR

default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


class SparsePattern(nnx.Variable):
  """A non-trainable variable holding the index buffers of a sparse parameter.

  ``nnx.grad`` and ``nnx.Optimizer(..., wrt=nnx.Param)`` leave it alone; select
  it with ``nnx.state(model, SparsePattern)``.
  """


class SparseLinear(nnx.Module):
  """``y = x @ W + b`` with ``W`` `[in_features, out_features]` stored sparse (CSR), or
  block-sparse (``block=(bm, bn)``: BSR, only the stored ``bm x bn`` blocks).

  The pattern of ``W`` is fixed at construction: a random one with a given
  ``density``, or an explicit ``pattern``. Its stored values are the trainable
  ``kernel`` (an ``nnx.Param`` `[nse]`, aligned with the CSR pattern; `[nse, bm, bn]`
  with blocks, ``nse`` counting blocks); the index buffers are a :class:`SparsePattern`
  variable (not trained). The forward is a sparse einsum and never forms the dense
  weight; gradients w.r.t. ``kernel`` have its shape too. Blocks suit accelerators (each
  stored block is one small dense matmul); on CPU elements and blocks both run generated
  kernels.

  Args:
    in_features, out_features: the weight shape.
    density: fraction of stored weights (with ``block``: of stored blocks) in ``(0, 1]``;
      the positions are drawn uniformly without replacement from ``rngs.params()``.
    pattern: instead of ``density``: a `[in, out]` SparseArray (its stored
      entries) or a dense boolean / numeric array (its nonzeros). Concrete. With
      ``block``, every block holding one of them is stored.
    block: ``(bm, bn)`` dividing ``(in_features, out_features)``: store ``W`` as BSR.
    use_bias: add a dense ``bias`` `[out_features]`.
    kernel_init: initialiser called with the dense shape ``(in, out)``; the values
      at the pattern's positions are kept.
    bias_init: initialiser of ``bias``.
    param_dtype: dtype of the parameters.
    rngs: ``nnx.Rngs`` (required).

  Raises:
    ValueError: neither or both of ``density`` and ``pattern``, a density outside
      ``(0, 1]``, a pattern of the wrong shape, a block that does not divide the shape.
    TypeError: missing ``rngs``.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import nn
    >>> layer = nn.SparseLinear(8, 4, density=0.25, rngs=nnx.Rngs(0))
    >>> layer.kernel.shape, layer.bias.shape, layer.nse
    ((8,), (4,), 8)
    >>> layer.sparse_kernel
    SparseArray(float32[8, 4], format=CSR, nse=8)
    >>> layer(jnp.ones((2, 8))).shape
    (2, 4)
    >>> blocks = nn.SparseLinear(8, 4, density=0.5, block=(2, 2), rngs=nnx.Rngs(0))
    >>> blocks.kernel.shape, blocks.sparse_kernel
    ((4, 2, 2), SparseArray(float32[8, 4], format=BSR((2, 2)), nse=4))
  """

  def __init__(self, in_features: int, out_features: int, *, density: float | None = None,
               pattern=None, block: tuple[int, int] | None = None, use_bias: bool = True,
               kernel_init=default_kernel_init, bias_init=default_bias_init,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    name = "SparseLinear"
    rngs = _util.require_rngs(rngs, name)
    self.in_features = _util.check_positive(in_features, "in_features", name)
    self.out_features = _util.check_positive(out_features, "out_features", name)
    self.use_bias = use_bias
    shape = (in_features, out_features)
    self.block = _check_block(block, shape, name)
    bm, bn = self.block or (1, 1)
    grid = (in_features // bm, out_features // bn)
    if (density is None) == (pattern is None):
      raise ValueError(f"{name}: give exactly one of density= and pattern=; got "
                       f"density={density!r}, pattern={'given' if pattern is not None else None}.")
    if pattern is None:
      if not 0 < float(density) <= 1:
        raise ValueError(f"{name}: density must be in (0, 1]; got density={density}.")
      size = grid[0] * grid[1]
      nse = max(1, int(round(float(density) * size)))
      flat = np.sort(np.asarray(jax.random.choice(rngs.params(), size, (nse,), replace=False)))
      rows, cols = np.divmod(flat, grid[1])
    else:
      rows, cols = _pattern_coordinates(pattern, shape, name)
      if self.block:            # the blocks holding an entry, row-major
        rows, cols = np.divmod(np.unique(rows // bm * grid[1] + cols // bn), grid[1])
    skeleton = graph._host_csr(rows, cols, 1.0, grid)       # sorted row-major, like rows/cols
    dense = np.asarray(kernel_init(rngs.params(), shape, param_dtype))
    values = _blocks_of(dense, self.block)[rows, cols] if self.block else dense[rows, cols]
    self.kernel = nnx.Param(jnp.asarray(values, param_dtype))
    self.kernel_pattern = SparsePattern(tuple(skeleton.indices))
    # the same pattern column-major, for the forward product (see _sparse_linear)
    self.column_pattern = nnx.data(None) if self.block else \
        SparsePattern(_column_major(rows, cols, out_features))
    self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) \
        if use_bias else nnx.data(None)

  @property
  def nse(self) -> int:
    """The number of stored weights (of stored blocks with ``block``)."""
    return int(self.kernel.shape[0])

  @property
  def sparse_kernel(self) -> SparseArray:
    """The weight as a `[in_features, out_features]` SparseArray, CSR or BSR (values =
    ``kernel``)."""
    fmt = BSR(self.block) if self.block else CSR
    return SparseArray.from_buffers(self.kernel[...], self.kernel_pattern.get_value(),
                                    shape=(self.in_features, self.out_features), format=fmt,
                                    check=False)

  def __call__(self, x) -> jax.Array:
    """Applies the layer to dense ``x`` `[..., in_features]`; returns `[..., out_features]`.

    Raises:
      TypeError: ``x`` is a SparseArray (densify it, or use a dense layer whose
        ``kernel`` multiplies it with ``js.einsum``).
      ValueError: wrong feature width.
    """
    name = "SparseLinear"
    if is_sparse(x):
      raise TypeError(f"{name}: x must be a dense array; got {x!r}. Sparse x times a sparse "
                      "weight has a data-dependent cost; pass x.todense().")
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != self.in_features:
      raise ValueError(f"{name}: wrong feature width: x.shape={x.shape} but the layer was "
                       f"built with in_features={self.in_features}; expected x.shape[-1] == "
                       f"{self.in_features}.")
    column = None if self.block else self.column_pattern.get_value()
    return _sparse_linear(x, self.sparse_kernel, column,
                          self.bias[...] if self.use_bias else None)

  @classmethod
  def from_dense(cls, linear: nnx.Linear, *, density: float,
                 block: tuple[int, int] | None = None) -> SparseLinear:
    """Magnitude pruning: keeps the ``round(density * in * out)`` largest ``|kernel|``
    entries, or with ``block=(bm, bn)`` the ``round(density * blocks)`` blocks of largest
    Frobenius norm (stored as BSR).

    Args:
      linear: an ``nnx.Linear`` with a `[in, out]` kernel (its bias is copied).
      density: fraction of weights (or blocks) to keep, in ``(0, 1]``.
      block: ``(bm, bn)`` dividing the kernel's shape: prune and store by blocks.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> dense = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
      >>> pruned = SparseLinear.from_dense(dense, density=0.5)
      >>> pruned.nse, bool(jnp.abs(pruned.kernel[...]).min()
      ...                   >= jnp.sort(jnp.abs(dense.kernel[...]).ravel())[5])
      (6, True)
      >>> SparseLinear.from_dense(nnx.Linear(4, 6, rngs=nnx.Rngs(0)), density=0.5,
      ...                         block=(2, 3)).sparse_kernel
      SparseArray(float32[4, 6], format=BSR((2, 3)), nse=2)
    """
    name = "SparseLinear.from_dense"
    if not isinstance(linear, nnx.Linear):
      raise TypeError(f"{name}: expected an nnx.Linear; got {type(linear).__name__}.")
    kernel = np.asarray(linear.kernel[...])
    if kernel.ndim != 2:
      raise ValueError(f"{name}: the kernel must be 2-D [in, out]; got shape {kernel.shape}.")
    if not 0 < float(density) <= 1:
      raise ValueError(f"{name}: density must be in (0, 1]; got density={density}.")
    block = _check_block(block, kernel.shape, name)
    blocks = _blocks_of(kernel, block or (1, 1))        # [in/bm, out/bn, bm, bn]
    norms = np.sqrt((blocks.astype(np.float64) ** 2).sum(axis=(2, 3))).ravel()
    keep = max(1, int(round(float(density) * norms.size)))
    flat = np.sort(np.argsort(-norms, kind="stable")[:keep])
    rows, cols = np.divmod(flat, blocks.shape[1])
    bm, bn = block or (1, 1)
    mask = np.zeros(kernel.shape, bool)
    mask.reshape(blocks.shape[0], bm, blocks.shape[1], bn)[rows, :, cols, :] = True
    n_in, n_out = kernel.shape
    layer = cls(n_in, n_out, pattern=mask, block=block, use_bias=linear.bias is not None,
                param_dtype=kernel.dtype, rngs=nnx.Rngs(0))
    layer.kernel[...] = jnp.asarray(blocks[rows, cols] if block else kernel[rows, cols])
    if linear.bias is not None:
      layer.bias[...] = jnp.asarray(linear.bias[...])
    return layer


def _check_block(block, shape, name) -> tuple[int, int] | None:
  """``block`` as a pair of ints dividing ``shape``, or None."""
  if block is None:
    return None
  bm, bn = (int(b) for b in block)
  if bm <= 0 or bn <= 0 or shape[0] % bm or shape[1] % bn:
    padded = tuple(-(-s // max(b, 1)) * max(b, 1) for s, b in zip(shape, (bm, bn)))
    raise ValueError(f"{name}: block {tuple(block)} must be positive and divide the weight "
                     f"shape [in_features, out_features] = {tuple(shape)}; got a remainder. "
                     f"Pick a block that divides it, or use features {padded}.")
  return bm, bn


def _blocks_of(w, block):
  """`[in/bm, out/bn, bm, bn]`: the ``(bm, bn)`` blocks of ``w`` `[in, out]`."""
  (n_in, n_out), (bm, bn) = w.shape, block
  return w.reshape(n_in // bm, bm, n_out // bn, bn).transpose(0, 2, 1, 3)


def _column_major(rows, cols, n_out: int) -> tuple:
  """``(pos, crd, perm)`` int32: the row-major sorted entries ``(rows, cols)`` in CSC order;
  column ``j`` holds entries ``perm[pos[j]:pos[j + 1]]``, in rows ``crd[pos[j]:pos[j + 1]]``."""
  perm = np.lexsort((rows, cols))
  pos = np.zeros(n_out + 1, np.int64)
  np.cumsum(np.bincount(cols, minlength=n_out), out=pos[1:])
  return tuple(jnp.asarray(b, np.int32) for b in (pos, np.asarray(rows)[perm], perm))


@jax.jit
def _sparse_linear(x, kernel: SparseArray, column, bias):
  """``x @ kernel + bias`` with a sparse kernel (one jitted function; see graph_conv.py).
  Leading dims of ``x`` are flattened into one, so the product has a single free index
  (the planner then orients it: a vectorised kernel, whatever the batch shape).

  With ``column`` (:func:`_column_major` of a CSR kernel's pattern) the forward product
  runs over the kernel column-major and its backward over the CSR kernel, both in
  storage order: no kernel sorts the pattern on any call."""
  dtype = _util.compute_dtype(x, kernel)
  rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).astype(dtype)   # (no -1: may be 0)
  kernel = kernel.astype(dtype)
  if column is None:
    y = einsum("ni,io->no", rows, kernel)
  else:
    pos, crd, perm = column
    copy = SparseArray.from_buffers(kernel.data[perm], (pos, crd), shape=kernel.shape,
                                    format=CSC, check=False)
    y = _util.dual_product("io,ni->no", True, kernel, copy, rows)
  y = y.reshape(x.shape[:-1] + (kernel.shape[1],))
  return y if bias is None else y + bias.astype(dtype)


def _pattern_coordinates(pattern, shape, name):
  """Row-major sorted ``(rows, cols)`` of a SparseArray's stored entries or an array's nonzeros."""
  if is_sparse(pattern):
    if tuple(pattern.shape) != shape or pattern.n_batch or pattern.n_dense:
      raise ValueError(f"{name}: pattern must be [in_features, out_features] = {shape}; got "
                       f"{pattern!r}.")
    coords = np.asarray(graph.edge_index(pattern)).T
    coords = coords[np.all(coords < np.asarray(shape), axis=1)]
    coords = np.unique(coords, axis=0)
    return coords[:, 0], coords[:, 1]
  mask = np.asarray(pattern) != 0
  if mask.shape != shape:
    raise ValueError(f"{name}: pattern must be [in_features, out_features] = {shape}; got "
                     f"shape {mask.shape}.")
  rows, cols = np.nonzero(mask)
  return rows, cols
