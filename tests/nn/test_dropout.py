"""Tests of dropout on sparse arrays: ``js.dropout``, ``nn.SparseDropout`` and ``nnx.Dropout``
inside ``js.sparsify``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jscorch as js
import util
from jscorch import nn

RATE = 0.4
# (format id, n_batch, n_dense): sampled deterministically, not the full product.
CASES = [("csr", 0, 0), ("coo_unordered_nonunique", 0, 0), ("csf3", 1, 0), ("dcsr", 0, 1)]
FORMATS = dict(util.FORMATS)

_dropout = jax.jit(js.dropout, static_argnames="rate")


def _random(case, seed=0, density=0.7):
  name, n_batch, n_dense = case
  fmt = FORMATS[name]
  return util.random_sparse_jit(seed, util.default_shape(fmt, n_batch, n_dense), fmt,
                                n_batch=n_batch, n_dense=n_dense, density=density,
                                padding=3, dtype=np.float32)


def _check_dropped(A, D, rate):
  """``D`` is ``A`` with each stored value kept (scaled by 1/(1-rate)) or zeroed."""
  assert D.format == A.format and D.shape == A.shape and D.nse == A.nse
  assert (D.n_batch, D.n_dense) == (A.n_batch, A.n_dense)
  for a, d in zip(util.buffers(A), util.buffers(D)):
    np.testing.assert_array_equal(d, a)                      # the pattern is unchanged
  a, d = np.asarray(A.data, np.float64), np.asarray(D.data, np.float64)
  kept = d != 0
  np.testing.assert_allclose(d[kept], a[kept] / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(d[a == 0], 0)                # padding stays 0
  return kept[a != 0]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-b{c[1]}-d{c[2]}")
def test_dropout_keeps_pattern_and_scales_kept_values(case):
  A, x = _random(case)
  D = _dropout(jax.random.key(1), A, rate=RATE)
  kept = _check_dropped(A, D, RATE)
  assert 0 < kept.sum() < kept.size                          # some dropped, some kept
  # The dense view is dropout of the dense array at the stored coordinates.
  dense = np.asarray(D.todense())
  np.testing.assert_array_equal(dense[x == 0], 0)
  assert np.all((dense == 0) | np.isclose(dense, x / (1 - RATE), rtol=1e-6))


def test_dropout_rate_statistics_and_fresh_masks():
  A, _ = _random(("csr", 0, 0), seed=2, density=1.0)        # 20 stored values
  keys = jax.random.split(jax.random.key(3), 200)
  Ds = jax.vmap(lambda k: js.dropout(k, A, RATE))(keys)     # vmap over keys
  assert Ds.n_batch == 1 and Ds.data.shape == (200, A.nse)
  stored = np.asarray(A.data) != 0
  dropped = (np.asarray(Ds.data) == 0)[:, stored]
  assert abs(dropped.mean() - RATE) < 0.03, dropped.mean()   # 4000 draws: 5 sigma ~ 0.04
  assert len({row.tobytes() for row in dropped}) > 150       # masks differ between keys
  D0 = js.dropout(keys[0], A, RATE)
  np.testing.assert_array_equal(np.asarray(util.element(Ds, 0).data), np.asarray(D0.data))


def test_dropout_edge_rates_dense_input_grad_and_eval_shape():
  A, _ = _random(("csr", 0, 0), seed=4)
  key = jax.random.key(5)
  assert js.dropout(key, A, 0.0) is A or np.array_equal(js.dropout(key, A, 0.0).data, A.data)
  np.testing.assert_array_equal(np.asarray(js.dropout(key, A, 1.0).data), 0)
  x = jnp.asarray(util.random_values(6, (30,), np.float32))
  y = np.asarray(js.dropout(key, x, RATE))
  assert np.all((y == 0) | np.isclose(y, np.asarray(x) / (1 - RATE)))
  # The gradient w.r.t. the stored values is the mask scaled by 1/(1-rate), same pattern.
  D = js.dropout(key, A, RATE)
  g = js.grad(lambda A: js.dropout(key, A, RATE).data.sum())(A)
  assert g.format == A.format
  stored = np.asarray(A.data) != 0
  expected = np.where(np.asarray(D.data) != 0, 1 / (1 - RATE), 0.0)
  np.testing.assert_allclose(np.asarray(g.data)[stored], expected[stored], rtol=1e-6)
  out = jax.eval_shape(lambda k, A: js.dropout(k, A, RATE), key, A)
  assert out.format == A.format and out.data.shape == A.data.shape


def test_dropout_errors():
  A, _ = _random(("csr", 0, 0))
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"dropout: rate is the probability of dropping a value; "
                     r"got rate=1.5, expected 0 <= rate <= 1"):
    js.dropout(key, A, 1.5)
  with pytest.raises(TypeError, match="dropout: rate must be a concrete Python float; got"):
    jax.jit(js.dropout)(key, A, 0.5)
  with pytest.raises(TypeError, match="dropout: A must be a SparseArray or an array; got list"):
    js.dropout(key, [1.0, 2.0], 0.5)
  with pytest.raises(ValueError, match=r"SparseDropout: broadcast_dims apply to dense inputs "
                     r"only; got broadcast_dims=\(0,\)"):
    nn.SparseDropout(0.5, broadcast_dims=(0,), rngs=nnx.Rngs(0))(A)
  with pytest.raises(ValueError, match="SparseDropout: rate is the probability"):
    nn.SparseDropout(-0.1, rngs=nnx.Rngs(0))(A)


def test_sparse_dropout_module_matches_nnx_dropout_on_the_values():
  A, _ = _random(("coo_unordered_nonunique", 0, 0), seed=7)
  layer = nn.SparseDropout(RATE, rngs=nnx.Rngs(dropout=8))
  reference = nnx.Dropout(RATE, rngs=nnx.Rngs(dropout=8))
  D1, D2 = layer(A), layer(A)
  _check_dropped(A, D1, RATE)
  np.testing.assert_array_equal(np.asarray(D1.data), np.asarray(reference(A.data)))
  np.testing.assert_array_equal(np.asarray(D2.data), np.asarray(reference(A.data)))
  assert not np.array_equal(np.asarray(D1.data), np.asarray(D2.data))   # the stream advances
  x = jnp.ones((4, 5))                                       # dense inputs: nnx.Dropout
  np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(reference(x)))
  # deterministic in the constructor, at the call, and through eval()/train()
  assert layer(A, deterministic=True) is A
  assert nn.SparseDropout(RATE, deterministic=True)(A) is A
  layer.eval()
  assert layer(A) is A
  layer.train()
  _check_dropped(A, layer(A), RATE)
  D_key = layer(A, rngs=jax.random.key(9))                   # a call-time key
  np.testing.assert_array_equal(np.asarray(D_key.data),
                                np.asarray(js.dropout(jax.random.key(9), A, RATE).data))


def test_sparse_dropout_in_a_model_under_nnx_jit():
  class Model(nnx.Module):
    def __init__(self, rngs):
      self.drop = nn.SparseDropout(RATE, rngs=rngs)
      self.linear = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, A):
      return js.einsum("ij,jk->ik", self.drop(A), self.linear.kernel[...])

  A, _ = _random(("csr", 0, 0), seed=10)
  model = Model(nnx.Rngs(0))
  step = nnx.jit(lambda m, A: m(A))
  y1, y2 = step(model, A), step(model, A)
  assert y1.shape == (4, 2) and not np.allclose(y1, y2)     # a fresh mask at every call
  model.eval()
  np.testing.assert_allclose(step(model, A), A.todense() @ model.linear.kernel[...],
                             rtol=1e-5)


def test_nnx_dropout_inside_sparsify_as_an_argument():
  A, _ = _random(("csr", 0, 0), seed=11)
  drop = nnx.Dropout(RATE, rngs=nnx.Rngs(12))
  f = js.sparsify(lambda d, A: 2 * d(A))
  D1, D2 = f(drop, A), f(drop, A)
  assert js.is_sparse(D1)
  half = D1.with_data(D1.data / 2)
  _check_dropped(A, half, RATE)
  assert not np.array_equal(np.asarray(D1.data), np.asarray(D2.data))   # fresh masks
  assert int(drop.rngs.count[...]) == 2                      # the caller's stream advanced
  # nn.SparseDropout and a model holding it work the same way.
  layer = nn.SparseDropout(RATE, rngs=nnx.Rngs(12))
  _check_dropped(A, js.sparsify(lambda d, A: d(A))(layer, A), RATE)


def test_nnx_dropout_closed_over_in_sparsify_says_to_pass_it():
  A, _ = _random(("csr", 0, 0), seed=13)
  drop = nnx.Dropout(RATE, rngs=nnx.Rngs(14))
  with pytest.raises(js.SparsifyError, match=r"sparsify: fun mutates a Flax NNX object it "
                     r"closes over .*Pass it as one: js.sparsify\(lambda model, A: model\(A\)\)"):
    js.sparsify(lambda A: drop(A))(A)
  # A closed-over module that fun does not update is fine (here: dropout switched off).
  drop.eval()
  assert js.sparsify(lambda A: drop(A))(A) is not None
