"""Tests of ``jscorch.numpy`` (the drop-in for ``jax.numpy``) and the zero-preserving table.

Checks that every ``jax.numpy`` name is there and behaves identically on dense
inputs; that the sparse-aware functions accept SparseArrays (values against float64
numpy references, patterns kept); that every zero-preserving function maps the
stored values, eagerly, under ``jit``, ``vmap`` and ``eval_shape``, with gradients
(padding included); and that other functions refuse SparseArrays naming
``todense()``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import jscorch.numpy as jsnp
from jscorch.ops.unary import JAX_NN_NAMES, ZERO_PRESERVING

import util

F64 = np.float64
NUMPY_UNARY = sorted(n for n in ZERO_PRESERVING if n not in JAX_NN_NAMES)

# One compile per layout instead of op-by-op dispatch (tests/util.py).
todense = util.jit_todense
random_sparse = util.random_sparse_jit


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@functools.lru_cache(maxsize=None)
def data(case: str = "csr", scale: float = 0.4):
  """``A`` with values ``|v|`` in ``[0.2, 0.8)`` (inside every function's domain) and ``x``."""
  nb = 1 if case == "csr_batched" else 0
  A, x = random_sparse(11, (2,) * nb + (4, 5), "csr", n_batch=nb, padding=2, dtype=F64)
  return A * scale, x * scale


def domain(name, A, x):
  """Inputs inside the domain of ``name`` (non-negative for sqrt)."""
  if name == "sqrt":
    return abs(A), np.abs(x)
  return A, x


def assert_same_pattern(S, A):
  assert js.is_sparse(S) and S.format == A.format and S.nse == A.nse and S.shape == A.shape
  for s, a in zip(S.indices, A.indices):
    np.testing.assert_array_equal(np.asarray(s), np.asarray(a))


# -- the drop-in -------------------------------------------------------------------------------
def test_every_jax_numpy_name_is_there():
  public = {n for n in dir(jnp) if not n.startswith("_")}
  assert public <= set(dir(jsnp))
  assert public <= set(jsnp.__all__)
  for name in ("float32", "int32", "ndarray", "dtype", "pi", "inf", "newaxis", "linalg", "fft"):
    assert getattr(jsnp, name) is getattr(jnp, name)
  with pytest.raises(AttributeError):
    jsnp.no_such_function_anywhere
  ns = {}
  exec("from jscorch.numpy import *", ns)    # noqa: S102
  assert ns["float32"] is jnp.float32 and callable(ns["exp"]) and ns["sum"] is jsnp.sum


def test_dense_calls_equal_jax_numpy():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 4)))
  y = jnp.asarray(rng.normal(size=(4, 2)))
  pairs = [
      (jsnp.exp(x), jnp.exp(x)),
      (jsnp.sin(x), jnp.sin(x)),
      (jsnp.reshape(x, (12,)), jnp.reshape(x, (12,))),
      (jsnp.matmul(x, y), jnp.matmul(x, y)),
      (jsnp.dot(x, y), jnp.dot(x, y)),
      (jsnp.einsum("ij,jk->ik", x, y), jnp.einsum("ij,jk->ik", x, y)),
      (jsnp.einsum(x, [0, 1], y, [1, 2], [0, 2]), x @ y),
      (jsnp.sum(x, axis=0, keepdims=True), jnp.sum(x, axis=0, keepdims=True)),
      (jsnp.sum(x, 1, None, None, True), jnp.sum(x, 1, keepdims=True)),
      (jsnp.add(x, 1.0), x + 1.0),
      (jsnp.add.reduce(x, axis=1), jnp.sum(x, axis=1)),
      (jsnp.multiply.outer(x[0], x[1]), jnp.outer(x[0], x[1])),
      (jsnp.negative(x), -x),
      (jsnp.transpose(x), x.T),
      (jsnp.concatenate([x, x]), jnp.concatenate([x, x])),
      (jsnp.power(x, 2), x ** 2),
      (jsnp.true_divide(x, 2), x / 2),
      (jax.jit(jsnp.exp)(x), jnp.exp(x)),
      (js.relu(x), jax.nn.relu(x)),
  ]
  for got, expected in pairs:
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


# -- sparse-aware functions --------------------------------------------------------------------
@pytest.mark.parametrize("case", ["csr", "csr_batched"])
def test_sparse_aware_functions(case):
  A, x = data(case, 1.0)
  B = A * 0.5 + A              # same pattern, other values
  y = x * 1.5
  F = np.asarray(util.random_values(3, x.shape, F64))
  M = np.asarray(util.random_values(4, (5, 3), F64))
  dense = lambda r: todense(r) if js.is_sparse(r) else r
  checks = [
      (jsnp.matmul(A, M), x @ M),
      (jsnp.dot(A, M[:, 0]), x @ M[:, 0]),
      (jsnp.einsum("...ij,jk->...ik", A, M), x @ M),
      (jsnp.multiply(A, F), x * F),
      (jsnp.add(A, B), x + y),
      (jsnp.subtract(A, F), x - F),
      (jsnp.divide(A, 2.0), x / 2),
      (jsnp.true_divide(A, F), x / F),
      (jsnp.power(A, 2), x ** 2),
      (jsnp.negative(A), -x),
      (jsnp.sum(A, axis=-1), x.sum(-1)),
      (jsnp.sum(A), x.sum()),
      (jsnp.transpose(A, (*range(A.ndim - 2), A.ndim - 1, A.ndim - 2)), np.swapaxes(x, -1, -2)),
      (jsnp.concatenate([A, B], axis=-1), np.concatenate([x, y], axis=-1)),
  ]
  for k, (got, expected) in enumerate(checks):
    util.assert_allclose(dense(got), expected, dtype=F64, err_msg=f"check {k}")
  assert_same_pattern(jsnp.multiply(A, F), A)
  assert_same_pattern(jsnp.abs(A), A)


def test_einsum_forms_and_arguments():
  A, x = data("csr", 1.0)
  v = np.arange(5.0)
  util.assert_allclose(jsnp.einsum(A, [0, 1], v, [1], [0]), x @ v, dtype=F64)
  util.assert_allclose(jsnp.einsum(A, [0, 1], [1]), x.sum(0), dtype=F64)
  assert jsnp.einsum("ij,j->i", A, v, preferred_element_type=jnp.float32).dtype == jnp.float32
  assert js.is_sparse(jsnp.einsum("ij,ij->ij", A, A))
  assert not js.is_sparse(jsnp.einsum("ij,ij->ij", A, A, out_format="dense"))
  with pytest.raises(TypeError, match=r"jscorch.numpy.einsum: out_format=, nse= and work= "
                                      r"apply to sparse operands only"):
    jsnp.einsum("ij->i", x, nse=3)


# -- zero-preserving table ---------------------------------------------------------------------
@pytest.mark.parametrize("name", NUMPY_UNARY)
def test_zero_preserving_numpy_function(name):
  A, x = domain(name, *data())
  expected = getattr(np, name)(x)
  f = getattr(jsnp, name)
  assert f is getattr(js, name) or getattr(f, "__wrapped__", None) is getattr(js, name)
  for S in (f(A), jax.jit(f)(A)):
    assert_same_pattern(S, A)
    util.assert_allclose(todense(S), expected, dtype=F64)


@pytest.mark.parametrize("name, kwargs", [(n, {}) for n in JAX_NN_NAMES] +
                         [("leaky_relu", {"negative_slope": 0.3}), ("elu", {"alpha": 0.5})],
                         ids=list(JAX_NN_NAMES) + ["leaky_relu-slope", "elu-alpha"])
def test_zero_preserving_nn_function(name, kwargs):
  A, x = data()
  S = getattr(js, name)(A, **kwargs)
  assert_same_pattern(S, A)
  reference = getattr(jax.nn, name)(jnp.asarray(x), **kwargs)
  util.assert_allclose(todense(S), np.asarray(reference), dtype=F64)


def test_complex_parts():
  A, x = data()
  Z = A * (1 + 2j)
  z = x * (1 + 2j)
  for got, expected in [(jsnp.real(Z), z.real), (jsnp.imag(Z), z.imag), (Z.real, z.real),
                        (Z.imag, z.imag), (jsnp.conj(Z), z.conj()), (Z.conj(), z.conj()),
                        (jsnp.abs(Z), np.abs(z))]:
    assert_same_pattern(got, A)
    util.assert_allclose(todense(got), expected, dtype=got.dtype)


def test_unary_grads_vmap_and_eval_shape():
  A, _ = data()
  P = abs(A)                  # positive values; padding stays 0, where f must stay smooth
  smooth = ["sin", "tanh", "sqrt", "cbrt", "log1p", "arcsinh", "gelu"]

  @jax.jit
  def f(d):
    B = P.with_data(d)
    return [getattr(js, name)(B).data for name in smooth] + [(B ** 0.5).data]

  util.check_grads_both(f, (P.data,))
  # sqrt'(0) is infinite: padding must still get a zero (not NaN) gradient.
  g = jax.grad(lambda d: js.sqrt(A.with_data(d)).data.sum())(abs(A.data))
  assert np.isfinite(np.asarray(g)).all()
  B, y = data("csr_batched")
  got = jax.vmap(jsnp.sin)(B)
  util.assert_allclose(todense(got), np.sin(y), dtype=F64)
  got = jax.vmap(lambda B, s: todense(jsnp.tanh(B * s)), in_axes=(None, 0))(A, jnp.array([1., 2.]))
  _, x = data()
  util.assert_allclose(got, np.stack([np.tanh(x), np.tanh(2 * x)]), dtype=F64)
  s = jax.eval_shape(jsnp.arctan, B)
  assert js.is_sparse(s) and s.shape == B.shape and s.nse == B.nse


# -- refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["exp", "cos", "cosh", "log", "log10", "exp2", "arccos",
                                  "reciprocal"])
def test_not_zero_preserving_raises(name):
  A, _ = data()
  with pytest.raises(TypeError, match=rf"jscorch\.numpy\.{name}: {name} is not zero-preserving.*"
                                      r"Call A\.todense\(\) first"):
    getattr(jsnp, name)(A)


def test_unsupported_functions_raise():
  A, _ = data()
  for call in (lambda: jsnp.cumsum(A), lambda: jsnp.argsort(A), lambda: jsnp.tile(A, 2),
               lambda: jsnp.where(True, A, 0.0)):
    with pytest.raises(TypeError, match=r"jscorch\.numpy\.\w+: SparseArrays are not supported "
                                        r".*Call A\.todense\(\) first"):
      call()
