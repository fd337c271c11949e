"""``ShardedSparseArray``: a sparse matrix partitioned over a device mesh; ``shard`` / ``unshard``.

**1-D (rows).** ``shard(A, mesh, axis="x")`` cuts the rows into ``S = mesh.shape["x"]``
contiguous parts with (near-)equal numbers of nonzeros — not of rows, because
power-law graphs put most entries in a few rows. Shard ``s`` holds its rows as a
local CSR over the **global** columns. Shards are padded to common static sizes
(``size`` rows, ``nse`` entries); padding follows jscorch's rule (coordinate = the
dimension size, value 0).

**2-D (rows × columns).** ``shard(A, mesh, axis=("r", "c"))`` on a ``Pr × Pc`` mesh:
rows and columns are each cut into ``P = Pr * Pc`` balanced parts; device ``(p, q)``
owns node part ``k = p * Pc + q`` and holds the block of row parts
``p * Pc .. p * Pc + Pc - 1`` (contiguous) × column parts ``q, Pc + q, 2 Pc + q, ...``,
as a local CSR over local columns. No device ever holds a whole dense operand.

**Node layout.** Dense arrays indexed by rows (outputs) or columns (operands) are
kept sharded like the matrix: `[P * size, ...]`, part ``k`` padded to ``size`` rows,
on the device that owns part ``k`` (``jax.sharding.NamedSharding`` with the spec
``A.node_spec``). ``A.shard_rows`` / ``A.shard_cols`` put a global array in that
layout and ``A.unshard_rows`` / ``A.unshard_cols`` take it back; for a square
matrix the row and column layouts are the same, so layers chain.

Leaves (pytree): ``data``, ``pos``, ``crd`` `[*grid, ...]` sharded over the mesh
axes, ``loops`` (which rows store a diagonal entry, node layout) and, for 1-D, the
halo plan (``send``, ``halo_crd``, ``halo_perm``). Static aux: a :class:`ShardLayout`
(mesh, axes, shape, partitions, capacities), so ``jit`` retraces only when those change.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jscorch.array import SparseArray, is_sparse
from jscorch.distributed import _mesh
from jscorch.distributed import halo as halo_lib
from jscorch.distributed._errors import SparseShardingError
from jscorch.distributed.partition import Partition, imbalance
from jscorch.primitives import checks
from jscorch.primitives.layout import index_dtype_for

EXCHANGES = ("replicated", "allgather", "halo")


@dataclasses.dataclass(frozen=True)
class ShardLayout:
  """Static description of a sharded matrix (hashable: the pytree aux data).

  Attributes:
    mesh: the ``jax.sharding.Mesh``.
    axes: ``(row_axis,)`` (1-D) or ``(row_axis, col_axis)`` (2-D).
    shape: the global ``(n_rows, n_cols)``.
    rows, cols: the :class:`Partition` of rows and of columns into ``P`` parts.
    nse: capacity of every local block.
    halo: ``((d, H_d), ...)`` ring shifts of the halo exchange (1-D), or ``None``.
    reordered: the nodes were relabelled (``shard(..., reorder=...)``); the leaf
      ``ids`` maps node-layout slots back to the original labels.
  """
  mesh: Mesh
  axes: tuple[str, ...]
  shape: tuple[int, int]
  rows: Partition
  cols: Partition
  nse: int
  halo: tuple[tuple[int, int], ...] | None
  reordered: bool = False

  @property
  def grid(self) -> tuple[int, ...]:
    return tuple(self.mesh.shape[a] for a in self.axes)

  @property
  def two_d(self) -> bool:
    return len(self.axes) == 2

  @property
  def n_shards(self) -> int:
    return int(np.prod(self.grid))

  @property
  def pr(self) -> int:
    return self.grid[0]

  @property
  def pc(self) -> int:
    return self.grid[1] if self.two_d else 1

  @property
  def block_spec(self) -> P:
    return P(*self.axes)

  @property
  def node_spec(self) -> P:
    """The spec of node-layout arrays: dim 0 over all the array's mesh axes."""
    return P(self.axes if self.two_d else self.axes[0])

  @property
  def local_rows(self) -> int:
    return self.pc * self.rows.size

  @property
  def local_cols(self) -> int:
    """Width of a block's column space (global columns for 1-D)."""
    return self.pr * self.cols.size if self.two_d else self.shape[1]

  @property
  def halo_width(self) -> int:
    return self.cols.size + sum(h for _, h in self.halo or ())


@jax.tree_util.register_pytree_node_class
class ShardedSparseArray:
  """A 2-D sparse matrix partitioned over mesh axes (see the module docstring).

  Build one with :func:`shard`; get the :class:`~jscorch.SparseArray` back with
  :meth:`unshard`. Multiply with ``A @ x`` (global rows in and out) or, keeping node
  layout for chained layers, :meth:`spmm` / :func:`jscorch.distributed.spmm`; see also
  :func:`~jscorch.distributed.sddmm`, :func:`~jscorch.distributed.gcn_aggregate`.
  """
  __slots__ = ("data", "pos", "crd", "loops", "ids", "halo", "_layout")
  __array_priority__ = 100   # numpy defers binary operators (``x @ A``) to us

  def __init__(self, data, pos, crd, loops, ids, halo, layout: ShardLayout):
    self.data, self.pos, self.crd, self.loops, self.ids = data, pos, crd, loops, ids
    self.halo = tuple(halo)
    self._layout = layout

  def tree_flatten(self):
    return (self.data, self.pos, self.crd, self.loops, self.ids, self.halo), self._layout

  @classmethod
  def tree_unflatten(cls, layout, children):
    return cls(*children[:5], children[5], layout)

  # -- metadata ----------------------------------------------------------------------------
  @property
  def layout(self) -> ShardLayout:
    return self._layout

  @property
  def mesh(self) -> Mesh:
    return self._layout.mesh

  @property
  def axes(self) -> tuple[str, ...]:
    return self._layout.axes

  @property
  def shape(self) -> tuple[int, int]:
    return self._layout.shape

  @property
  def ndim(self) -> int:
    return 2

  @property
  def dtype(self):
    return self.data.dtype

  @property
  def nse(self) -> int:
    """Capacity of each local block."""
    return self._layout.nse

  @property
  def n_shards(self) -> int:
    return self._layout.n_shards

  @property
  def node_spec(self) -> P:
    return self._layout.node_spec

  @property
  def node_sharding(self) -> NamedSharding:
    """The sharding of node-layout arrays (``A.shard_rows(x)``) on this mesh."""
    return NamedSharding(self.mesh, self.node_spec)

  def nnz_per_shard(self) -> np.ndarray:
    """`[*grid]` stored entries of each block (host numpy; needs concrete buffers)."""
    return _mesh.to_host(self.pos)[..., -1].astype(np.int64)

  @property
  def imbalance(self) -> float:
    """``max / mean`` nonzeros per shard (1.0 is perfect balance)."""
    return imbalance(self.nnz_per_shard())

  def __repr__(self):
    lay = self._layout
    kind = "x".join(f"{a}:{self.mesh.shape[a]}" for a in lay.axes)
    return (f"ShardedSparseArray({jnp.dtype(self.dtype).name}[{lay.shape[0]}, {lay.shape[1]}], "
            f"axes={kind}, nse={lay.nse}/shard, rows/shard={lay.rows.size})")

  def with_data(self, data) -> ShardedSparseArray:
    """The same pattern and sharding with new values ``data`` (shaped like ``self.data``)."""
    if jnp.shape(data) != self.data.shape:
      raise SparseShardingError(
          f"ShardedSparseArray.with_data: data must have the shape of A.data, "
          f"{self.data.shape} (each shard's values, padded to the same nse); got shape "
          f"{jnp.shape(data)}. Start from A.data (e.g. A.with_data(f(A.data))), or shard "
          "the new matrix with js.distributed.shard.")
    return ShardedSparseArray(data, self.pos, self.crd, self.loops, self.ids, self.halo,
                              self._layout)

  def astype(self, dtype) -> ShardedSparseArray:
    return self.with_data(self.data.astype(dtype))

  def bytes_per_device(self) -> dict[str, int]:
    """Bytes of each buffer one device holds: values, pattern, self-loop flags, halo plan."""
    per = lambda leaf: int(leaf.nbytes) // self.n_shards
    return dict(data=per(self.data), pos=per(self.pos), crd=per(self.crd),
                loops=per(self.loops), ids=per(self.ids) if self.ids is not None else 0,
                halo=sum(per(h) for h in self.halo))

  # -- conversions -------------------------------------------------------------------------
  def unshard(self, *, nse: int | None = None) -> SparseArray:
    """The whole matrix as one CSR :class:`~jscorch.SparseArray`.

    Eagerly the pattern is read to the host (from every process under
    ``jax.distributed``) and ``nse`` defaults to the number of stored entries.
    Under ``jit`` the result is built with jnp ops (values stay differentiable)
    with capacity ``nse`` (default ``n_shards * A.nse``, padding at the end).
    """
    from jscorch.distributed import products
    return products.unshard(self, nse)

  def shard_rows(self, y) -> jax.Array:
    """Global `[n_rows, ...]` → node layout `[P * rows.size, ...]` (see module docstring)."""
    from jscorch.distributed import products
    return products.to_node_layout(self, y, self._layout.rows, "ShardedSparseArray.shard_rows")

  def shard_cols(self, x) -> jax.Array:
    """Global `[n_cols, ...]` → node layout `[P * cols.size, ...]` (the operand layout)."""
    from jscorch.distributed import products
    return products.to_node_layout(self, x, self._layout.cols, "ShardedSparseArray.shard_cols")

  def unshard_rows(self, y) -> jax.Array:
    """Node layout `[P * rows.size, ...]` → global `[n_rows, ...]` (an all-gather)."""
    from jscorch.distributed import products
    return products.from_node_layout(self, y, self._layout.rows,
                                     "ShardedSparseArray.unshard_rows")

  def unshard_cols(self, x) -> jax.Array:
    """Node layout `[P * cols.size, ...]` → global `[n_cols, ...]` (an all-gather)."""
    from jscorch.distributed import products
    return products.from_node_layout(self, x, self._layout.cols,
                                     "ShardedSparseArray.unshard_cols")

  def row_mask(self) -> jax.Array:
    """`[P * rows.size]` bool in node layout: True at real rows, False at padding."""
    from jscorch.distributed import products
    return products.row_mask(self)

  def __matmul__(self, x) -> jax.Array:
    """``A @ x``: a global `[n_cols, *rest]` in, a global `[n_rows, *rest]` out.

    The shape contract of ``@`` for any matrix: the product is computed sharded
    (:func:`~jscorch.distributed.spmm`) and its rows gathered back (``unshard_rows``),
    in the original node labels. Chained layers should stay in node layout with
    :meth:`spmm` instead, which skips the gather.

    Raises:
      SparseShardingError: ``x`` does not have ``n_cols`` rows (e.g. an operand
        already in node layout: use :meth:`spmm`).

    Example:
      >>> import jax, jax.numpy as jnp, jscorch as js
      >>> from jscorch import distributed as jsd
      >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
      >>> A @ jnp.ones((2, 1))
      Array([[2.],
             [3.]], dtype=float32)
    """
    func = "ShardedSparseArray @"
    shape = tuple(np.shape(x)) if hasattr(x, "shape") or isinstance(x, (list, tuple)) else None
    if shape is None:
      return NotImplemented
    if not shape or shape[0] != self.shape[1]:
      raise SparseShardingError(
          f"{func}: x must be a global array with one row per column of A; got x.shape="
          f"{shape}, expected ({self.shape[1]}, ...). For an operand in node layout "
          f"(A.shard_cols(x), {self._layout.cols.padded} rows) use A.spmm(x), which also "
          "returns node layout.")
    return self.unshard_rows(self.spmm(x))

  def __rmatmul__(self, x) -> jax.Array:
    """``x @ A``: a global `[n_rows]` or `[m, n_rows]` in, `[n_cols]` or `[m, n_cols]` out.

    Computed as the transpose of ``A @ z`` (:func:`jax.linear_transpose`): the sharded
    product's backward pass, the same collectives in reverse, without a forward pass.

    Raises:
      SparseShardingError: ``x`` is not 1-D or 2-D with ``n_rows`` columns.

    Example:
      >>> import jax, jax.numpy as jnp, jscorch as js
      >>> from jscorch import distributed as jsd
      >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
      >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
      >>> jnp.array([[1., 10.]]) @ A
      Array([[30.,  2.]], dtype=float32)
    """
    shape = tuple(np.shape(x)) if hasattr(x, "shape") or isinstance(x, (list, tuple)) else None
    if shape is None:
      return NotImplemented
    if len(shape) not in (1, 2) or shape[-1] != self.shape[0]:
      raise SparseShardingError(
          f"ShardedSparseArray @ (x @ A): x must be [n_rows] or [m, n_rows] with one column "
          f"per row of A; got x.shape={shape}, expected (..., {self.shape[0]}).")
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, self.dtype)
    xt = x.T.astype(dtype)
    z = jax.ShapeDtypeStruct((self.shape[1],) + xt.shape[1:], dtype)
    (zt,) = jax.linear_transpose(lambda z: self @ z, z)(xt)
    return zt.T

  def spmm(self, x, *, exchange: str | None = None) -> jax.Array:
    """``A @ x`` in **node layout** `[P * rows.size, *rest]`: the form chained layers use.

    ``x`` is global `[n_cols, *rest]` or already in node layout (``A.shard_cols(x)``);
    ``A.unshard_rows`` turns the result into global rows. The same as
    :func:`jscorch.distributed.spmm` (see there for ``exchange``).
    """
    from jscorch.distributed import products
    return products.spmm(self, x, exchange=exchange)


def is_sharded(x) -> bool:
  """True for a :class:`ShardedSparseArray`."""
  return isinstance(x, ShardedSparseArray)


def unshard(A: ShardedSparseArray, *, nse: int | None = None) -> SparseArray:
  """The whole matrix as one CSR SparseArray (see :meth:`ShardedSparseArray.unshard`)."""
  if not is_sharded(A):
    raise SparseShardingError(f"unshard: expected a ShardedSparseArray; got "
                              f"{type(A).__name__}.")
  return A.unshard(nse=nse)


# -- shard ------------------------------------------------------------------------------------
def shard(A, mesh: Mesh | None = None, axis: str | Sequence[str] = None, *,
          balance: str = "nnz", reorder=None, halo: bool = True) -> ShardedSparseArray:
  """Partitions a sparse matrix over mesh axes: rows (1-D) or rows × columns (2-D).

  Args:
    A: a 2-D :class:`~jscorch.SparseArray` (any format; duplicates are summed) or a
      ``scipy.sparse`` matrix, with **concrete** buffers: the partition depends on
      the pattern, so call ``shard`` once, outside ``jit``, and pass the result in.
    mesh: a ``jax.sharding.Mesh``; default, the mesh of the ``jax.set_mesh``
      context.
    axis: a mesh axis name (1-D, rows over it) or a pair ``(row_axis, col_axis)``
      (2-D). Other mesh axes replicate the matrix.
    balance: ``"nnz"`` (default: contiguous parts with the least possible largest
      number of nonzeros) or ``"rows"`` (equal row counts).
    reorder: relabel the nodes of a square matrix first: ``None`` (default; keeps
      the labels and so any locality they have), ``"degree"`` (deal the nodes in
      decreasing degree, snake order, over the parts: equal row counts *and*
      balanced nonzeros — what power-law graphs need for the dense features to
      shrink 1/N too), or an integer array ``order`` (``order[new] = old``, e.g. from
      a graph partitioner; parts are then contiguous in the new order). Invisible to
      callers: ``shard_rows`` / ``unshard_rows`` / ``unshard`` use original labels.
    halo: precompute the halo-exchange plan (1-D only), needed by
      ``exchange="halo"``; costs two `[nse]` index buffers and the send lists
      (`[sum_d H_d]`) per device.

  Returns:
    A :class:`ShardedSparseArray`. Every shard is padded to the same static sizes
    (so any mesh axis size works with any shape: nothing needs to divide), with
    jscorch's padding rule: out-of-range coordinate, value 0.

  Raises:
    SparseShardingError: no mesh, an axis not in the mesh, more than two axes,
      traced buffers, a matrix that is not 2-D.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = js.from_dense(jnp.array([[0., 2.], [3., 0.]]))
    >>> As = jsd.shard(A, mesh, axis="x")
    >>> As.unshard().todense()
    Array([[0., 2.],
           [3., 0.]], dtype=float32)
  """
  func = "shard"
  if mesh is None:
    mesh = jax.sharding.get_mesh() if hasattr(jax.sharding, "get_mesh") else None
    if mesh is None or not getattr(mesh, "shape_tuple", ()):
      raise SparseShardingError(
          f"{func}: no mesh; got mesh=None outside any mesh context, expected a "
          "jax.sharding.Mesh. Pass mesh=jax.make_mesh((n,), ('x',)) or call inside "
          "`with jax.set_mesh(mesh):`.")
  if not isinstance(mesh, Mesh):
    raise SparseShardingError(f"{func}: mesh must be a jax.sharding.Mesh; got "
                              f"{type(mesh).__name__}.")
  axes = (axis,) if isinstance(axis, str) else tuple(axis) if axis is not None else ()
  if not 1 <= len(axes) <= 2 or any(a not in mesh.axis_names for a in axes) or \
      len(set(axes)) != len(axes):
    raise SparseShardingError(
        f"{func}: axis must name one mesh axis (rows) or two distinct ones (rows, columns); "
        f"got axis={axis!r}, expected names from the mesh axes {tuple(mesh.axis_names)}.")
  if balance not in ("nnz", "rows"):
    raise SparseShardingError(f"{func}: balance must be 'nnz' or 'rows'; got {balance!r}.")
  indptr, indices, values, shape = _host_csr(A, func)
  grid = tuple(mesh.shape[a] for a in axes)
  n_parts = int(np.prod(grid))
  order = None
  if reorder is not None:
    order, bounds = _reorder(reorder, indptr, shape, n_parts, func)
    indptr, indices, values = _permute(indptr, indices, values, order)
  row_nnz = np.diff(indptr)
  make = Partition.balanced if balance == "nnz" else (lambda w, k: Partition.even(len(w), k))
  rows = make(row_nnz, n_parts) if order is None or bounds is None else \
      Partition.from_bounds(bounds)
  if order is not None and rows.padded == shape[0]:
    # one spare row per part keeps node-layout arrays (P * size rows) distinguishable from
    # global ones (n rows), which a relabelling makes different
    rows = Partition(rows.bounds, rows.size + 1)
  if shape[0] == shape[1]:
    cols = rows
  else:
    cols = make(np.bincount(indices, minlength=shape[1]), n_parts)
  pr, pc = grid[0], grid[1] if len(grid) == 2 else 1
  # every entry's block and local coordinates
  r = np.repeat(np.arange(shape[0], dtype=np.int64), row_nnz)
  c = indices.astype(np.int64)
  kr = rows.owner(r)
  p, j = kr // pc, kr % pc
  lr = j * rows.size + r - np.asarray(rows.bounds)[kr]
  if len(grid) == 2:
    kc = cols.owner(c)
    q, i = kc % pc, kc // pc
    lc = i * cols.size + c - np.asarray(cols.bounds)[kc]
    block = p * pc + q
    width = pr * cols.size
  else:
    block, lc, width = p, c, shape[1]
  counts = np.bincount(block, minlength=n_parts)
  nse = max(1, int(counts.max()))
  local_rows = pc * rows.size
  idt = index_dtype_for(max(width, local_rows, nse + 1, shape[0], shape[1]), func)
  data = np.zeros((n_parts, nse), values.dtype)
  crd = np.full((n_parts, nse), width, idt)
  pos = np.zeros((n_parts, local_rows + 1), idt)
  by_block = np.argsort(block, kind="stable")  # keeps (row, col) order within a block
  starts = np.concatenate([[0], np.cumsum(counts)])
  for b in range(n_parts):
    sel = by_block[starts[b]:starts[b + 1]]
    k = len(sel)
    data[b, :k] = values[sel]
    crd[b, :k] = lc[sel]
    np.cumsum(np.bincount(lr[sel], minlength=local_rows), out=pos[b, 1:])
  has_loop = np.zeros(rows.padded, bool)
  diag = r == c
  has_loop[rows.position()[r[diag]]] = True
  plan = None
  if halo and len(grid) == 1:
    plan = halo_lib.plan(pos, crd, cols)
  layout = ShardLayout(mesh, axes, shape, rows, cols, nse,
                       plan.shifts if plan is not None else None, order is not None)
  bspec = layout.block_spec
  put = lambda host: _mesh.from_host(host.reshape(grid + host.shape[1:]), mesh, bspec)
  halo_leaves = ()
  if plan is not None:
    halo_leaves = (put(plan.send.astype(idt)), put(plan.crd.astype(idt)),
                   put(plan.perm.astype(idt)))
  node = lambda host: _mesh.from_host(host, mesh, layout.node_spec)
  ids = None
  if order is not None:
    slots = rows.padded_index()
    ids = node(np.where(slots < shape[0], order[np.minimum(slots, shape[0] - 1)],
                        shape[0]).astype(idt))
  return ShardedSparseArray(put(data), put(pos), put(crd), node(has_loop), ids, halo_leaves,
                            layout)


def _reorder(reorder, indptr, shape, n_parts, func):
  """``(order, bounds)``: ``order[new] = old``; ``bounds`` of the parts, or ``None``."""
  if shape[0] != shape[1]:
    raise SparseShardingError(f"{func}: reorder relabels the nodes of a square matrix; got "
                              f"shape {shape}. Pass reorder=None for a rectangular matrix.")
  n = shape[0]
  if isinstance(reorder, str):
    if reorder != "degree":
      raise SparseShardingError(f"{func}: reorder must be None, 'degree' or a permutation "
                                f"array; got {reorder!r}.")
    degree = np.diff(indptr)
    by_degree = np.argsort(-degree, kind="stable")
    rank = np.arange(n)
    deal = np.where((rank // n_parts) % 2 == 0, rank % n_parts, n_parts - 1 - rank % n_parts)
    part = np.empty(n, np.int64)
    part[by_degree] = deal
    order = np.lexsort((np.arange(n), part))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=n_parts))])
    return order, bounds
  order = np.asarray(reorder)
  if order.shape != (n,) or not np.issubdtype(order.dtype, np.integer) or \
      not np.array_equal(np.sort(order), np.arange(n)):
    raise SparseShardingError(f"{func}: reorder must be a permutation of range({n}) "
                              f"(order[new] = old); got an array of shape {order.shape}, "
                              f"dtype {order.dtype}.")
  return order.astype(np.int64), None


def _permute(indptr, indices, values, order):
  """The CSR of ``A[order][:, order]`` (rows and columns relabelled, rows sorted)."""
  import scipy.sparse as sp
  n = len(indptr) - 1
  m = sp.csr_array((values, indices, indptr), shape=(n, n))[order][:, order].tocsr()
  m.sort_indices()
  return (np.asarray(m.indptr, np.int64), np.asarray(m.indices, np.int64),
          np.asarray(m.data))


def scipy_dtype(dtype) -> np.dtype:
  """The dtype scipy.sparse holds values of ``dtype`` in: float32 for the half types it
  lacks (float16, bfloat16), else ``dtype``."""
  dtype = np.dtype(dtype)
  return np.dtype(np.float32) if dtype in (np.dtype(jnp.float16), np.dtype(jnp.bfloat16)) \
      else dtype


def _host_csr(A, func):
  """``(indptr, indices, data, shape)`` of a concrete 2-D matrix, sorted, duplicates summed."""
  if is_sparse(A):
    if A.ndim != 2 or A.n_batch or A.n_dense:
      raise SparseShardingError(
          f"{func}: expected a 2-D matrix without batch or block dimensions; got {A!r}. "
          "Shard each batch element separately.")
    if not checks.is_concrete(A.data, *A.indices):
      raise SparseShardingError(
          f"{func}: the partition depends on the sparsity pattern, which must be concrete; "
          "got traced buffers (a call under jax.jit?). Call shard once outside jit and pass "
          "the ShardedSparseArray into the jitted function (update values with .with_data).")
    dtype = np.dtype(A.dtype)
    m = A.astype(scipy_dtype(dtype)).to_scipy().tocsr()
  else:
    dtype = None
    try:
      import scipy.sparse as sp
    except ImportError:  # pragma: no cover
      sp = None
    if sp is None or not sp.issparse(A):
      raise SparseShardingError(
          f"{func}: expected a jscorch SparseArray or a scipy.sparse matrix; got "
          f"{type(A).__name__}. Build one with js.from_dense / js.from_scipy.")
    m = A.tocsr()
  m = m.copy()
  m.sum_duplicates()
  return (np.asarray(m.indptr, np.int64), np.asarray(m.indices, np.int64),
          np.asarray(m.data, dtype),
          tuple(int(s) for s in m.shape))
