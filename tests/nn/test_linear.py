"""Tests of ``SparseLinear``: values vs a dense reference, pruning, gradients, training."""
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

F_IN, F_OUT = 6, 4


def _dense_kernel(layer) -> np.ndarray:
  """The weight as a float64 numpy array, decoded from the CSR buffers on the host."""
  return layer.sparse_kernel.to_scipy().toarray().astype(np.float64)


def test_random_pattern_and_values_match_dense_reference_float64():
  with jax.enable_x64(True):
    layer = nn.SparseLinear(F_IN, F_OUT, density=0.4, param_dtype=jnp.float64,
                            rngs=nnx.Rngs(0))
    assert layer.nse == round(0.4 * F_IN * F_OUT) == layer.kernel.shape[0]
    assert isinstance(layer.kernel, nnx.Param)
    assert isinstance(layer.kernel_pattern, nn.SparsePattern)
    assert not isinstance(layer.kernel_pattern, nnx.Param)
    layer.bias[...] = jnp.asarray(util.random_values(1, (F_OUT,), np.float64))
    w = _dense_kernel(layer)
    assert int((w != 0).sum()) == layer.nse
    x = util.random_values(2, (3, 5, F_IN), np.float64)
    out = layer(jnp.asarray(x))
    util.assert_allclose(out, x @ w + np.asarray(layer.bias[...]), dtype=np.float64)


def test_explicit_patterns():
  mask = np.zeros((F_IN, F_OUT), bool)
  mask[[0, 2, 5], [1, 3, 0]] = True
  by_mask = nn.SparseLinear(F_IN, F_OUT, pattern=mask, use_bias=False, rngs=nnx.Rngs(0))
  assert by_mask.bias is None and by_mask.nse == 3
  np.testing.assert_array_equal(_dense_kernel(by_mask) != 0, mask)
  by_sparse = nn.SparseLinear(F_IN, F_OUT, pattern=lu.from_dense(mask.astype(np.float32)),
                              rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(_dense_kernel(by_sparse) != 0, mask)


def test_from_dense_magnitude_pruning():
  dense = nnx.Linear(F_IN, F_OUT, rngs=nnx.Rngs(3))
  dense.bias[...] = jnp.arange(F_OUT, dtype=jnp.float32)
  pruned = nn.SparseLinear.from_dense(dense, density=0.25)
  k = np.asarray(dense.kernel[...])
  keep = round(0.25 * k.size)
  threshold = np.sort(np.abs(k).ravel())[::-1][keep - 1]
  expected = np.where(np.abs(k) >= threshold, k, 0)
  np.testing.assert_array_equal(_dense_kernel(pruned), expected)
  np.testing.assert_array_equal(np.asarray(pruned.bias[...]), np.arange(F_OUT))
  x = jnp.asarray(util.random_values(0, (2, F_IN), np.float32))
  util.assert_allclose(pruned(x), np.asarray(x) @ expected + np.arange(F_OUT))
  full = nn.SparseLinear.from_dense(dense, density=1.0)
  util.assert_allclose(full(x), dense(x))


def test_check_grads_and_gradient_is_sparse():
  with jax.enable_x64(True):
    layer = nn.SparseLinear(F_IN, F_OUT, density=0.5, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    x = jnp.asarray(util.random_values(3, (4, F_IN), np.float64))
    f, params = lu.pure(layer, lambda m, x: m(x))
    util.check_grads_both(jax.jit(f), (params, x))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert grads["kernel"].shape == (layer.nse,)           # values only, never [in, out]
    assert "kernel_pattern" not in grads


def test_jit_vmap_and_optimizer_keep_the_pattern():
  layer = nn.SparseLinear(F_IN, F_OUT, density=0.5, rngs=nnx.Rngs(0))
  xs = jnp.asarray(util.random_values(4, (3, 2, F_IN), np.float32))
  eager = layer(xs[0])
  util.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, xs[0]), eager)
  out = jax.vmap(layer)(xs)
  for k in range(3):
    util.assert_allclose(out[k], layer(xs[k]))
  pattern = [np.asarray(b) for b in layer.kernel_pattern.get_value()]
  opt = nnx.Optimizer(layer, optax.adam(0.1), wrt=nnx.Param)
  target = jnp.ones((2, F_OUT))

  @nnx.jit
  def step(model, opt, x):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(layer, opt, xs[0])) for _ in range(20)]
  assert losses[-1] < 0.5 * losses[0], losses
  for a, b in zip(pattern, layer.kernel_pattern.get_value()):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_errors():
  with pytest.raises(TypeError, match="SparseLinear: rngs is required"):
    nn.SparseLinear(F_IN, F_OUT, density=0.5)
  with pytest.raises(ValueError, match="SparseLinear: give exactly one of density= and pattern="):
    nn.SparseLinear(F_IN, F_OUT, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"SparseLinear: density must be in \(0, 1\]; got "
                     "density=1.5"):
    nn.SparseLinear(F_IN, F_OUT, density=1.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"SparseLinear: pattern must be \[in_features, "
                     r"out_features\] = \(6, 4\); got shape \(4, 6\)"):
    nn.SparseLinear(F_IN, F_OUT, pattern=np.ones((F_OUT, F_IN)), rngs=nnx.Rngs(0))
  layer = nn.SparseLinear(F_IN, F_OUT, density=0.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"SparseLinear: wrong feature width: x.shape=\(2, 5\)"):
    layer(jnp.ones((2, 5)))
  with pytest.raises(TypeError, match="SparseLinear: x must be a dense array"):
    layer(lu.from_dense(np.eye(F_IN, dtype=np.float32)))
  with pytest.raises(TypeError, match="SparseLinear.from_dense: expected an nnx.Linear"):
    nn.SparseLinear.from_dense(layer, density=0.5)

