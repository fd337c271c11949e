"""``jscorch.nn`` graph layers with a sharded adjacency: ``apply(layer, A, x)``.

The layers call it themselves when given a sharded adjacency, so ``conv(A, x)``
(and ``nnx.merge(graphdef, params)(A, x)`` under ``jit``) is ``apply(conv, A, x)``.
Runs a :class:`jscorch.nn.GCNConv`, ``SAGEConv``, ``GINConv`` or ``GATConv`` (its own
parameters, unchanged) data-parallel over the graph's rows: the dense transforms
are row-local on each device, the aggregation is one sharded SpMM
(:func:`jscorch.distributed.spmm`, so the communication is that of the chosen
``exchange``; ``GATConv``: one :func:`jscorch.distributed.gat_aggregate`). Inputs
and outputs are node-feature arrays in node layout (``A.shard_rows(x)``); padding
rows of the output are 0. The arithmetic matches the unsharded layers (the tests
compare values and gradients).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jscorch.distributed import attention, products
from jscorch.distributed._errors import SparseShardingError
from jscorch.distributed.sharded import ShardedSparseArray


def _matmul(x, w):
  return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


def _safe_divide(num, den):
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _gat(layer, A: ShardedSparseArray, x, exchange):
  """``GATConv``'s forward: row-local transforms around one sharded attention aggregation."""
  dtype = jnp.result_type(x.dtype, layer.kernel.dtype)
  n, heads = x.shape[0], layer.num_heads
  z = _matmul(x.astype(dtype), layer.kernel[...].astype(dtype)).reshape(n, heads, -1)
  a_src = jnp.einsum("nhf,hf->nh", z, layer.att_src[...].astype(dtype))
  a_dst = jnp.einsum("nhf,hf->nh", z, layer.att_dst[...].astype(dtype))
  out = attention.gat_aggregate(A, z, a_src, a_dst, negative_slope=layer.negative_slope,
                                add_self_loops=layer.add_self_loops, exchange=exchange)
  out = out.reshape(n, -1) if layer.concat else out.mean(axis=1)
  return out + layer.bias[...].astype(dtype) if layer.use_bias else out


def apply(layer, A: ShardedSparseArray, x, *, exchange: str | None = None,
          deterministic: bool | None = None) -> jax.Array:
  """``layer(A, x)`` for a sharded square adjacency ``A`` and node features ``x``.

  Args:
    layer: a ``jscorch.nn.GCNConv``, ``SAGEConv``, ``GINConv`` or ``GATConv``.
    A: a square :class:`ShardedSparseArray` (edge weights as values).
    x: `[n, in_features]` node features, in node layout (``A.shard_rows(x)``) or global.
    exchange: how neighbour features travel (see :func:`jscorch.distributed.spmm`;
      ``GATConv``: not ``"replicated"``).
    deterministic: ``GATConv`` only: disables attention dropout (default: the
      module's mode); active dropout is not supported with a sharded adjacency.

  Returns:
    `[P * rows.size, out_features]` in node layout.

  Raises:
    SparseShardingError: an unsupported layer, a non-square adjacency.
    ValueError: ``x`` of the wrong feature width.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> from flax import nnx
    >>> from jscorch import distributed as jsd, graph, nn
    >>> mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    >>> conv = nn.GCNConv(4, 2, rngs=nnx.Rngs(0))
    >>> A = jsd.shard(adj, mesh, axis="x")
    >>> jsd.apply(conv, A, A.shard_rows(jnp.ones((3, 4)))).shape   # node layout
    (3, 2)
  """
  from jscorch import nn   # noqa: PLC0415 - the layers are optional users of this module
  func = "js.distributed.apply"
  if not isinstance(layer, (nn.GCNConv, nn.SAGEConv, nn.GINConv, nn.GATConv)):
    raise SparseShardingError(f"{func}: supported layers are jscorch.nn.GCNConv, SAGEConv, "
                              f"GINConv and GATConv; got {type(layer).__name__}. Call other "
                              "layers with the unsharded adjacency (A.unshard()).")
  if isinstance(layer, nn.GATConv) and layer.dropout.rate > 0 and not (
      layer.dropout.deterministic if deterministic is None else deterministic):
    raise SparseShardingError(
        f"{func}: GATConv's attention dropout is not supported with a sharded adjacency; got "
        f"dropout rate {layer.dropout.rate} in training mode, expected it inactive. Pass "
        "deterministic=True (or call model.eval()), or build the layer with dropout=0.")
  products._check_matrix(A, func)
  lay = A.layout
  if lay.rows != lay.cols:
    raise SparseShardingError(f"{func}: expected a square adjacency; got shape {lay.shape}.")
  x = products._check_operand(x, func, "x")
  if x.ndim != 2 or x.shape[1] != layer.in_features:
    raise ValueError(f"{func}: x must be [num_nodes, in_features={layer.in_features}]; got "
                     f"x.shape={tuple(x.shape)}.")
  x = products._operand(A, x, lay.rows, "allgather", func, "x")
  mask = A.row_mask()[:, None]
  if isinstance(layer, nn.GCNConv):
    dtype = jnp.result_type(x.dtype, layer.kernel.dtype, A.dtype)
    h = _matmul(x.astype(dtype), layer.kernel[...].astype(dtype))
    out = products.gcn_aggregate(A.astype(dtype), h, exchange=exchange,
                                 add_self_loops=layer.add_self_loops,
                                 normalize=layer.normalize)
    if layer.use_bias:
      out = out + layer.bias[...].astype(dtype)
  elif isinstance(layer, nn.GATConv):
    out = _gat(layer, A, x, exchange)
  elif isinstance(layer, nn.SAGEConv):
    dtype = jnp.result_type(x.dtype, layer.kernel.dtype, A.dtype)
    A = A.astype(dtype)
    x = x.astype(dtype)
    h = _matmul(x, layer.kernel[...].astype(dtype))
    stored = products.row_sum(A.with_data(jnp.ones_like(A.data)))
    out = _safe_divide(products.spmm(A, h, exchange=exchange), stored[:, None])
    if layer.root_weight:
      out = out + _matmul(x, layer.root_kernel[...].astype(dtype))
    if layer.use_bias:
      out = out + layer.bias[...].astype(dtype)
    if layer.normalize:             # (padding rows are 0: keep their gradient finite)
      sq = jnp.sum(out * out, axis=-1, keepdims=True)
      out = _safe_divide(out, jnp.sqrt(jnp.where(sq > 0, sq, 1)) * (sq > 0))
  else:
    dtype = jnp.result_type(x.dtype, layer.linear1.kernel.dtype, A.dtype)
    A = A.astype(dtype)
    h = _matmul(x.astype(dtype), layer.linear1.kernel[...].astype(dtype))
    eps = layer.eps[...].astype(dtype) if layer.train_eps else layer.eps
    h = (1 + eps) * h + products.spmm(A, h, exchange=exchange) + \
        layer.linear1.bias[...].astype(dtype)
    h = jax.nn.relu(h)
    out = _matmul(h, layer.linear2.kernel[...].astype(dtype)) + \
        layer.linear2.bias[...].astype(dtype)
  return jnp.where(mask, out, jnp.zeros((), out.dtype))
