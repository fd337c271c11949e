"""The grouped matmul primitives (``primitives/grouped.py``): values against float64 numpy
(an empty group, rows past the last group), every derivative of order 2 in both modes,
``jit``, ``vmap``, ``eval_shape``, errors, and their lowering for GPU and TPU."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jscorch.primitives.grouped import grouped_matmul, grouped_outer

import util

F64 = np.float64
SIZES = np.array([2, 0, 3, 1], np.int32)       # 6 grouped rows of 7: the last row is past them
ROWS, I, O = 7, 3, 2


def _groups():
  return np.concatenate([np.repeat(np.arange(len(SIZES)), SIZES),
                         np.full(ROWS - SIZES.sum(), -1)])


def matmul_ref(x, w):
  return np.stack([x[p] @ w[g] if g >= 0 else np.zeros(O) for p, g in enumerate(_groups())])


def outer_ref(x, y):
  out = np.zeros((len(SIZES), I, O))
  for p, g in enumerate(_groups()):
    if g >= 0:
      out[g] += np.outer(x[p], y[p])
  return out


def _inputs(seed):
  rng = np.random.default_rng(seed)
  return (util.random_values(rng, (ROWS, I), F64), util.random_values(rng, (len(SIZES), I, O), F64),
          util.random_values(rng, (ROWS, O), F64))


def test_values_jit_vmap_eval_shape():
  with jax.enable_x64(True):
    x, w, y = _inputs(0)
    sizes = jnp.asarray(SIZES)
    mm = jax.jit(grouped_matmul)
    np.testing.assert_allclose(mm(x, w, sizes), matmul_ref(x, w), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grouped_outer(x, y, sizes), outer_ref(x, y), rtol=1e-12,
                               atol=1e-12)
    xs = np.stack([x, -2 * x])
    got = jax.jit(jax.vmap(grouped_matmul, (0, None, None)))(xs, w, sizes)
    np.testing.assert_allclose(got[1], matmul_ref(xs[1], w), rtol=1e-12, atol=1e-12)
    got = jax.vmap(grouped_outer, (0, None, None))(xs, y, sizes)
    np.testing.assert_allclose(got[1], outer_ref(xs[1], y), rtol=1e-12, atol=1e-12)
    assert jax.eval_shape(grouped_outer, x, y, sizes).shape == (len(SIZES), I, O)
    assert jax.eval_shape(grouped_matmul, x, w, sizes).shape == (ROWS, O)


def test_grads_order_two_both_modes():
  with jax.enable_x64(True):
    x, w, y = _inputs(1)
    sizes = jnp.asarray(SIZES)
    check_grads(lambda x, w: grouped_matmul(x, w, sizes), (x, w), order=2, modes=("fwd", "rev"))
    check_grads(lambda x, y: grouped_outer(x, y, sizes), (x, y), order=2, modes=("fwd", "rev"))


def test_lowers_to_ragged_dots_on_accelerators():
  """Second-order reverse derivatives stay ragged dots when lowered for ``cuda`` and ``tpu``
  (``jax.lax.ragged_dot``'s own transpose stops at first order)."""
  x, w, _ = _inputs(2)
  sizes = jnp.asarray(SIZES)

  def hessian_vector(x, w):
    inner = lambda w: jnp.sum(jax.grad(lambda x: jnp.sin(grouped_matmul(x, w, sizes)).sum())(x)
                              ** 2)
    return jax.grad(inner)(w)

  for platform in ("cuda", "tpu"):
    text = jax.jit(hessian_vector).trace(jnp.asarray(x, jnp.float32),
                                         jnp.asarray(w, jnp.float32)).lower(
                                             lowering_platforms=(platform,)).as_text()
    assert text.count("ragged_dot") >= 4, platform


def test_errors():
  x, w, y = (jnp.asarray(a, jnp.float32) for a in _inputs(3))
  sizes = jnp.asarray(SIZES)
  with pytest.raises(ValueError, match=r"grouped_matmul: expected w \[groups=4, i=3, o\]"):
    grouped_matmul(x, w[:2], sizes)
  with pytest.raises(ValueError, match=r"grouped_outer: expected y \[rows=7, o\]"):
    grouped_outer(x, y[:3], sizes)
  with pytest.raises(ValueError, match="integer sizes"):
    grouped_matmul(x, w, sizes.astype(jnp.float32))
