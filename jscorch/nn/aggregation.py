"""The aggregation protocol of the graph layers, and its implementation for a SparseArray.

A graph layer (``GCNConv``, ``SAGEConv``, ``GINConv``, ``GATConv``) has **one**
forward: dense, row-local transforms around calls to ``aggregation(adj)``, the only
adjacency-specific code. :class:`Aggregation` lists what the layers need:

* ``features(x, in_features, func)`` / ``output(out)``: validate and place the
  node features, and finish a layer's output (a sharded adjacency zeroes its
  padding rows);
* ``spmm(h)``: ``sum_j adj_ij h_j``;
* ``degree(weighted=False)``: the stored coordinates (or, weighted, the value
  sum) of each row;
* ``gcn_aggregate(h, ...)``: ``D^-1/2 (A + I) D^-1/2 h`` without forming ``A + I``;
* ``gat_aggregate(z, a_src, a_dst, ...)``: a softmax over each row's edges of
  ``LeakyReLU(a_dst_i + a_src_j)`` per head, and the weighted sum of ``z_j``.

:class:`SparseAggregation` implements it for a :class:`~jscorch.SparseArray` with
``js.einsum``; :mod:`jscorch.distributed` implements it for a
:class:`~jscorch.distributed.ShardedSparseArray` with its ``shard_map`` products and
registers it (:func:`jscorch._graph_util.register_aggregation`), so this package
never imports ``jscorch.distributed``. :func:`aggregation` picks the
implementation from the adjacency's type.

Example:
  >>> import jax.numpy as jnp
  >>> from jscorch import graph
  >>> from jscorch.nn.aggregation import aggregation
  >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1], [1, 0, 2]]), num_nodes=3)
  >>> agg = aggregation(adj)
  >>> agg.degree()
  Array([1., 2., 0.], dtype=float32)
  >>> agg.spmm(jnp.array([[1.], [2.], [4.]]))[:, 0]
  Array([2., 5., 0.], dtype=float32)
"""
from __future__ import annotations

import functools
from typing import Protocol

import jax
import jax.numpy as jnp

import jscorch as js
from jscorch import _graph_util, graph
from jscorch.einsum import einsum
from jscorch.graph import check_adjacency
from jscorch.nn import _util
from jscorch.ops.coalesce import coalesced


class Aggregation(Protocol):
  """What the graph layers call on an adjacency (see the module docstring).

  An implementation is a pytree (it is an argument of the layers' jitted forwards)
  with a ``dtype`` and ``astype(dtype)`` for its edge weights. Node arrays are
  `[N, ...]` with ``N`` the implementation's node count (``num_nodes`` for a
  SparseArray, the padded node layout for a sharded one).
  """

  @property
  def dtype(self): ...

  def astype(self, dtype) -> Aggregation: ...

  def features(self, x, in_features: int, func: str):
    """Checks node features `[num_nodes, in_features]` and returns them as `[N, in_features]`."""

  def output(self, out: jax.Array) -> jax.Array:
    """A layer's result `[N, F]` as returned to the caller."""

  def spmm(self, h: jax.Array) -> jax.Array:
    """`[N, F]`: ``sum_j adj_ij h_j``."""

  def degree(self, weighted: bool = False) -> jax.Array:
    """`[N]`: stored coordinates per row (``weighted``: their value sum)."""

  def gcn_aggregate(self, h: jax.Array, *, add_self_loops: bool,
                    normalize: bool) -> jax.Array:
    """`[N, F]`: GCN propagation; missing self loops get weight 1."""

  def gat_aggregate(self, z: jax.Array, a_src: jax.Array, a_dst: jax.Array, *,
                    negative_slope: float, add_self_loops: bool, dropout=None,
                    weights: bool = False, func: str = "gat_aggregate"):
    """`[N, heads, F]`: attention-weighted sum; ``(out, alpha)`` when ``weights``."""


@jax.tree_util.register_pytree_node_class
class SparseAggregation:
  """:class:`Aggregation` of a square SparseArray ``adj`` (values: edge weights), by ``js.einsum``.

  Row ``i`` aggregates over its stored coordinates; padding entries are ignored and
  repeated coordinates (non-unique formats) are one edge, as in the coalesced array:
  ``degree`` counts them once, the products sum their values, attention scores them
  once (the same as a sharded adjacency, which is coalesced when it is built).
  """

  def __init__(self, adj):
    self.adj = adj

  def tree_flatten(self):
    return (self.adj,), None

  @classmethod
  def tree_unflatten(cls, _, children):
    return cls(*children)

  @property
  def dtype(self):
    return self.adj.dtype

  def astype(self, dtype) -> SparseAggregation:
    return self if self.adj.dtype == dtype else SparseAggregation(self.adj.astype(dtype))

  def features(self, x, in_features: int, func: str):
    _util.check_graph_inputs(self.adj, x, in_features, func)
    return x

  def output(self, out):
    return out

  def spmm(self, h):
    return einsum("ij,jf->if", self.adj, h)

  def degree(self, weighted: bool = False):
    return graph.degree(self.adj, weighted=weighted)

  def gcn_aggregate(self, h, *, add_self_loops: bool, normalize: bool):
    # dinv * (A @ (dinv * h)) + loops * dinv**2 * h: no new sparse pattern is formed
    adj = self.adj
    if add_self_loops:
      loops = _graph_util.missing_loops(adj, 1.0)
    else:
      loops = jnp.zeros(adj.shape[0], adj.dtype)
    if not normalize:
      return self.spmm(h) + loops[:, None] * h
    dinv = _graph_util.inv_sqrt(self.degree(weighted=True) + loops)[:, None]
    return dinv * self.spmm(dinv * h) + (loops[:, None] * dinv * dinv) * h

  def gat_aggregate(self, z, a_src, a_dst, *, negative_slope: float, add_self_loops: bool,
                    dropout=None, weights: bool = False, func: str = "gat_aggregate"):
    """Also ``dropout``: ``(rate, key)`` drops out the attention weights (inverted dropout)."""
    del func                          # every option is supported here
    heads = z.shape[1]
    a = graph.add_remaining_self_loops(self.adj) if add_self_loops else self.adj
    a = coalesced(a)      # one score per edge: repeats of a non-unique adjacency merged
    ones = jnp.ones_like(a_src)
    left = jnp.stack([a_dst, ones], -1)       # [n, h, 2]:  e_ij = left_i . right_j
    right = jnp.stack([ones, a_src], -1)
    pattern = _util.with_block(a, jnp.ones((a.nse, heads), z.dtype))
    scores = einsum("ijh,ihk,jhk->ijh", pattern, left, right)
    scores = scores.with_data(jax.nn.leaky_relu(scores.data, negative_slope))
    alpha = js.softmax(scores, axis=1)
    dropped = alpha if dropout is None else alpha.with_data(dropout_values(alpha.data, *dropout))
    out = einsum("ijh,jhf->ihf", dropped, z)
    return (out, alpha) if weights else out


@jax.tree_util.register_pytree_node_class
class GCNAdjacency(SparseAggregation):
  """A SparseArray adjacency with its GCN normalisation computed once (PyG's ``cached=True``).

  Build it with :func:`gcn_adjacency` and pass it wherever an adjacency goes. Every
  ``GCNConv`` (default options, or the ``add_self_loops`` it was built with) then
  multiplies by the stored ``D^-1/2 A D^-1/2`` and adds the self-loop term, instead of
  recomputing degrees and missing loops from the edges on each call: one SpMM per
  layer, as with an adjacency normalised by hand. Other layers and options use ``adj``
  as usual. It is a pytree of arrays: built inside a differentiated function, the
  gradient w.r.t. the edge weights flows through the cached normalisation too; built
  outside, the normalisation is a constant of that function.

  For a CSR adjacency the normalised matrix is also kept column-major
  (``normalized_csc``, the same values permuted), so the backward pass of each layer's
  product, ``normalized^T g``, runs row by row over it instead of re-sorting the
  pattern on every call (:func:`jscorch.nn._util.dual_product`); this doubles the adjacency's
  memory.

  Attributes:
    adj: the adjacency `[n, n]`.
    normalized: ``adj``'s pattern with values ``dinv_i a_ij dinv_j``, where ``dinv =
      (weighted degree + loops) ** -1/2`` (0 for isolated nodes).
    self_weight: `[n]` ``loops * dinv ** 2``, the added self loop's normalised weight.
    normalized_csc: ``normalized`` in CSC when ``adj`` is CSR, else None.
    add_self_loops: whether missing self loops (weight 1) were added (static).
  """

  def __init__(self, adj, normalized, self_weight, normalized_csc, add_self_loops: bool):
    super().__init__(adj)
    self.normalized, self.self_weight = normalized, self_weight
    self.normalized_csc = normalized_csc
    self.add_self_loops = add_self_loops

  def tree_flatten(self):
    return ((self.adj, self.normalized, self.self_weight, self.normalized_csc),
            self.add_self_loops)

  @classmethod
  def tree_unflatten(cls, add_self_loops, children):
    return cls(*children, add_self_loops)

  def astype(self, dtype) -> GCNAdjacency:
    if self.adj.dtype == dtype:
      return self
    csc = None if self.normalized_csc is None else self.normalized_csc.astype(dtype)
    return GCNAdjacency(self.adj.astype(dtype), self.normalized.astype(dtype),
                        self.self_weight.astype(dtype), csc, self.add_self_loops)

  def gcn_aggregate(self, h, *, add_self_loops: bool, normalize: bool):
    if not normalize or add_self_loops != self.add_self_loops:
      return super().gcn_aggregate(h, add_self_loops=add_self_loops, normalize=normalize)
    if self.normalized_csc is None:
      product = einsum("ij,jf->if", self.normalized, h)
    else:
      product = _util.dual_product("ij,jf->if", False, self.normalized, self.normalized_csc, h)
    return product + self.self_weight[:, None] * h

  def __repr__(self):
    return f"GCNAdjacency({self.adj!r}, add_self_loops={self.add_self_loops})"


def gcn_adjacency(adj, *, add_self_loops: bool = True) -> GCNAdjacency:
  """``adj`` with its GCN normalisation cached (see :class:`GCNAdjacency`).

  Args:
    adj: a square SparseArray (edge weights as values).
    add_self_loops: add weight-1 self loops to the nodes without one, as ``GCNConv``
      does by default.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import graph, nn
    >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    >>> cached = nn.gcn_adjacency(adj)
    >>> conv = nn.GCNConv(4, 2, rngs=nnx.Rngs(0))
    >>> bool(jnp.allclose(conv(cached, jnp.ones((3, 4))), conv(adj, jnp.ones((3, 4)))))
    True
  """
  check_adjacency(adj, "gcn_adjacency")
  return _gcn_adjacency(adj, add_self_loops)


@functools.partial(jax.jit, static_argnums=(1,))
def _gcn_adjacency(adj, add_self_loops: bool) -> GCNAdjacency:
  if add_self_loops:
    loops = _graph_util.missing_loops(adj, 1.0)
  else:
    loops = jnp.zeros(adj.shape[0], adj.dtype)
  dinv = _graph_util.inv_sqrt(graph.degree(adj, weighted=True) + loops)
  # dinv_i a_ij dinv_j at the stored entries: a sampled product, no new pattern
  normalized = einsum("ij,i,j->ij", adj, dinv, dinv)
  csc = normalized.asformat("csc") if adj.format == js.CSR else None
  return GCNAdjacency(adj, normalized, loops * dinv * dinv, csc, add_self_loops)


@jax.tree_util.register_pytree_node_class
class GATAdjacency(SparseAggregation):
  """A SparseArray adjacency with GAT's self loops added once.

  ``GATConv`` (with ``add_self_loops=True``, its default) attends over ``adj`` plus a
  self loop for every node without one. On a plain adjacency that union is formed on
  every call; given a :class:`GATAdjacency` (built with :func:`gat_adjacency`) the layer
  attends over the stored ``looped`` pattern instead. Other layers and options use
  ``adj``. GAT does not read edge weights, so nothing is differentiated through it.

  Attributes:
    adj: the adjacency `[n, n]`.
    looped: ``graph.add_remaining_self_loops(adj)``.
  """

  def __init__(self, adj, looped):
    super().__init__(adj)
    self.looped = looped

  def tree_flatten(self):
    return (self.adj, self.looped), None

  @classmethod
  def tree_unflatten(cls, _, children):
    return cls(*children)

  def astype(self, dtype) -> GATAdjacency:
    if self.adj.dtype == dtype:
      return self
    return GATAdjacency(self.adj.astype(dtype), self.looped.astype(dtype))

  def gat_aggregate(self, z, a_src, a_dst, *, negative_slope: float, add_self_loops: bool,
                    dropout=None, weights: bool = False, func: str = "gat_aggregate"):
    adj = self.looped if add_self_loops else self.adj
    return SparseAggregation(adj).gat_aggregate(
        z, a_src, a_dst, negative_slope=negative_slope, add_self_loops=False,
        dropout=dropout, weights=weights, func=func)

  def __repr__(self):
    return f"GATAdjacency({self.adj!r})"


def gat_adjacency(adj) -> GATAdjacency:
  """``adj`` with GAT's self loops added once (see :class:`GATAdjacency`).

  Args:
    adj: a square SparseArray.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import graph, nn
    >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    >>> conv = nn.GATConv(4, 2, rngs=nnx.Rngs(0))
    >>> x = jnp.arange(12.).reshape(3, 4)
    >>> bool(jnp.allclose(conv(nn.gat_adjacency(adj), x), conv(adj, x)))
    True
  """
  check_adjacency(adj, "gat_adjacency")
  return GATAdjacency(adj, _looped(adj))


@jax.jit
def _looped(adj):
  return graph.add_remaining_self_loops(adj)


def dropout_values(values, rate: float, key):
  """Inverted dropout, as ``nnx.Dropout``: keep with probability ``1 - rate``, scale up."""
  if rate >= 1.0:
    return jnp.zeros_like(values)
  keep = jax.random.bernoulli(key, 1.0 - rate, values.shape)
  return jnp.where(keep, values / (1.0 - rate), jnp.zeros((), values.dtype))


def aggregation(adj) -> Aggregation:
  """The :class:`Aggregation` of an adjacency, chosen by its type.

  Args:
    adj: a SparseArray, an adjacency type registered by another package (a
      :class:`~jscorch.distributed.ShardedSparseArray`), or an aggregation already
      (returned unchanged, e.g. ``jscorch.distributed.layers.ShardedAggregation(A,
      exchange=...)`` for another exchange than the default).

  Returns:
    The registered implementation for ``type(adj)``, else :class:`SparseAggregation`
    (whose ``features`` reports an adjacency that is not a square SparseArray).

  Example:
    >>> import jscorch as js
    >>> from jscorch.nn.aggregation import aggregation
    >>> type(aggregation(js.eye(2))).__name__
    'SparseAggregation'
  """
  if isinstance(adj, SparseAggregation) or _graph_util.is_registered_aggregation(adj):
    return adj
  factory = _graph_util.find_aggregation(adj)
  return SparseAggregation(adj) if factory is None else factory(adj)
