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
import jscorch as js
from jscorch import nn
from jscorch.primitives import plan as kernel_planner

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



# -- block-sparse weights (BSR) ---------------------------------------------------------------
BLOCK = (2, 2)


def test_block_weights_values_grads_vmap_and_training():
  """``block=(2, 2)``: the weight is BSR with ``round(density * blocks)`` stored blocks;
  forward vs a float64 dense reference, ``check_grads`` (order 2, fwd and rev) w.r.t. the
  block values and ``x``, gradients shaped like the blocks, ``vmap``, ``eval_shape``, and
  a few optax steps that reduce the loss."""
  with jax.enable_x64(True):
    layer = nn.SparseLinear(F_IN, F_OUT, density=0.5, block=BLOCK, param_dtype=jnp.float64,
                            rngs=nnx.Rngs(2))
    assert layer.sparse_kernel.format == js.BSR(BLOCK)
    assert layer.nse == round(0.5 * (F_IN // 2) * (F_OUT // 2))
    assert layer.kernel.shape == (layer.nse,) + BLOCK
    layer.bias[...] = jnp.asarray(util.random_values(5, (F_OUT,), np.float64))
    w = np.asarray(layer.sparse_kernel.todense(), np.float64)
    stored = np.abs(w.reshape(F_IN // 2, 2, F_OUT // 2, 2)).sum(axis=(1, 3)) != 0
    assert int(stored.sum()) == layer.nse                  # whole blocks, nothing else
    x = util.random_values(6, (3, F_IN), np.float64)
    util.assert_allclose(layer(jnp.asarray(x)), x @ w + np.asarray(layer.bias[...]),
                         dtype=np.float64)
    f, params = lu.pure(layer, lambda m, x: m(x))
    util.check_grads_both(jax.jit(f), (params, jnp.asarray(x)))
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(x)) ** 2))(layer)
    assert grads["kernel"].shape == layer.kernel.shape
    xs = jnp.asarray(util.random_values(7, (2, 3, F_IN), np.float64))
    util.assert_allclose(jax.vmap(layer)(xs)[1], layer(xs[1]), dtype=np.float64)
    assert jax.eval_shape(layer, xs[0]).shape == (3, F_OUT)
  layer = nn.SparseLinear(F_IN, F_OUT, density=0.5, block=BLOCK, rngs=nnx.Rngs(2))
  opt = nnx.Optimizer(layer, optax.adam(0.05), wrt=nnx.Param)
  x32 = jnp.asarray(util.random_values(8, (8, F_IN), np.float32))

  @nnx.jit
  def step(layer, opt):
    loss, g = nnx.value_and_grad(lambda m: jnp.mean((m(x32) - 1.0) ** 2))(layer)
    opt.update(layer, g)
    return loss

  losses = [float(step(layer, opt)) for _ in range(20)]
  assert losses[-1] < 0.5 * losses[0], losses


def test_block_patterns_and_pruning_by_block():
  """A mask with ``block`` stores every block that holds one of its entries;
  ``from_dense(..., block=)`` keeps the blocks of largest Frobenius norm."""
  mask = np.zeros((F_IN, F_OUT), bool)
  mask[[0, 1, 5], [0, 1, 3]] = True                        # blocks (0, 0) twice and (2, 1)
  layer = nn.SparseLinear(F_IN, F_OUT, pattern=mask, block=BLOCK, rngs=nnx.Rngs(0))
  assert layer.nse == 2
  grid = np.asarray(layer.sparse_kernel.todense()).reshape(3, 2, 2, 2)
  np.testing.assert_array_equal(np.abs(grid).sum(axis=(1, 3)) != 0,
                                [[True, False], [False, False], [False, True]])
  dense = nnx.Linear(F_IN, F_OUT, rngs=nnx.Rngs(4))
  pruned = nn.SparseLinear.from_dense(dense, density=0.5, block=BLOCK)
  k = np.asarray(dense.kernel[...], np.float64)
  norms = np.sqrt((k.reshape(3, 2, 2, 2) ** 2).sum(axis=(1, 3)))
  keep = norms >= np.sort(norms.ravel())[::-1][round(0.5 * norms.size) - 1]
  expected = k * np.repeat(np.repeat(keep, 2, axis=0), 2, axis=1)
  np.testing.assert_allclose(np.asarray(pruned.sparse_kernel.todense()), expected, rtol=1e-6)
  x = jnp.asarray(util.random_values(9, (2, F_IN), np.float32))
  util.assert_allclose(pruned(x), np.asarray(x) @ expected + np.asarray(dense.bias[...]))


def test_block_errors():
  with pytest.raises(ValueError, match=r"SparseLinear: block \(4, 2\) must be positive and "
                                       r"divide the weight shape .* \(6, 4\).* \(8, 4\)"):
    nn.SparseLinear(F_IN, F_OUT, density=0.5, block=(4, 2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"SparseLinear.from_dense: block \(2, 3\)"):
    nn.SparseLinear.from_dense(nnx.Linear(F_IN, F_OUT, rngs=nnx.Rngs(0)), density=0.5,
                               block=(2, 3))


def test_forward_and_backward_kernels_run_in_storage_order(monkeypatch):
  """The layer keeps its pattern column-major too (``column_pattern``, the CSC of the CSR
  pattern), so neither the forward product nor the backward products (w.r.t. ``x`` and the
  values) re-sort the pattern in their kernel. The plain einsum ``x @ W`` over the CSR
  kernel does re-sort it where that pays (here at any size, so the check can fail)."""
  monkeypatch.setattr(kernel_planner, "transpose_pays", lambda kp: True)
  layer = nn.SparseLinear(40, 24, density=0.2, rngs=nnx.Rngs(2))
  pos, crd, perm = (np.asarray(b) for b in layer.column_pattern.get_value())
  csc = layer.sparse_kernel.to_scipy().tocsc()
  np.testing.assert_array_equal(pos, csc.indptr)
  np.testing.assert_array_equal(crd, csc.indices)
  np.testing.assert_array_equal(np.asarray(layer.kernel[...])[perm], csc.data)
  x = jnp.asarray(util.random_values(5, (7, 40), np.float32))
  f, params = lu.pure(layer, lambda m, x: m(x))
  grad = jax.grad(lambda p, x: jnp.sum(f(p, x) ** 2), argnums=(0, 1))
  assert lu.kernel_transposes(jax.make_jaxpr(grad)(params, x).jaxpr) == 0
  plain = jax.grad(lambda x: jnp.sum(js.einsum("ni,io->no", x, layer.sparse_kernel) ** 2))
  assert lu.kernel_transposes(jax.make_jaxpr(plain)(x).jaxpr) > 0
  util.assert_allclose(layer(x), np.asarray(x) @ csc.toarray())


def test_empty_batch():
  """No rows in, no rows out (as ``nnx.Linear``): no reshape infers a -1 next to a 0."""
  layer = nn.SparseLinear(F_IN, F_OUT, density=0.5, rngs=nnx.Rngs(0))
  for shape in [(0, F_IN), (2, 0, F_IN)]:
    assert layer(jnp.ones(shape)).shape == shape[:-1] + (F_OUT,)
