"""Unchanged dense model code under js.sparsify with sparse inputs, compared with dense runs.

Flax NNX ``Linear`` and ``Einsum`` layers, a two-layer GCN and a GAT-style attention
written in plain ``jax.numpy``, and a mixture of experts with one-hot gates made
sparse: each runs as written; only the argument is a SparseArray.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jscorch as js
import util
from jscorch.sparsify import sparsify

N = 9


def close(a, b, tol=2e-5):
  a = a.todense() if js.is_sparse(a) else a
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def dn(seed, shape):
  return jnp.asarray(util.random_values(seed, shape, np.float32))


def graph(seed=0):
  """A random adjacency with self loops (every row stored), CSR with padding."""
  adj = util.random_dense(seed, (N, N), density=0.3) != 0
  adj = (adj | np.eye(N, dtype=bool)).astype(np.float32)
  return js.from_dense(adj, "csr", nse=int(adj.sum()) + 2)


def test_nnx_linear_on_a_sparse_batch():
  model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
  x = util.random_sparse(0, (5, 6), "csr", padding=2)[0]

  @sparsify
  def forward(model, x):
    return jax.nn.relu(model(x))

  close(forward(model, x), jax.nn.relu(model(x.todense())))
  close(nnx.jit(forward)(model, x), jax.nn.relu(model(x.todense())))


def test_nnx_einsum_layer():
  layer = nnx.Einsum("bsd,dh->bsh", (6, 3), (3,), rngs=nnx.Rngs(1))
  x = util.random_sparse(1, (2, 4, 6), "csr", n_batch=1, padding=1)[0]
  close(sparsify(lambda m, x: m(x))(layer, x), layer(x.todense()))


def gcn(adj, x, w1, w2):
  deg = jnp.sum(adj, axis=1)
  norm = adj / jnp.sqrt(deg)[:, None] / jnp.sqrt(deg)[None, :]
  h = jax.nn.relu(norm @ (x @ w1))
  return norm @ (h @ w2)


def test_two_layer_gcn():
  adj, x = graph(0), dn(1, (N, 5))
  w1, w2 = dn(2, (5, 8)) * 0.3, dn(3, (8, 3)) * 0.3
  ref = gcn(adj.todense(), x, w1, w2)
  close(sparsify(gcn)(adj, x, w1, w2), ref)
  close(jax.jit(sparsify(gcn))(adj, x, w1, w2), ref)
  g = jax.grad(lambda w1: jnp.sum(sparsify(gcn)(adj, x, w1, w2) ** 2))(w1)
  close(g, jax.grad(lambda w1: jnp.sum(gcn(adj.todense(), x, w1, w2) ** 2))(w1), tol=1e-4)


def gat(adj, x, w, a_src, a_dst):
  """Graph attention: scores on edges, softmax over each node's neighbours, no jnp.where."""
  h = x @ w
  e = jax.nn.leaky_relu((h @ a_src)[:, None] + (h @ a_dst)[None, :], 0.2)
  p = adj * jnp.exp(e)                    # masking by the stored pattern
  alpha = p / jnp.sum(p, axis=1, keepdims=True)
  return jax.nn.elu(alpha @ h)


def test_gat_attention_on_the_stored_pattern():
  adj, x = graph(1), dn(1, (N, 5))
  w, a_src, a_dst = dn(2, (5, 4)) * 0.3, dn(3, (4,)) * 0.3, dn(4, (4,)) * 0.3
  ref = gat(adj.todense(), x, w, a_src, a_dst)
  close(jax.jit(sparsify(gat))(adj, x, w, a_src, a_dst), ref)
  closed = jax.make_jaxpr(sparsify(gat))(adj, x, w, a_src, a_dst)
  assert all(tuple(v.aval.shape) != (N, N) for e in closed.jaxpr.eqns for v in e.outvars)
  g = jax.grad(lambda w: jnp.sum(sparsify(gat)(adj, x, w, a_src, a_dst)))(w)
  close(g, jax.grad(lambda w: jnp.sum(gat(adj.todense(), x, w, a_src, a_dst)))(w), tol=1e-4)


def moe(gates, tokens, experts):
  return jnp.einsum("te,td,edf->tf", gates, tokens, experts)


def test_mixture_of_experts_with_sparse_one_hot_gates():
  tokens, logits, experts = dn(0, (7, 4)), dn(1, (7, 3)), dn(2, (3, 4, 5))
  gates = js.from_dense(jax.nn.one_hot(jnp.argmax(logits, -1), 3))
  ref = moe(gates.todense(), tokens, experts)
  close(sparsify(moe)(gates, tokens, experts), ref)
  closed = jax.make_jaxpr(sparsify(moe))(gates, tokens, experts)
  assert [e.primitive.name for e in closed.jaxpr.eqns] == ["jscorch_einsum"]
  g = jax.grad(lambda w: jnp.sum(jax.jit(sparsify(moe))(gates, tokens, w) ** 2))(experts)
  close(g, jax.grad(lambda w: jnp.sum(moe(gates.todense(), tokens, w) ** 2))(experts), tol=1e-4)


def test_flax_model_made_sparse_with_one_decorator():
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.l1, self.l2 = nnx.Linear(6, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.gelu(self.l1(x)))

  model = MLP(nnx.Rngs(0))
  x = util.random_sparse(2, (5, 6), "csr", padding=2)[0]

  @nnx.jit
  @sparsify
  def predict(model, x):
    return model(x)

  close(predict(model, x), model(x.todense()))
