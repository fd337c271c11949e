"""Graph convolutions on a sparse adjacency: ``GCNConv``, ``SAGEConv`` and ``GINConv``.

Every layer is called as ``layer(adj, x)``: ``adj`` is a square `[n, n]`
:class:`~jscorch.SparseArray` whose stored values are edge weights, ``x`` the node
features `[n, in_features]`, dense or sparse. Node ``i`` aggregates over row ``i``
of ``adj`` (``sum_j adj[i, j] * x[j]``, see :mod:`jscorch.graph`). The
aggregation is a sparse einsum ``"ij,jf->if"``; the dense transform is applied
first (``x @ kernel``, itself a sparse einsum when ``x`` is sparse), so neither
``adj`` nor ``x`` is ever densified. Layers cache nothing between calls: they work
under ``jit``, ``vmap`` (over ``x``, or over ``adj`` and ``x`` together) and
``grad`` (w.r.t. the parameters, ``x`` and the edge weights).

Each layer has one forward: dense transforms around calls to
``aggregation(adj)`` (:mod:`jscorch.nn.aggregation`), its only adjacency-specific
code. So ``adj`` may also be a :class:`~jscorch.distributed.ShardedSparseArray`
(:func:`jscorch.distributed.shard`): the same forward, with the same parameters,
then runs data-parallel over the graph's rows on the array's mesh, with ``x`` and the
output in node layout (``adj.shard_rows(x)``; padding rows of the output are 0).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jscorch import graph
from jscorch.nn import _util
from jscorch.nn.aggregation import aggregation

glorot_init = nnx.initializers.glorot_uniform()
lecun_init = nnx.initializers.lecun_normal()
zeros_init = nnx.initializers.zeros_init()


def _init_features(layer: nnx.Module, name: str, in_features, out_features, rngs) -> nnx.Rngs:
  """Checks the arguments every layer here shares, sets the widths, returns ``rngs``."""
  rngs = _util.require_rngs(rngs, name)
  layer.in_features = _util.check_positive(in_features, "in_features", name)
  layer.out_features = _util.check_positive(out_features, "out_features", name)
  return rngs


class GCNConv(nnx.Module):
  """Graph convolution of Kipf & Welling: ``out = D^-1/2 (A + I) D^-1/2 x W + b``.

  PyG's convention: by default the layer adds the missing self loops (weight 1,
  :func:`jscorch.graph.add_remaining_self_loops`) and normalises symmetrically by
  the weighted degrees (:func:`jscorch.graph.gcn_norm`) on every call; nothing is
  cached. To compute the normalisation once for many calls (and for every layer of a
  model), pass ``nn.gcn_adjacency(adj)`` instead of ``adj`` (PyG's ``cached=True``;
  :class:`~jscorch.nn.aggregation.GCNAdjacency`), or an already normalised adjacency
  with ``normalize=False, add_self_loops=False``.

  ``x`` may be dense `[n, in_features]` **or a SparseArray** (any 2-D format,
  e.g. bag-of-words features in CSR). Sparse features are never densified:
  ``x @ kernel`` is a sparse einsum over the stored entries, and so is the
  gradient w.r.t. ``kernel``. Keep mostly-zero features sparse: the work scales
  with their stored entries instead of ``n * in_features`` (on Cora's features,
  1.3 % non-zero, a jitted forward + backward step ran several times faster on
  CPU than with the same features densified). Drop out the stored values with
  :class:`SparseDropout` or :func:`jscorch.dropout`.

  Args:
    in_features, out_features: feature widths.
    add_self_loops: add the missing self loops first.
    normalize: apply the symmetric normalisation.
    use_bias: add ``bias`` `[out_features]`.
    kernel_init, bias_init: initialisers (default Glorot uniform and zeros, as PyG).
    param_dtype: parameter dtype.
    rngs: ``nnx.Rngs`` (required).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import graph, nn
    >>> adj = graph.from_edge_index(jnp.array([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=3)
    >>> conv = nn.GCNConv(4, 2, rngs=nnx.Rngs(0))
    >>> conv.kernel.shape, conv.bias.shape
    ((4, 2), (2,))
    >>> conv(adj, jnp.ones((3, 4))).shape
    (3, 2)
    >>> import jscorch as js                  # sparse features: same result, no densifying
    >>> x = js.from_dense(jnp.eye(3, 4), format="csr")
    >>> bool(jnp.allclose(conv(adj, x), conv(adj, x.todense())))
    True
  """

  def __init__(self, in_features: int, out_features: int, *, add_self_loops: bool = True,
               normalize: bool = True, use_bias: bool = True, kernel_init=glorot_init,
               bias_init=zeros_init, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    rngs = _init_features(self, "GCNConv", in_features, out_features, rngs)
    self.add_self_loops = add_self_loops
    self.normalize = normalize
    self.use_bias = use_bias
    kernel, bias = _util.draw(rngs, (kernel_init, (in_features, out_features), param_dtype),
                              (bias_init, (out_features,), param_dtype) if use_bias else None)
    self.kernel = nnx.Param(kernel)
    self.bias = nnx.Param(bias) if use_bias else nnx.data(None)

  def propagation_matrix(self, adj):
    """The matrix the layer multiplies with, as a SparseArray (for inspection).

    ``gcn_norm(adj)`` by default. The forward computes the same product without
    building it: ``dinv * (adj @ (dinv * h)) + loops * dinv**2 * h``, where
    ``loops`` are the added self-loop weights, so no new sparse pattern is formed.
    """
    if self.normalize:
      return graph.gcn_norm(adj, add_self_loops=self.add_self_loops)
    if self.add_self_loops:
      return graph.add_remaining_self_loops(adj)
    return adj

  def __call__(self, adj, x) -> jax.Array:
    """``adj`` `[n, n]` SparseArray, ``x`` `[n, in_features]` → `[n, out_features]`.

    A sharded ``adj`` (:func:`jscorch.distributed.shard`) runs data-parallel over its
    rows: ``x`` and the result in node layout (``adj.shard_rows(x)``)."""
    agg = aggregation(adj)
    x = agg.features(x, self.in_features, "GCNConv")
    bias = self.bias[...] if self.use_bias else None
    return _gcn(agg, x, self.kernel[...], bias, self.add_self_loops, self.normalize)


# Each forward is one jitted function of arrays and static options: an eager call
# compiles once per shape (instead of once per operation); under an outer jit, grad
# or vmap it is inlined like any other function.
@functools.partial(jax.jit, static_argnums=(4, 5))
def _gcn(agg, x, kernel, bias, add_self_loops, normalize):
  dtype = _util.compute_dtype(x, kernel, agg)
  agg = agg.astype(dtype)
  h = _util.matmul(_util.as_dtype(x, dtype), kernel.astype(dtype))
  out = agg.gcn_aggregate(h, add_self_loops=add_self_loops, normalize=normalize)
  return agg.output(out if bias is None else out + bias.astype(dtype))


class SAGEConv(nnx.Module):
  """GraphSAGE with mean aggregation: ``out_i = mean_j(adj_ij x_j) W + x_i W_root + b``.

  The mean divides by the number of stored entries of row ``i`` (nodes without
  neighbours aggregate 0); for a binary adjacency this is PyG's
  ``SAGEConv(aggr="mean")``. ``kernel`` transforms the neighbours (PyG's
  ``lin_l``), ``root_kernel`` the node itself (``lin_r``).

  Args:
    in_features, out_features: feature widths.
    root_weight: add the ``x_i W_root`` term.
    use_bias: add ``bias`` `[out_features]`.
    normalize: L2-normalise each output row.
    kernel_init, bias_init, param_dtype: as for ``nnx.Linear``.
    rngs: ``nnx.Rngs`` (required).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import graph, nn
    >>> adj = graph.from_edge_index(jnp.array([[0, 1], [1, 0]]), num_nodes=3)
    >>> conv = nn.SAGEConv(4, 2, rngs=nnx.Rngs(0))
    >>> conv.kernel.shape, conv.root_kernel.shape, conv.bias.shape
    ((4, 2), (4, 2), (2,))
    >>> conv(adj, jnp.ones((3, 4))).shape
    (3, 2)
  """

  def __init__(self, in_features: int, out_features: int, *, root_weight: bool = True,
               use_bias: bool = True, normalize: bool = False, kernel_init=lecun_init,
               bias_init=zeros_init, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    rngs = _init_features(self, "SAGEConv", in_features, out_features, rngs)
    self.root_weight = root_weight
    self.use_bias = use_bias
    self.normalize = normalize
    shape = (in_features, out_features)
    kernel, root, bias = _util.draw(
        rngs, (kernel_init, shape, param_dtype),
        (kernel_init, shape, param_dtype) if root_weight else None,
        (bias_init, (out_features,), param_dtype) if use_bias else None)
    self.kernel = nnx.Param(kernel)
    self.root_kernel = nnx.Param(root) if root_weight else nnx.data(None)
    self.bias = nnx.Param(bias) if use_bias else nnx.data(None)

  def __call__(self, adj, x) -> jax.Array:
    """``adj`` `[n, n]` SparseArray, ``x`` `[n, in_features]` → `[n, out_features]`.

    A sharded ``adj`` (:func:`jscorch.distributed.shard`) runs data-parallel over its
    rows: ``x`` and the result in node layout (``adj.shard_rows(x)``)."""
    agg = aggregation(adj)
    x = agg.features(x, self.in_features, "SAGEConv")
    root = self.root_kernel[...] if self.root_weight else None
    bias = self.bias[...] if self.use_bias else None
    return _sage(agg, x, self.kernel[...], root, bias, self.normalize)


@functools.partial(jax.jit, static_argnums=(5,))
def _sage(agg, x, kernel, root_kernel, bias, normalize):
  dtype = _util.compute_dtype(x, kernel, agg)
  agg = agg.astype(dtype)
  x = _util.as_dtype(x, dtype)
  h = _util.matmul(x, kernel.astype(dtype))
  out = _util.safe_divide(agg.spmm(h), agg.degree()[:, None])   # empty neighbourhood: 0
  if root_kernel is not None:
    out = out + _util.matmul(x, root_kernel.astype(dtype))
  if bias is not None:
    out = out + bias.astype(dtype)
  if normalize:                     # a zero row stays 0, with a finite (zero) gradient
    sq = jnp.sum(out * out, axis=-1, keepdims=True)
    out = _util.safe_divide(out, jnp.sqrt(jnp.where(sq > 0, sq, 1)) * (sq > 0))
  return agg.output(out)


class GINConv(nnx.Module):
  """Graph isomorphism network layer: ``out = MLP((1 + eps) x_i + sum_j adj_ij x_j)``.

  The MLP is ``linear2(relu(linear1(.)))`` with two ``nnx.Linear`` submodules
  (``in -> hidden -> out``). Because ``linear1`` is linear, the layer computes
  ``(1 + eps) h + adj @ h`` with ``h = x @ linear1.kernel``: exact, cheaper, and a
  sparse ``x`` is never densified.

  Args:
    in_features, out_features: feature widths.
    hidden_features: width of the MLP's hidden layer (default ``out_features``).
    eps: the initial ``eps``.
    train_eps: make ``eps`` a trainable ``nnx.Param`` (else a constant).
    param_dtype: parameter dtype.
    rngs: ``nnx.Rngs`` (required).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jscorch import graph, nn
    >>> adj = graph.from_edge_index(jnp.array([[0, 1], [1, 0]]), num_nodes=3)
    >>> conv = nn.GINConv(4, 2, hidden_features=8, train_eps=True, rngs=nnx.Rngs(0))
    >>> conv.linear1.kernel.shape, conv.linear2.kernel.shape, conv.eps.shape
    ((4, 8), (8, 2), ())
    >>> conv(adj, jnp.ones((3, 4))).shape
    (3, 2)
  """

  def __init__(self, in_features: int, out_features: int, *, hidden_features: int | None = None,
               eps: float = 0.0, train_eps: bool = False, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    rngs = _init_features(self, "GINConv", in_features, out_features, rngs)
    hidden = out_features if hidden_features is None else hidden_features
    self.hidden_features = _util.check_positive(hidden, "hidden_features", "GINConv")
    self.train_eps = train_eps
    self.linear1 = nnx.Linear(in_features, hidden, param_dtype=param_dtype, rngs=rngs)
    self.linear2 = nnx.Linear(hidden, out_features, param_dtype=param_dtype, rngs=rngs)
    self.eps = nnx.Param(jnp.asarray(eps, param_dtype)) if train_eps else float(eps)

  def __call__(self, adj, x) -> jax.Array:
    """``adj`` `[n, n]` SparseArray, ``x`` `[n, in_features]` → `[n, out_features]`.

    A sharded ``adj`` (:func:`jscorch.distributed.shard`) runs data-parallel over its
    rows: ``x`` and the result in node layout (``adj.shard_rows(x)``)."""
    agg = aggregation(adj)
    x = agg.features(x, self.in_features, "GINConv")
    eps = self.eps[...] if self.train_eps else jnp.asarray(self.eps)
    l1, l2 = self.linear1, self.linear2
    return _gin(agg, x, eps, l1.kernel[...], l1.bias[...], l2.kernel[...], l2.bias[...])


@jax.jit
def _gin(agg, x, eps, kernel1, bias1, kernel2, bias2):
  dtype = _util.compute_dtype(x, kernel1, agg)
  agg = agg.astype(dtype)
  h = _util.matmul(_util.as_dtype(x, dtype), kernel1.astype(dtype))
  h = (1 + eps.astype(dtype)) * h + agg.spmm(h) + bias1.astype(dtype)
  h = jax.nn.relu(h)
  return agg.output(jnp.matmul(h, kernel2.astype(dtype), precision=jax.lax.Precision.HIGHEST)
                    + bias2.astype(dtype))
