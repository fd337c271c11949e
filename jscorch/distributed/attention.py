"""Graph attention aggregation (GAT) with a sharded adjacency: ``gat_aggregate``.

One ``jax.shard_map``: each device gathers the neighbour rows its block's columns
use (``z`` and the source scores, by the matrix's ``exchange``, as
:func:`jscorch.distributed.spmm` does), scores its stored entries, normalises them
with a softmax over each row's entries — a row lives on one device in 1-D; in 2-D
its entries are spread over the ``Pc`` devices of a mesh row, which combine their
row maxima and sums with ``pmax`` / ``psum`` — and multiplies (``js.einsum`` with
one block dimension per head; 2-D: then ``psum_scatter`` over the column axis).
Self loops that the pattern lacks are added as a separate elementwise term, so no
new sparse pattern is formed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jscorch.array import SparseArray
from jscorch.distributed import _mesh, products
from jscorch.distributed._errors import SparseShardingError
from jscorch.distributed.sharded import ShardedSparseArray, ShardLayout
from jscorch.einsum import einsum
from jscorch.primitives.formats import CSR


def gat_aggregate(A: ShardedSparseArray, z, a_src, a_dst, *, negative_slope: float = 0.2,
                  add_self_loops: bool = True, exchange: str | None = None) -> jax.Array:
  """``out_i = sum_j softmax_j(LeakyReLU(a_dst_i + a_src_j)) z_j`` per head, over ``A``'s pattern.

  The aggregation of :class:`jscorch.nn.GATConv` (values of ``A`` are not used, only
  its pattern), with the missing self loops added when ``add_self_loops``.

  Args:
    A: a square :class:`~jscorch.distributed.ShardedSparseArray`.
    z: `[P * size, heads, F]` transformed node features, node layout.
    a_src, a_dst: `[P * size, heads]` per-node source and target scores, node layout.
    negative_slope: the LeakyReLU slope.
    add_self_loops: add the self loops the pattern lacks.
    exchange: how the neighbour rows travel, as for :func:`~jscorch.distributed.spmm`.

  Communication per device: one exchange of ``heads * (F + 1)`` columns (as
  :func:`~jscorch.distributed.spmm`); 2-D adds an ``all_gather`` of the target
  scores over the column axis, a ``pmax`` and a ``psum`` of ``Pc * size * heads``
  values and the ``psum_scatter`` of the result.

  Returns:
    `[P * size, heads, F]` in node layout; rows without entries (and padding) are 0.

  Raises:
    SparseShardingError: a non-square adjacency, ``exchange="replicated"``, or as for
      ``spmm``.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from jscorch import distributed as jsd
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> A = jsd.shard(js.from_dense(jnp.array([[0., 1.], [1., 0.]])), mesh, axis="x")
    >>> z = jnp.array([[[1.]], [[3.]]])                      # [nodes, heads, F]
    >>> out = jsd.gat_aggregate(A, z, jnp.zeros((2, 1)), jnp.zeros((2, 1)))
    >>> A.unshard_rows(out)[:, 0, 0]                         # equal scores: the mean
    Array([2., 2.], dtype=float32)
  """
  func = "js.distributed.gat_aggregate"
  products._check_matrix(A, func)
  lay = A.layout
  if lay.rows != lay.cols:
    raise SparseShardingError(f"{func}: expected a square adjacency sharded with equal row "
                              f"and column partitions; got shape {lay.shape}.")
  _check_node_inputs(lay, z, a_src, a_dst, func)
  n, heads, width = z.shape
  feats = jnp.concatenate([z.reshape(n, heads * width), a_src], axis=-1)
  if exchange == "replicated":
    raise SparseShardingError(f"{func}: node features stay in node layout here; got "
                              "exchange='replicated', expected 'allgather', 'halo' or None.")
  exchange = products._exchange(A, feats, exchange, func)
  feats = products._operand(A, feats, lay.cols, exchange, func, "z")
  own = products._operand(A, jnp.stack([a_dst, a_src], -1), lay.rows, "allgather", func,
                          "a_dst")
  missing = products.missing_self_loops(A, z.dtype)
  if not add_self_loops:
    missing = jnp.zeros_like(missing)
  z = products._operand(A, z, lay.rows, "allgather", func, "z")
  call = _gat_call(lay, exchange, heads, width, float(negative_slope))
  return call(products._leaves(A), products._ids(A), feats, own, missing, z)


def _check_node_inputs(lay, z, a_src, a_dst, func) -> None:
  """``z`` `[P * size, heads, F]` and ``a_src``/``a_dst`` `[P * size, heads]`, node layout."""
  rows = lay.cols.padded
  if getattr(z, "ndim", None) != 3:
    raise SparseShardingError(f"{func}: z must be [nodes, heads, F] in node layout ({rows} "
                              f"rows, from A.shard_rows); got shape {jnp.shape(z)}.")
  for name, a in (("a_src", a_src), ("a_dst", a_dst)):
    if jnp.shape(a) != z.shape[:2]:
      raise SparseShardingError(f"{func}: {name} must be [nodes, heads] = {z.shape[:2]}, "
                                f"matching z; got shape {jnp.shape(a)}.")
  if z.shape[0] != rows:
    raise SparseShardingError(
        f"{func}: z, a_src and a_dst must be in node layout ({rows} rows); got {z.shape[0]} "
        "rows. Place them with A.shard_rows(x) (or compute them from node-layout features).")


@products._cached
def _gat_call(lay: ShardLayout, exchange: str, heads: int, width: int, slope: float):
  col_axis = lay.axes[1] if lay.two_d else None

  def over_columns(reduce, x):      # a row's entries are spread over the mesh row (2-D)
    return reduce(x, col_axis) if lay.two_d else x

  def body(leaves, ids, feats, own, missing, z):
    data, pos, crd, *halo = [products._squeeze(lay, b) for b in leaves]
    cols, _, lcrd, n_cols = products._columns(lay, exchange, feats, data, crd, halo, ids)
    rows = lay.local_rows
    if lay.two_d:                   # the block's rows: the Pc node parts of its mesh row
      own, missing = (jax.lax.all_gather(v, col_axis, tiled=True) for v in (own, missing))
    nse = lcrd.shape[0]
    row = jnp.searchsorted(pos[1:], jnp.arange(nse, dtype=pos.dtype), side="right")
    live = (row < rows)[:, None]
    src = cols.at[lcrd].get(mode="fill", fill_value=0)[:, heads * width:]
    dst = own[:, :, 0].at[row].get(mode="fill", fill_value=0)
    score = jnp.where(live, jax.nn.leaky_relu(dst + src, slope), -jnp.inf)
    self_score = jax.nn.leaky_relu(own[:, :, 0] + own[:, :, 1], slope)
    has_self = missing[:, None] > 0
    # each row's largest score, subtracted for stability (the softmax does not depend on it)
    top = jax.ops.segment_max(jax.lax.stop_gradient(score), row, num_segments=rows)
    top = over_columns(jax.lax.pmax, top)
    top = jnp.maximum(top, jnp.where(has_self, jax.lax.stop_gradient(self_score), -jnp.inf))
    top = jnp.where(jnp.isfinite(top), top, 0)
    e = jnp.where(live, jnp.exp(score - top.at[row].get(mode="fill", fill_value=0)), 0)
    e_self = jnp.where(has_self, jnp.exp(self_score - top), 0)
    total = over_columns(jax.lax.psum, jax.ops.segment_sum(e, row, num_segments=rows)) + e_self
    total = jnp.where(total > 0, total, 1)
    alpha = e / total.at[row].get(mode="fill", fill_value=1)
    weights = SparseArray.from_buffers(alpha, (pos, lcrd), shape=(rows, n_cols, heads),
                                       format=CSR.replace(n_dense=1), check=False)
    values = cols[:, :heads * width].reshape(n_cols, heads, width)
    out = einsum("ijh,jhf->ihf", weights, values)
    self_alpha = e_self / total
    if lay.two_d:
      out = jax.lax.psum_scatter(out, col_axis, scatter_dimension=0, tiled=True)
      k = jax.lax.axis_index(col_axis) * lay.rows.size
      self_alpha = jax.lax.dynamic_slice_in_dim(self_alpha, k, lay.rows.size)
    return out + self_alpha[:, :, None] * z

  spec = lay.node_spec
  return _mesh.smap(lay.mesh, body, (products._leaf_specs(lay), spec, spec, spec, spec, spec),
                    spec)
