"""GCN, GAT and GraphSAGE written in plain JAX, over three aggregations.

These are the JAX peers of the model benchmark and, evaluated in float64 over the edge
list, its reference (no jscorch code is involved):

* :class:`EdgeList` — gathers and ``segment_sum`` over the edges, the form jraph and
  hand-written JAX GNNs use;
* :class:`DenseAdjacency` — dense `[n, n]` matrices (only where they fit in memory);
* :class:`BcooAdjacency` — ``jax.experimental.sparse.BCOO`` products (no sparse softmax
  there, so no GAT).

Parameters are a dict of numpy/JAX arrays with the names of :data:`PARAMS`; every layer
computes what the PyG layer of the same name computes (GCN: symmetric normalisation with
self loops; GAT: self loops, LeakyReLU 0.2, heads concatenated; SAGE: mean aggregation,
root weight), without dropout, so all contenders compute the same numbers.

Example:
  >>> import numpy as np
  >>> from jscorch.bench import graphs
  >>> g = graphs.sbm(200, features=8, classes=3)
  >>> p = init_params("gcn", 8, 4, 3, seed=0)
  >>> logits = forward("gcn", p, EdgeList.build(g), g.x)
  >>> logits.shape
  (200, 3)
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

#: The parameter names of each model, in the order gradients are compared.
PARAMS = {
    "gcn": ("W1", "b1", "W2", "b2"),
    "sage": ("W1", "R1", "b1", "W2", "R2", "b2"),
    "gat": ("W1", "as1", "ad1", "b1", "W2", "as2", "ad2", "b2"),
}
GAT_HEADS = 8
NEGATIVE_SLOPE = 0.2


def init_params(model: str, features: int, hidden: int, classes: int, seed: int) -> dict:
  """Glorot-scaled float32 parameters; GAT's ``hidden`` is the width per head."""
  rng = np.random.default_rng(seed)

  def glorot(*shape):
    scale = np.sqrt(6 / (shape[0] + shape[-1]))
    return rng.uniform(-scale, scale, shape).astype(np.float32)

  def bias(k):
    return (0.1 * rng.standard_normal(k)).astype(np.float32)

  if model == "gcn":
    return dict(W1=glorot(features, hidden), b1=bias(hidden), W2=glorot(hidden, classes),
                b2=bias(classes))
  if model == "sage":
    return dict(W1=glorot(features, hidden), R1=glorot(features, hidden), b1=bias(hidden),
                W2=glorot(hidden, classes), R2=glorot(hidden, classes), b2=bias(classes))
  h = GAT_HEADS
  return dict(W1=glorot(features, h * hidden), as1=glorot(h, hidden), ad1=glorot(h, hidden),
              b1=bias(h * hidden), W2=glorot(h * hidden, classes), as2=glorot(1, classes),
              ad2=glorot(1, classes), b2=bias(classes))


def _gcn_weights(g):
  """Symmetric normalisation ``d_i^-1/2 d_j^-1/2`` of ``A + I`` over its edges."""
  n = g.num_nodes
  rows = np.concatenate([g.rows, np.arange(n, dtype=np.int32)])
  cols = np.concatenate([g.adj.indices, np.arange(n, dtype=np.int32)])
  deg = np.bincount(rows, minlength=n).astype(np.float64)
  return rows, cols, (deg[rows] * deg[cols]) ** -0.5


@functools.partial(jax.tree_util.register_dataclass, data_fields=(
    "rows", "cols", "loop_rows", "loop_cols", "norm", "inv_degree"), meta_fields=("n",))
@dataclasses.dataclass(frozen=True)
class EdgeList:
  """Aggregation by gathers and ``segment_sum`` over the edge list (GAT and GCN with self
  loops). A pytree: pass it to a jitted function as an argument, not a constant."""
  n: int
  rows: jax.Array
  cols: jax.Array
  loop_rows: jax.Array
  loop_cols: jax.Array
  norm: jax.Array
  inv_degree: jax.Array

  @classmethod
  def build(cls, g, dtype=np.float32) -> EdgeList:
    r, c, w = _gcn_weights(g)
    inv = 1 / np.maximum(np.diff(g.adj.indptr), 1)
    return cls(g.num_nodes, jnp.asarray(g.rows), jnp.asarray(g.adj.indices), jnp.asarray(r),
               jnp.asarray(c), jnp.asarray(w.astype(dtype)), jnp.asarray(inv.astype(dtype)))

  def gcn(self, h):
    msg = self.norm[:, None] * h[self.loop_cols]
    return jax.ops.segment_sum(msg, self.loop_rows, self.n)

  def mean(self, h):
    return jax.ops.segment_sum(h[self.cols], self.rows, self.n) * self.inv_degree[:, None]

  def attention(self, z, a_src, a_dst):
    """``z`` `[n, H, F]`, scores `[n, H]` → softmax-weighted sums `[n, H, F]`."""
    rows, cols = self.loop_rows, self.loop_cols
    e = jax.nn.leaky_relu(a_dst[rows] + a_src[cols], NEGATIVE_SLOPE)
    top = jax.lax.stop_gradient(jax.ops.segment_max(e, rows, self.n))
    ex = jnp.exp(e - top[rows])
    alpha = ex / jax.ops.segment_sum(ex, rows, self.n)[rows]
    return jax.ops.segment_sum(alpha[..., None] * z[cols], rows, self.n)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("norm", "mean_matrix", "mask"), meta_fields=())
@dataclasses.dataclass(frozen=True)
class DenseAdjacency:
  """Aggregation by dense `[n, n]` matrices: ``Â h``, ``D^-1 A h`` and masked attention."""
  norm: jax.Array
  mean_matrix: jax.Array
  mask: jax.Array

  @classmethod
  def build(cls, g, dtype=np.float32) -> DenseAdjacency:
    n = g.num_nodes
    r, c, w = _gcn_weights(g)
    norm = np.zeros((n, n), dtype)
    norm[r, c] = w
    a = np.asarray(g.adj.todense(), dtype)
    return cls(jnp.asarray(norm), jnp.asarray(a / np.maximum(a.sum(1, keepdims=True), 1)),
               jnp.asarray(norm != 0))

  def gcn(self, h):
    return self.norm @ h

  def mean(self, h):
    return self.mean_matrix @ h

  def attention(self, z, a_src, a_dst):
    e = jax.nn.leaky_relu(a_dst[:, None, :] + a_src[None, :, :], NEGATIVE_SLOPE)  # [i, j, H]
    alpha = jax.nn.softmax(jnp.where(self.mask[..., None], e, -jnp.inf), axis=1)
    return jnp.einsum("ijh,jhf->ihf", alpha, z)


@functools.partial(jax.tree_util.register_dataclass, data_fields=("norm", "mean_matrix"),
                   meta_fields=())
@dataclasses.dataclass(frozen=True)
class BcooAdjacency:
  """Aggregation by ``jax.experimental.sparse.BCOO`` matrix products."""
  norm: jsparse.BCOO
  mean_matrix: jsparse.BCOO

  @classmethod
  def build(cls, g, dtype=np.float32) -> BcooAdjacency:
    import scipy.sparse as sp
    n = g.num_nodes
    r, c, w = _gcn_weights(g)
    norm = sp.csr_matrix((w.astype(dtype), (r, c)), shape=(n, n))
    inv = 1 / np.maximum(np.diff(g.adj.indptr), 1)
    mean = sp.diags(inv.astype(dtype)) @ g.adj.astype(dtype)
    return cls(jsparse.BCOO.from_scipy_sparse(norm), jsparse.BCOO.from_scipy_sparse(mean))

  def gcn(self, h):
    return self.norm @ h

  def mean(self, h):
    return self.mean_matrix @ h

  def attention(self, z, a_src, a_dst):
    raise NotImplementedError("jax.experimental.sparse has no sparse softmax")


def _gat_layer(agg, x, w, a_src, a_dst, b):
  heads = a_src.shape[0]
  z = (x @ w).reshape(x.shape[0], heads, -1)
  out = agg.attention(z, jnp.einsum("nhf,hf->nh", z, a_src), jnp.einsum("nhf,hf->nh", z, a_dst))
  return out.reshape(x.shape[0], -1) + b


def forward(model: str, p: dict, agg, x):
  """The 2-layer model's logits `[n, classes]` (ReLU between GCN/SAGE layers, ELU for GAT)."""
  if model == "gcn":
    h = jax.nn.relu(agg.gcn(x @ p["W1"]) + p["b1"])
    return agg.gcn(h @ p["W2"]) + p["b2"]
  if model == "sage":
    h = jax.nn.relu(agg.mean(x @ p["W1"]) + x @ p["R1"] + p["b1"])
    return agg.mean(h @ p["W2"]) + h @ p["R2"] + p["b2"]
  h = jax.nn.elu(_gat_layer(agg, x, p["W1"], p["as1"], p["ad1"], p["b1"]))
  return _gat_layer(agg, h, p["W2"], p["as2"], p["ad2"], p["b2"])


def cross_entropy(logits, labels, train):
  """Mean cross-entropy over the training nodes."""
  logp = jax.nn.log_softmax(logits[train], axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[train][:, None], axis=1))


def loss_and_grads(model: str, p: dict, agg, x, labels, train):
  """``(loss, grads)`` with ``grads`` a dict like ``p``."""
  return jax.value_and_grad(lambda p: cross_entropy(forward(model, p, agg, x), labels, train))(p)


def reference(model: str, p: dict, g, train: bool) -> tuple:
  """Float64 logits (``train=False``) or ``(loss, *grads)`` in :data:`PARAMS` order, over
  the edge list."""
  with jax.enable_x64(True):
    agg = EdgeList.build(g, np.float64)
    p64 = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
    x = jnp.asarray(g.x, jnp.float64)
    if not train:
      return (np.asarray(jax.jit(functools.partial(forward, model))(p64, agg, x)),)
    step = jax.jit(functools.partial(loss_and_grads, model))
    loss, grads = step(p64, agg, x, jnp.asarray(g.labels), jnp.asarray(g.train))
    return (np.asarray(loss),) + tuple(np.asarray(grads[k]) for k in PARAMS[model])
