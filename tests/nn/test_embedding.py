"""Tests of ``EmbeddingBag`` against a dense float64 reference."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import layer_util as lu
import util
from jscorch import nn

VOCAB, F, BATCH = 9, 4, 5


def _bags(rng, dtype=np.float32, empty_row=True):
  """A `[BATCH, VOCAB]` multi-hot batch with weights, one empty bag, and padding."""
  x = np.abs(util.random_dense(rng, (BATCH, VOCAB), density=0.3, dtype=dtype))
  if empty_row:
    x[2] = 0
  return lu.from_dense(x, "csr", nse=util.stored_count(x) + 2), x


def bag_ref(x, table, mode):
  out = x @ table
  if mode == "mean":
    total = x.sum(1, keepdims=True)
    out = np.where(total > 0, out / np.where(total > 0, total, 1), 0)
  return out


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_matches_dense_reference_float64(mode):
  with jax.enable_x64(True):
    bags, x = _bags(0, np.float64)
    layer = nn.EmbeddingBag(VOCAB, F, mode=mode, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    table = np.asarray(layer.embedding[...])
    out = layer(bags)
    util.assert_allclose(out, bag_ref(x, table, mode), dtype=np.float64)
    np.testing.assert_array_equal(np.asarray(out[2]), np.zeros(F))    # empty bag
    util.assert_allclose(layer(jnp.asarray(x)), bag_ref(x, table, mode), dtype=np.float64)


def test_mean_ignores_entries_masked_to_zero():
  bags, x = _bags(3)
  layer = nn.EmbeddingBag(VOCAB, F, mode="mean", rngs=nnx.Rngs(0))
  used = int(bags.nnz)
  masked = bags.with_data(bags.data.at[0].set(0))
  x_masked = np.asarray(lu.todense(masked))
  util.assert_allclose(layer(masked), bag_ref(x_masked, np.asarray(layer.embedding[...]),
                                                "mean"))
  assert used == int(masked.nnz)            # still stored, but with weight 0


def test_check_grads_and_sparse_rows_of_the_gradient():
  with jax.enable_x64(True):
    bags, x = _bags(1, np.float64)
    layer = nn.EmbeddingBag(VOCAB, F, mode="mean", param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    f, params = lu.pure(layer, lambda m, w: m(bags.with_data(w)))
    util.check_grads_both(jax.jit(f), (params, bags.data))
    g = nnx.grad(lambda m: jnp.sum(m(bags) ** 2))(layer)["embedding"][...]
    unused = np.flatnonzero(~(x != 0).any(0))
    assert len(unused) and np.all(np.asarray(g)[unused] == 0)


def test_jit_vmap_and_optimizer():
  layer = nn.EmbeddingBag(VOCAB, F, rngs=nnx.Rngs(0))
  bags, _ = _bags(2)
  eager = layer(bags)
  util.assert_allclose(nnx.jit(lambda m, b: m(b))(layer, bags), eager)
  dense = np.stack([_bags(10 + s)[1] for s in range(3)])
  batched = lu.from_dense(dense, "csr", n_batch=1, nse=util.stored_count(dense, 1) + 1)
  out = jax.vmap(layer)(batched)
  for k in range(3):
    util.assert_allclose(out[k], layer(util.element(batched, k)), err_msg=f"batch {k}")
  opt = nnx.Optimizer(layer, optax.adam(0.1), wrt=nnx.Param)
  target = jnp.ones((BATCH, F))

  @nnx.jit
  def step(model, opt, b):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(b) - target) ** 2))(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(layer, opt, bags)) for _ in range(20)]
  assert losses[-1] < 0.5 * losses[0], losses


def test_errors():
  with pytest.raises(TypeError, match="EmbeddingBag: rngs is required"):
    nn.EmbeddingBag(VOCAB, F)
  with pytest.raises(ValueError, match=r"EmbeddingBag: mode must be one of \('sum', 'mean'\); "
                     "got mode='max'"):
    nn.EmbeddingBag(VOCAB, F, mode="max", rngs=nnx.Rngs(0))
  layer = nn.EmbeddingBag(VOCAB, F, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"EmbeddingBag: bags must have shape \[batch, "
                     r"num_embeddings=9\]; got bags.shape=\(5, 8\)"):
    layer(lu.from_dense(np.eye(BATCH, VOCAB - 1, dtype=np.float32)))
  with pytest.raises(TypeError, match="EmbeddingBag: bags must be a SparseArray"):
    layer([[1, 2]])

