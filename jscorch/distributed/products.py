"""Sharded products of a :class:`ShardedSparseArray` with dense operands: SpMM, SDDMM, GCN.

Every product is one ``jax.shard_map`` over the matrix's mesh: each device runs
``js.einsum`` on its local block (generated kernel or portable lowering, as
configured) and JAX collectives move the dense rows. How the dense operand ``x``
reaches the devices is the ``exchange``:

* ``"replicated"`` (1-D): ``x`` is whole on every device; no communication in the
  product (the caller paid for the replication). Gradient: one ``psum`` of the
  `[n_cols, F]` cotangent of ``x``.
* ``"allgather"`` (1-D): ``x`` in node layout; ``all_gather`` over the row axis, so
  every device receives ``(S - 1) * cols.size * F`` values. Gradient: the
  transposed ``psum_scatter``, same volume.
* ``"halo"`` (1-D): ``x`` in node layout; each device receives only the rows its
  columns use, by ``ppermute`` along the ring shifts that carry traffic
  (``sum_d H_d * F`` values, see :mod:`jscorch.distributed.halo`). Gradient: the
  inverse ``ppermute`` s, same volume.
* 2-D: ``x`` in node layout; ``all_gather`` over the row axis of the mesh (the
  ``Pr`` devices of a mesh column, ``(Pr - 1) * cols.size * F`` values), local
  product, then ``psum_scatter`` over the column axis (``(Pc - 1) * rows.size * F``).

Outputs indexed by rows are in node layout (sharded like the matrix's rows).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jscorch._graph_util import inv_sqrt
from jscorch.array import SparseArray
from jscorch.distributed import _mesh
from jscorch.distributed._errors import SparseShardingError
from jscorch.distributed.partition import Partition
from jscorch.distributed.sharded import (
    EXCHANGES,
    ShardedSparseArray,
    ShardLayout,
    is_sharded,
    scipy_dtype,
)
from jscorch.einsum import einsum
from jscorch.primitives.formats import CSR
from jscorch.primitives.settings import _on_change as settings_on_change


# -- local helpers (inside shard_map) -------------------------------------------------------
def _squeeze(lay: ShardLayout, x):
  return x.reshape(x.shape[len(lay.grid):])


def _expand(lay: ShardLayout, x):
  return x.reshape((1,) * len(lay.grid) + x.shape)


def _node_index(lay: ShardLayout):
  return jax.lax.axis_index(lay.axes if lay.two_d else lay.axes[0])


def _local_matrix(lay: ShardLayout, data, pos, crd, n_cols: int) -> SparseArray:
  return SparseArray.from_buffers(data, (pos, crd), shape=(lay.local_rows, n_cols),
                                  format=CSR, check=False)


def _columns(lay: ShardLayout, exchange: str, x, data, crd, halo, ids=None):
  """The dense rows a block's columns index, and the block's values/columns for them.

  ``ids`` (reordered matrices, replicated exchange): the local slice of the
  slot → original label map; the replicated ``x`` is in original labels.
  """
  n = lay.shape[1]
  x = _mesh.vary(x, lay.axes)       # a replicated x: its cotangent is summed over devices
  if exchange == "replicated" and not lay.reordered:
    return x, data, crd, n
  row_axis = lay.axes[0]
  if lay.two_d:
    return jax.lax.all_gather(x, row_axis, tiled=True), data, crd, lay.local_cols
  size, parts = lay.cols.size, lay.n_shards
  if exchange in ("allgather", "replicated"):
    bounds = jnp.asarray(lay.cols.bounds, crd.dtype)
    owner = jnp.minimum(jnp.searchsorted(bounds[1:], crd, side="right"), parts - 1)
    local = owner * size + crd - bounds[owner]
    local = jnp.where(crd < n, local, parts * size).astype(crd.dtype)
    if exchange == "replicated":    # x in original labels: pick the slots' rows locally
      every = jax.lax.all_gather(ids, row_axis, tiled=True)
      return x.at[every].get(mode="fill", fill_value=0), data, local, parts * size
    return jax.lax.all_gather(x, row_axis, tiled=True), data, local, parts * size
  send, halo_crd, perm = halo
  received, at = [x], 0
  for d, h in lay.halo:
    rows = x.at[send[at:at + h]].get(mode="fill", fill_value=0)
    at += h
    received.append(jax.lax.ppermute(rows, row_axis,
                                     perm=[(t, (t + d) % parts) for t in range(parts)]))
  return jnp.concatenate(received), data[perm], halo_crd, lay.halo_width


def _flat_features(x):
  """``x`` as `[rows, F]` (``F``: the product of its trailing dims; any may be 0)."""
  return x.reshape(x.shape[0], math.prod(x.shape[1:]))


# -- argument handling -----------------------------------------------------------------------
def _check_matrix(A, func):
  if not is_sharded(A):
    raise SparseShardingError(f"{func}: expected a ShardedSparseArray (from "
                              f"js.distributed.shard); got {type(A).__name__}.")
  _mesh.check_context(A.mesh, A.axes, func)


def _exchange(A: ShardedSparseArray, x, exchange, func) -> str:
  lay = A.layout
  if exchange is None:
    if lay.two_d:
      return "allgather"
    if x.shape[0] == lay.cols.padded:
      return "halo" if lay.halo is not None else "allgather"
    return "replicated"
  check_exchange(lay, exchange, func)
  return exchange


def check_exchange(lay: ShardLayout, exchange: str, func: str) -> None:
  """Raises unless ``exchange`` is one that a matrix of layout ``lay`` supports."""
  if exchange not in EXCHANGES:
    raise SparseShardingError(f"{func}: exchange must be one of {EXCHANGES}; got "
                              f"{exchange!r}.")
  if lay.two_d and exchange != "allgather":
    raise SparseShardingError(
        f"{func}: a 2-D sharded matrix gathers the operand along mesh columns and "
        f"reduce-scatters the result along mesh rows; got exchange={exchange!r}, expected "
        "'allgather' (or None).")
  if exchange == "halo" and lay.halo is None:
    raise SparseShardingError(f"{func}: exchange='halo' needs the halo plan; got a matrix "
                              "sharded with halo=False. Shard with js.distributed.shard(..., "
                              "halo=True).")


def _check_operand(x, func, what):
  if is_sharded(x) or isinstance(x, SparseArray):
    raise SparseShardingError(f"{func}: {what} must be a dense array; got {type(x).__name__}. "
                              "Sharded products take one sharded sparse matrix and dense "
                              "operands.")
  x = jnp.asarray(x) if not isinstance(x, (jax.Array, np.ndarray)) else x
  if x.ndim < 1:
    raise SparseShardingError(f"{func}: {what} must have at least one dimension; got shape "
                              f"{x.shape}.")
  return x


def _operand(A, x, part: Partition, exchange: str, func: str, what: str):
  """``x`` placed for ``exchange``: global and replicated, or node layout."""
  lay = A.layout
  if x.shape[0] not in (part.n, part.padded):
    raise SparseShardingError(
        f"{func}: {what} has {x.shape[0]} rows; expected {part.n} (the global array) or "
        f"{part.padded} (node layout: {part.n_parts} parts padded to {part.size} rows). The "
        f"mesh needs equal parts, so shard it with A.shard_cols/shard_rows, which pads.")
  if exchange == "replicated":
    if x.shape[0] != part.n:
      x = from_node_layout(A, x, part, func)
    # without relabelling, a node-layout array of n rows *is* the global array
    also = (lay.node_spec,) if part.padded == part.n and not lay.reordered else ()
    return _mesh.place(x, A.mesh, P(), what, func, also=also)
  if x.shape[0] != part.padded:
    x = to_node_layout(A, x, part, func)
  return _mesh.place(x, A.mesh, lay.node_spec, what, func)


def _ids(A: ShardedSparseArray):
  """The slot → original label map (node layout); the loop flags stand in when not reordered."""
  return A.ids if A.ids is not None else A.loops


def _host_slots(A: ShardedSparseArray, part: Partition) -> np.ndarray:
  """`[P * size]`: the original index held by each node-layout slot (``n`` for padding)."""
  if A.ids is not None:
    return _mesh.to_host(A.ids).astype(np.int64)
  return part.padded_index()


def _leaves(A: ShardedSparseArray):
  return (A.data, A.pos, A.crd, *A.halo)


def _leaf_specs(lay: ShardLayout):
  return (lay.block_spec,) * (3 + (3 if lay.halo is not None else 0))


def _cached(builder):
  """Caches the jitted ``shard_map`` that ``builder`` makes from static (hashable) args,
  so eager calls compile once per layout and shape, like any jitted function. Dropped
  when ``jscorch.config.lowering`` changes (as the einsum primitive's own caches are)."""
  cached = functools.lru_cache(maxsize=256)(lambda *key: jax.jit(builder(*key)))
  settings_on_change.append(cached.cache_clear)
  return cached


# -- SpMM ---------------------------------------------------------------------------------------
def spmm(A: ShardedSparseArray, x, *, exchange: str | None = None) -> jax.Array:
  """``A @ x`` for a sharded ``A`` `[m, n]` and a dense ``x`` `[n, *rest]`.

  Args:
    A: a :class:`ShardedSparseArray`.
    x: the dense operand: global `[n, *rest]` or in node layout
      `[P * cols.size, *rest]` (``A.shard_cols(x)``). When the two sizes are equal
      (no padding) the two layouts hold the same rows in the same order (``shard``
      keeps them different for a relabelled matrix).
    exchange: how ``x`` reaches the devices (module docstring): ``"replicated"``,
      ``"allgather"`` or ``"halo"`` (1-D); 2-D always all-gathers along mesh
      columns and reduce-scatters along mesh rows. Default: ``"halo"`` (or
      ``"allgather"`` without a plan) for a node-layout ``x``, ``"replicated"`` for
      a global one. A global ``x`` with a node-layout exchange is first put in
      node layout (local slicing of a replicated array); a node-layout ``x`` with
      ``"replicated"`` is first all-gathered.

  Communication per device, forward (the backward pass moves the same volume):
  ``"replicated"`` none; ``"allgather"`` ``(S - 1) * cols.size * F`` values
  received; ``"halo"`` ``sum_d H_d * F``; 2-D ``(Pr - 1) * cols.size * F`` then
  ``(Pc - 1) * rows.size * F`` (``F = prod(rest)``). See :func:`comm_bytes`.

  Returns:
    `[P * rows.size, *rest]` in node layout (``A.unshard_rows`` gives `[m, *rest]`);
    padding rows are 0.

  Raises:
    SparseShardingError: outside the mesh context of an Explicit mesh, ``x`` on
      another mesh or sharded another way, a row count that is neither global nor
      node layout, an exchange the matrix does not support.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
    >>> A.unshard_rows(jsd.spmm(A, jnp.ones((2, 1))))   # global x: replicated
    Array([[2.],
           [3.]], dtype=float32)
  """
  func = "js.distributed.spmm"
  _check_matrix(A, func)
  x = _check_operand(x, func, "x")
  exchange = _exchange(A, x, exchange, func)
  lay = A.layout
  x = _operand(A, x, lay.cols, exchange, func, "x")
  return _spmm_call(lay, exchange, x.shape[1:])(_leaves(A), _ids(A), x)


@_cached
def _spmm_call(lay: ShardLayout, exchange: str, rest: tuple[int, ...]):
  def body(leaves, ids, x):
    data, pos, crd, *halo = [_squeeze(lay, b) for b in leaves]
    cols, data, crd, width = _columns(lay, exchange, _flat_features(x), data, crd, halo, ids)
    y = einsum("ij,jf->if", _local_matrix(lay, data, pos, crd, width), cols)
    if lay.two_d:
      y = jax.lax.psum_scatter(y, lay.axes[1], scatter_dimension=0, tiled=True)
    return y.reshape((lay.rows.size,) + rest)

  x_spec = P() if exchange == "replicated" else lay.node_spec
  return _mesh.smap(lay.mesh, body, (_leaf_specs(lay), lay.node_spec, x_spec), lay.node_spec)


# -- SDDMM --------------------------------------------------------------------------------------
def sddmm(A: ShardedSparseArray, u, v, *, exchange: str | None = None) -> ShardedSparseArray:
  """``A * (u @ v.T)`` sampled at ``A``'s pattern: ``out_ij = A_ij * sum_k u_ik v_jk``.

  Args:
    A: a :class:`ShardedSparseArray` `[m, n]`.
    u: `[m, K]`, global or in row node layout (``A.shard_rows``).
    v: `[n, K]`, global or in column node layout (``A.shard_cols``).
    exchange: how ``v`` reaches the devices, as for :func:`spmm`.

  Communication per device: ``u``'s rows are where the block's rows are (1-D: none;
  2-D: ``all_gather`` over the column axis, ``(Pc - 1) * rows.size * K``); ``v``
  travels like ``x`` in :func:`spmm` (``(S - 1) * cols.size * K``, ``sum_d H_d * K``
  or none when replicated). The output stays where the pattern is: no communication.

  Returns:
    A :class:`ShardedSparseArray` with ``A``'s pattern and sharding and the new values.

  Raises:
    SparseShardingError: as for :func:`spmm`; ``u``, ``v`` not 2-D of one width.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
    >>> jsd.sddmm(A, jnp.ones((2, 1)), jnp.full((2, 1), 2.)).unshard().data
    Array([4., 6.], dtype=float32)
  """
  func = "js.distributed.sddmm"
  _check_matrix(A, func)
  u = _check_operand(u, func, "u")
  v = _check_operand(v, func, "v")
  if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
    raise SparseShardingError(f"{func}: u and v must be 2-D with the same width; got "
                              f"u.shape={u.shape}, v.shape={v.shape}.")
  exchange = _exchange(A, v, exchange, func)
  lay = A.layout
  u = _operand(A, u, lay.rows, "allgather", func, "u")
  v = _operand(A, v, lay.cols, exchange, func, "v")
  return A.with_data(_sddmm_call(lay, exchange)(_leaves(A), _ids(A), u, v))


@_cached
def _sddmm_call(lay: ShardLayout, exchange: str):
  def body(leaves, ids, u, v):
    data, pos, crd, *halo = [_squeeze(lay, b) for b in leaves]
    cols, ldata, lcrd, width = _columns(lay, exchange, v, data, crd, halo, ids)
    if lay.two_d:
      u = jax.lax.all_gather(u, lay.axes[1], tiled=True)
    out = einsum("ij,ik,jk->ij", _local_matrix(lay, ldata, pos, lcrd, width), u, cols).data
    if exchange == "halo":         # back from the halo plan's entry order
      out = jnp.zeros_like(out).at[halo[2]].set(out)
    return _expand(lay, out)

  v_spec = P() if exchange == "replicated" else lay.node_spec
  return _mesh.smap(lay.mesh, body, (_leaf_specs(lay), lay.node_spec, lay.node_spec, v_spec),
                    lay.block_spec)


# -- row reductions and GCN aggregation ------------------------------------------------------------
def row_sum(A: ShardedSparseArray) -> jax.Array:
  """``A.sum(axis=1)`` in row node layout (2-D: a ``psum_scatter`` of ``rows.size`` values).

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
    >>> A.unshard_rows(jsd.row_sum(A))
    Array([2., 3.], dtype=float32)
  """
  func = "js.distributed.row_sum"
  _check_matrix(A, func)
  return _row_sum_call(A.layout)(A.data, A.pos, A.crd)


@_cached
def _row_sum_call(lay: ShardLayout):
  def body(data, pos, crd):
    data, pos, crd = (_squeeze(lay, b) for b in (data, pos, crd))
    s = einsum("ij->i", _local_matrix(lay, data, pos, crd, lay.local_cols))
    if lay.two_d:
      s = jax.lax.psum_scatter(s, lay.axes[1], scatter_dimension=0, tiled=True)
    return s

  spec = lay.block_spec
  return _mesh.smap(lay.mesh, body, (spec, spec, spec), lay.node_spec)


def row_mask(A: ShardedSparseArray) -> jax.Array:
  """`[P * rows.size]` bool, node layout: True at real rows (no communication)."""
  func = "ShardedSparseArray.row_mask"
  _check_matrix(A, func)
  return _row_mask_call(A.layout)(A.pos)


@_cached
def _row_mask_call(lay: ShardLayout):
  def body(_):
    counts = jnp.asarray(lay.rows.counts, jnp.int32)
    return jnp.arange(lay.rows.size) < counts[_node_index(lay)]

  return _mesh.smap(lay.mesh, body, (lay.block_spec,), lay.node_spec)


def missing_self_loops(A: ShardedSparseArray, dtype=None) -> jax.Array:
  """`[P * rows.size]` node layout: 1 for real rows without a stored diagonal entry, else 0."""
  dtype = A.dtype if dtype is None else dtype
  return (row_mask(A) & ~A.loops).astype(dtype)


def gcn_aggregate(A: ShardedSparseArray, h, *, exchange: str | None = None,
                  add_self_loops: bool = True, normalize: bool = True) -> jax.Array:
  """GCN propagation ``D^-1/2 (A + I) D^-1/2 h`` with a sharded square adjacency.

  The same arithmetic as :class:`jscorch.nn.GCNConv`'s aggregation: missing self
  loops get weight 1, ``D`` holds the weighted degrees (row sums), and no new
  sparse pattern is formed: ``dinv * (A @ (dinv * h)) + loops * dinv**2 * h``.

  Args:
    A: a square :class:`ShardedSparseArray` (row and column partitions equal).
    h: `[n, F]` node features, in node layout or global.
    exchange: as for :func:`spmm`.
    add_self_loops, normalize: as for ``GCNConv``.

  Communication per device: one :func:`spmm` of `F` columns (the degrees are
  row-local in 1-D; in 2-D one more ``psum_scatter`` of ``rows.size`` values).

  Returns:
    `[P * rows.size, F]`, node layout, zero at padding rows.

  Raises:
    SparseShardingError: a non-square adjacency, or as for :func:`spmm`.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
    >>> jsd.gcn_aggregate(A, jnp.ones((2, 3))).shape
    (2, 3)
  """
  func = "js.distributed.gcn_aggregate"
  _check_matrix(A, func)
  lay = A.layout
  if lay.rows != lay.cols:
    raise SparseShardingError(f"{func}: expected a square adjacency sharded with equal row "
                              f"and column partitions; got shape {lay.shape}.")
  h = _check_operand(h, func, "h")
  h = _operand(A, h, lay.rows, "allgather", func, "h")
  # `[P * size, 1]` weights of the added self loops (none: a scalar 0)
  loops = missing_self_loops(A, h.dtype)[:, None] if add_self_loops else jnp.zeros((), h.dtype)
  if exchange == "replicated":
    exchange_x = lambda y: A.unshard_cols(y)
  else:
    exchange_x = lambda y: y
  if not normalize:
    return spmm(A, exchange_x(h), exchange=exchange) + loops * h
  dinv = inv_sqrt(row_sum(A).astype(h.dtype)[:, None] + loops)
  return dinv * spmm(A, exchange_x(dinv * h), exchange=exchange) + (loops * dinv * dinv) * h


# -- layouts ------------------------------------------------------------------------------------
def to_node_layout(A: ShardedSparseArray, y, part: Partition, func: str) -> jax.Array:
  _check_matrix(A, func)
  y = _check_operand(y, func, "the array")
  lay = A.layout
  if y.shape[0] != part.n:
    if y.shape[0] == part.padded:
      return _mesh.place(y, A.mesh, lay.node_spec, "the array", func)
    raise SparseShardingError(
        f"{func}: the array has {y.shape[0]} rows; expected {part.n} (global) or "
        f"{part.padded} (already in node layout).")
  if _mesh.is_concrete(y) and getattr(y, "is_fully_addressable", True) and \
      _mesh._sharding_of(y) is None or isinstance(y, np.ndarray):
    host = _mesh.to_host(y)
    slots = _host_slots(A, part)
    padded = np.zeros((part.padded,) + host.shape[1:], host.dtype)
    padded[slots < part.n] = host[slots[slots < part.n]]
    return _mesh.from_host(padded, A.mesh, lay.node_spec)
  y = _mesh.place(y, A.mesh, P(), "the array", func)
  return _to_node_call(lay, part)(_ids(A), y)


@_cached
def _to_node_call(lay: ShardLayout, part: Partition):
  def body(ids, y):
    if lay.reordered:
      return y.at[ids].get(mode="fill", fill_value=0)
    bounds = jnp.asarray(part.bounds, jnp.int32)
    counts = jnp.asarray(part.counts, jnp.int32)
    k = _node_index(lay)
    i = jnp.arange(part.size)
    idx = jnp.where(i < counts[k], bounds[k] + i, part.n)
    return y.at[idx].get(mode="fill", fill_value=0)

  return _mesh.smap(lay.mesh, body, (lay.node_spec, P()), lay.node_spec)


def from_node_layout(A: ShardedSparseArray, y, part: Partition, func: str) -> jax.Array:
  _check_matrix(A, func)
  y = _check_operand(y, func, "the array")
  lay = A.layout
  if y.shape[0] != part.padded:
    raise SparseShardingError(
        f"{func}: expected an array in node layout with {part.padded} rows ({part.n_parts} "
        f"parts of {part.size}); got shape {tuple(y.shape)}.")
  if _mesh.is_concrete(y):
    host = _mesh.to_host(y)
    slots = _host_slots(A, part)
    out = np.zeros((part.n,) + host.shape[1:], host.dtype)
    out[slots[slots < part.n]] = host[slots < part.n]
    return jnp.asarray(out)
  y = _mesh.place(y, A.mesh, lay.node_spec, "the array", func)
  return _from_node_call(lay, part)(_ids(A), y)


@_cached
def _from_node_call(lay: ShardLayout, part: Partition):
  axes = lay.axes if lay.two_d else lay.axes[0]

  def body(ids, y):
    every = _mesh.gather_replicated(y, axes)
    if lay.reordered:
      slots = _mesh.gather_replicated(ids, axes)
      return jnp.zeros((part.n,) + y.shape[1:], y.dtype).at[slots].set(every, mode="drop")
    bounds = jnp.asarray(part.bounds, jnp.int32)
    i = jnp.arange(part.n)
    k = jnp.searchsorted(bounds[1:], i, side="right")
    return every[k * part.size + i - bounds[k]]

  return _mesh.smap(lay.mesh, body, (lay.node_spec, lay.node_spec), P())


# -- unshard ------------------------------------------------------------------------------------
def _global_coordinates(lay: ShardLayout, pos, crd, p, q, xp):
  """Global ``(row, col)`` of every entry of block ``(p, q)``; out of range for padding."""
  m, n = lay.shape
  rs, cs = lay.rows.size, lay.cols.size
  rb, cb = xp.asarray(lay.rows.bounds), xp.asarray(lay.cols.bounds)
  nse = crd.shape[-1]
  if xp is np:
    lr = np.repeat(np.arange(len(pos) - 1), np.diff(pos))
    lr = np.concatenate([lr, np.full(nse - len(lr), len(pos) - 1)])
  else:
    lr = jnp.searchsorted(pos[1:], jnp.arange(nse), side="right")
  live = lr < len(pos) - 1
  kr = p * lay.pc + lr // rs
  row = xp.where(live, rb[xp.minimum(kr, lay.n_shards - 1)] + lr % rs, m)
  if lay.two_d:
    kc = (crd // cs) * lay.pc + q
    col = xp.where(live, cb[xp.minimum(kc, lay.n_shards - 1)] + crd % cs, n)
  else:
    col = xp.where(live, crd, n)
  return row, col


def unshard(A: ShardedSparseArray, nse: int | None) -> SparseArray:
  func = "ShardedSparseArray.unshard"
  if not is_sharded(A):
    raise SparseShardingError(f"{func}: expected a ShardedSparseArray; got "
                              f"{type(A).__name__}.")
  from jscorch.construct import from_coo
  lay = A.layout
  if _mesh.is_concrete(A.data, A.pos, A.crd):
    data, pos, crd = (_mesh.to_host(b).reshape((lay.n_shards, -1)) for b in
                      (A.data, A.pos, A.crd))
    rows, cols, vals = [], [], []
    for b in range(lay.n_shards):
      r, c = _global_coordinates(lay, pos[b], crd[b], b // lay.pc, b % lay.pc, np)
      keep = r < lay.shape[0]
      rows.append(r[keep])
      cols.append(c[keep])
      vals.append(data[b][keep])
    import scipy.sparse as sp

    from jscorch.interop import from_scipy
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    if lay.reordered:
      order = _host_order(A)
      rows, cols = order[rows], order[cols]
    vals = np.concatenate(vals)
    m = sp.csr_array((vals.astype(scipy_dtype(vals.dtype)), (rows, cols)), shape=lay.shape)
    return from_scipy(m, nse=nse).astype(vals.dtype)
  _mesh.check_context(A.mesh, A.axes, func)
  coords, values = _unshard_call(lay)(_ids(A), A.data, A.pos, A.crd)
  nse = lay.n_shards * lay.nse if nse is None else nse
  return from_coo(coords, values, lay.shape, format=CSR, nse=nse, check=False)


@_cached
def _unshard_call(lay: ShardLayout):
  every = lay.axes if lay.two_d else lay.axes[0]

  def body(ids, data, pos, crd):
    data, pos, crd = (_squeeze(lay, b) for b in (data, pos, crd))
    if lay.two_d:
      p, q = jax.lax.axis_index(lay.axes[0]), jax.lax.axis_index(lay.axes[1])
    else:
      p, q = jax.lax.axis_index(lay.axes[0]), 0
    r, c = _global_coordinates(lay, pos, crd, p, q, jnp)
    if lay.reordered:               # new label -> slot -> original label
      slots = jax.lax.all_gather(ids, every, tiled=True)
      r, c = _original(lay, slots, r), _original(lay, slots, c)
    coords = jnp.stack([r, c], -1).astype(crd.dtype)
    return _mesh.gather_replicated(coords, every), _mesh.gather_replicated(data, every)

  spec = lay.block_spec
  return _mesh.smap(lay.mesh, body, (lay.node_spec, spec, spec, spec), (P(), P()))


def _original(lay: ShardLayout, slots, label):
  """Original labels of new labels ``label`` (``n`` stays ``n``), from all slots' ids."""
  part = lay.rows
  bounds = jnp.asarray(part.bounds, label.dtype)
  live = label < part.n
  k = jnp.minimum(jnp.searchsorted(bounds[1:], label, side="right"), part.n_parts - 1)
  return jnp.where(live, slots[jnp.where(live, k * part.size + label - bounds[k], 0)], part.n)


def _host_order(A: ShardedSparseArray) -> np.ndarray:
  """``order[new] = old`` of a reordered matrix, from its ``ids`` leaf."""
  part = A.layout.rows
  slots = _host_slots(A, part)
  order = np.empty(part.n, np.int64)
  new = part.padded_index()
  order[new[new < part.n]] = slots[new < part.n]
  return order


# -- communication volume ---------------------------------------------------------------------
def comm_bytes(A: ShardedSparseArray, exchange: str | None, width: int,
               itemsize: int = 4) -> int:
  """Bytes one device receives in one forward :func:`spmm` with `width` dense columns.

  Counts what the collectives move, padding included (that is what crosses the
  wire): ``0`` replicated, ``(S - 1) * cols.size * width`` all-gathered,
  ``sum_d H_d * width`` by halo, and for 2-D the column all-gather plus the row
  reduce-scatter (``exchange`` ``"allgather"`` or None there). Multiply by 2 for a
  training step (the backward moves the same).

  Raises:
    SparseShardingError: an exchange that :func:`spmm` would refuse for ``A`` (unknown,
      not ``"allgather"`` on a 2-D mesh, ``"halo"`` without the halo plan).

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = jsd.shard(js.from_dense(jnp.array([[0., 2.], [3., 0.]])), mesh, axis="x")
    >>> jsd.comm_bytes(A, "allgather", 64)        # one device: nothing to exchange
    0
  """
  lay = A.layout
  check_exchange(lay, "allgather" if exchange is None and lay.two_d else exchange,
                 "comm_bytes")
  if lay.two_d:
    rows = (lay.pr - 1) * lay.cols.size + (lay.pc - 1) * lay.rows.size
  elif exchange == "replicated":
    rows = 0
  elif exchange == "allgather":
    rows = (lay.n_shards - 1) * lay.cols.size
  else:
    rows = sum(h for _, h in lay.halo)
  return int(rows) * int(width) * int(itemsize)
