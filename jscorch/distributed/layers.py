"""The graph layers' aggregation on a sharded adjacency, and ``apply(layer, A, x)``.

:class:`ShardedAggregation` implements :mod:`jscorch.nn.aggregation`'s protocol for
a square :class:`ShardedSparseArray` with the ``shard_map`` products of this package
(:func:`~jscorch.distributed.spmm`, :func:`~jscorch.distributed.row_sum`,
:func:`~jscorch.distributed.gcn_aggregate`,
:func:`~jscorch.distributed.gat_aggregate`), and is registered for that type at
import, so ``GCNConv``, ``SAGEConv``, ``GINConv`` and ``GATConv`` run their one
forward on either adjacency: the dense transforms are row-local on each device, the
aggregation communicates as the chosen ``exchange``. Inputs and outputs are
node-feature arrays in node layout (``A.shard_rows(x)``); padding rows of the output
are 0. This module does not import :mod:`jscorch.nn`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jscorch import _graph_util
from jscorch.distributed import attention, products
from jscorch.distributed._errors import SparseShardingError
from jscorch.distributed.sharded import ShardedSparseArray

_LAYERS = ("GCNConv", "SAGEConv", "GINConv", "GATConv")


@jax.tree_util.register_pytree_node_class
class ShardedAggregation:
  """The graph layers' aggregation over a square sharded adjacency ``A``.

  Args:
    A: a square :class:`ShardedSparseArray` (edge weights as values).
    exchange: how neighbour features travel (see :func:`jscorch.distributed.spmm`;
      default: the product's default for node-layout features).

  Node arrays are in node layout, `[P * rows.size, ...]`.
  """

  def __init__(self, A: ShardedSparseArray, exchange: str | None = None):
    self.adj = A
    self.exchange = exchange

  def tree_flatten(self):
    return (self.adj,), self.exchange

  @classmethod
  def tree_unflatten(cls, exchange, children):
    return cls(*children, exchange=exchange)

  @property
  def dtype(self):
    return self.adj.dtype

  def astype(self, dtype) -> ShardedAggregation:
    if self.adj.dtype == dtype:
      return self
    return ShardedAggregation(self.adj.astype(dtype), self.exchange)

  def features(self, x, in_features: int, func: str):
    """Checks ``x`` `[num_nodes, in_features]` (global or node layout); returns node layout."""
    A = self.adj
    products._check_matrix(A, func)
    lay = A.layout
    if lay.rows != lay.cols:
      raise SparseShardingError(f"{func}: expected a square adjacency; got shape {lay.shape}.")
    x = products._check_operand(x, func, "x")
    if x.ndim != 2 or x.shape[1] != in_features:
      raise ValueError(f"{func}: x must be [num_nodes, in_features={in_features}]; got "
                       f"x.shape={tuple(x.shape)}.")
    return products._operand(A, x, lay.rows, "allgather", func, "x")

  def output(self, out):
    return jnp.where(self.adj.row_mask()[:, None], out, jnp.zeros((), out.dtype))

  def spmm(self, h):
    return products.spmm(self.adj, h, exchange=self.exchange)

  def degree(self, weighted: bool = False):
    A = self.adj
    return products.row_sum(A if weighted else A.with_data(jnp.ones_like(A.data)))

  def gcn_aggregate(self, h, *, add_self_loops: bool, normalize: bool):
    return products.gcn_aggregate(self.adj, h, exchange=self.exchange,
                                  add_self_loops=add_self_loops, normalize=normalize)

  def gat_aggregate(self, z, a_src, a_dst, *, negative_slope: float, add_self_loops: bool,
                    dropout=None, weights: bool = False, func: str = "gat_aggregate"):
    if weights:
      raise SparseShardingError(
          f"{func}: the attention weights of a sharded adjacency are not available; got a "
          "ShardedSparseArray, expected a SparseArray. Call the layer itself (gat(adj, x) "
          "runs sharded), or pass adj.unshard() to inspect the weights.")
    if dropout is not None:
      raise SparseShardingError(
          f"{func}: attention dropout is not supported with a sharded adjacency; got "
          f"dropout rate {dropout[0]} in training mode, expected it inactive. Pass "
          "deterministic=True (or call model.eval()), or build the layer with dropout=0.")
    return attention.gat_aggregate(self.adj, z, a_src, a_dst, negative_slope=negative_slope,
                                   add_self_loops=add_self_loops, exchange=self.exchange)


_graph_util.register_aggregation(ShardedSparseArray, ShardedAggregation)


def apply(layer, A: ShardedSparseArray, x, *, exchange: str | None = None,
          deterministic: bool | None = None) -> jax.Array:
  """``layer(A, x)`` for a sharded square adjacency ``A``, with a chosen ``exchange``.

  The layers take a sharded adjacency themselves (``conv(A, x)`` is ``apply(conv, A,
  x)``); this alias only adds the ``exchange`` option: it calls the layer with
  ``ShardedAggregation(A, exchange)``.

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
    >>> jsd.apply(conv, A, A.shard_rows(jnp.ones((3, 4))), exchange="allgather").shape
    (3, 2)
  """
  name = type(layer).__name__
  if name not in _LAYERS or not type(layer).__module__.startswith("jscorch.nn"):
    raise SparseShardingError(f"js.distributed.apply: supported layers are jscorch.nn.GCNConv, "
                              f"SAGEConv, GINConv and GATConv; got {name}. Call other layers "
                              "with the unsharded adjacency (A.unshard()).")
  options = {} if deterministic is None or name != "GATConv" else \
      {"deterministic": deterministic}
  return layer(ShardedAggregation(A, exchange), x, **options)
