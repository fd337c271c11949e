"""js.sparsify: every covered primitive against the dense computation, and every error.

Each case runs a small function under ``js.sparsify`` with SparseArray inputs
(with padding) and compares with the same function on the dense arrays; the
result kind (sparse or dense) is part of the contract (docs/sparsify.md).
"""
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import util
from jscorch.sparsify import SparsifyError, sparsify

SHAPE = (5, 6)


def dense(x):
  return x.todense() if js.is_sparse(x) else x


def run_case(fn, args, kind, jit=False):
  f = sparsify(fn)
  out = (jax.jit(f) if jit else f)(*args)
  ref = fn(*[dense(a) for a in args])
  for o, r in zip(jax.tree_util.tree_leaves(out, is_leaf=js.is_sparse),
                  jax.tree_util.tree_leaves(ref)):
    if kind is not None:
      assert js.is_sparse(o) == (kind == "sparse"), (o, kind)
    assert o.shape == r.shape and o.dtype == r.dtype, (o, r.shape, r.dtype)
    np.testing.assert_allclose(np.asarray(dense(o)), np.asarray(r), rtol=2e-5, atol=2e-5)
  return out


def sp(seed, shape=SHAPE, fmt="csr", **kw):
  return util.random_sparse(seed, shape, fmt, padding=2, **kw)[0]


def dn(seed, shape):
  return jnp.asarray(util.random_values(seed, shape, np.float32))


# (id, function, argument factory, result kind)
CASES = [
    ("dot_general-spmm", lambda A, X: A @ X, lambda: (sp(0), dn(1, (6, 3))), "dense"),
    ("dot_general-dense-left", lambda A, X: X @ A, lambda: (sp(0), dn(1, (2, 5))), "dense"),
    ("dot_general-spmv", lambda A, x: jnp.dot(A, x), lambda: (sp(0), dn(1, (6,))), "dense"),
    ("dot_general-spgemm", lambda A, B: A @ B, lambda: (sp(0), sp(1, (6, 4))), "sparse"),
    ("dot_general-einsum", lambda A, X: jnp.einsum("ij,jk->ki", A, X),
     lambda: (sp(0), dn(1, (6, 2))), "dense"),
    ("mul-dense", lambda A, X: A * X, lambda: (sp(0), dn(1, SHAPE)), "sparse"),
    ("mul-row", lambda A, v: A * v, lambda: (sp(0), dn(1, (6,))), "sparse"),
    ("mul-column", lambda A, v: v[:, None] * A, lambda: (sp(0), dn(1, (5,))), "sparse"),
    ("mul-sparse", lambda A, B: A * B, lambda: (sp(0), sp(1)), "sparse"),
    ("mul-scalar", lambda A: 2.5 * A, lambda: (sp(0),), "sparse"),
    ("neg", lambda A: -A, lambda: (sp(0),), "sparse"),
    ("div-scalar", lambda A: A / 4.0, lambda: (sp(0),), "sparse"),
    ("div-rowsum", lambda A, d: A / d[:, None], lambda: (sp(0), dn(1, (5,))), "sparse"),
    ("add-union", lambda A, B: A + B, lambda: (sp(0), sp(1)), "sparse"),
    ("sub-union", lambda A, B: A - B, lambda: (sp(0), sp(1)), "sparse"),
    ("add-same-pattern", lambda A: A + 3 * A, lambda: (sp(0),), "sparse"),
    ("add-dense", lambda A, X: A + X, lambda: (sp(0), dn(1, SHAPE)), "dense"),
    ("sub-dense", lambda A, X: X - A, lambda: (sp(0), dn(1, SHAPE)), "dense"),
    ("add-zeros", lambda A: A + jnp.zeros(SHAPE), lambda: (sp(0),), "sparse"),
    ("reduce_sum-rows", lambda A: jnp.sum(A, axis=1), lambda: (sp(0),), "dense"),
    ("reduce_sum-all", lambda A: A.sum(), lambda: (sp(0),), "dense"),
    ("reduce_sum-keepdims", lambda A: A.sum(0, keepdims=True), lambda: (sp(0),), "dense"),
    ("reduce_max", lambda A: jnp.max(A, axis=1), lambda: (sp(0),), "dense"),
    ("reduce_min", lambda A: jnp.min(A, axis=0), lambda: (sp(0),), "dense"),
    ("reduce_max-all", lambda A: jnp.max(A), lambda: (sp(0),), "dense"),
    ("transpose", lambda A: A.T, lambda: (sp(0),), "sparse"),
    ("transpose-3d", lambda A: jnp.transpose(A, (2, 0, 1)),
     lambda: (sp(0, (2, 3, 4), "coo"),), "sparse"),
    ("reshape", lambda A: A.reshape(3, 10), lambda: (sp(0),), "sparse"),
    ("reshape-flatten", lambda A: A.reshape(-1), lambda: (sp(0),), "sparse"),
    ("reshape-unit", lambda A: A.reshape(5, 1, 6), lambda: (sp(0),), "sparse"),
    ("expand_dims-batch", lambda A: A[None] * 2.0, lambda: (sp(0),), "sparse"),
    ("broadcast_in_dim-block", lambda A, v: A[:, :, None] * v,
     lambda: (sp(0), dn(1, (3,))), "sparse"),
    ("broadcast_in_dim-batch", lambda A, X: A[None] * X,
     lambda: (sp(0), dn(1, (2, 5, 6))), "sparse"),
    ("squeeze", lambda A: jnp.squeeze(A.reshape(5, 1, 6), 1), lambda: (sp(0),), "sparse"),
    ("concatenate-rows", lambda A, B: jnp.concatenate([A, B], 0), lambda: (sp(0), sp(1)),
     "sparse"),
    ("concatenate-cols", lambda A, B: jnp.concatenate([A, B], 1), lambda: (sp(0), sp(1)),
     "sparse"),
    ("slice", lambda A: A[1:4, ::2], lambda: (sp(0),), "sparse"),
    ("slice-int", lambda A: A[2], lambda: (sp(0),), "sparse"),
    ("dynamic_slice", lambda A, i: jax.lax.dynamic_slice(A, (i, 1), (2, 3)),
     lambda: (sp(0), jnp.int32(2)), "sparse"),
    ("convert_element_type", lambda A: A.astype(jnp.int32), lambda: (sp(0),), "sparse"),
    ("select_n-mask", lambda A, m: jnp.where(m, A, 0.0),
     lambda: (sp(0), jnp.asarray(np.arange(30).reshape(SHAPE) % 3 == 0)), "sparse"),
    ("select_n-self", lambda A: jnp.where(A > 0, A, 0.0), lambda: (sp(0),), "sparse"),
    ("select_n-pattern", lambda A, X: jnp.where(A != 0, X, 0.0),
     lambda: (sp(0), dn(1, SHAPE)), "sparse"),
    ("integer_pow", lambda A: A ** 3, lambda: (sp(0),), "sparse"),
    ("sign", jnp.sign, lambda: (sp(0),), "sparse"),
    ("stop_gradient", jax.lax.stop_gradient, lambda: (sp(0),), "sparse"),
    ("abs-sqrt", lambda A: jnp.sqrt(jnp.abs(A)), lambda: (sp(0),), "sparse"),
    ("sin-tanh", lambda A: jnp.sin(jnp.tanh(A)), lambda: (sp(0),), "sparse"),
    ("relu", jax.nn.relu, lambda: (sp(0),), "sparse"),
    ("gelu", jax.nn.gelu, lambda: (sp(0),), "sparse"),
    ("silu", jax.nn.silu, lambda: (sp(0),), "sparse"),
    ("max-zero", lambda A: jnp.maximum(A, 0.0), lambda: (sp(0),), "sparse"),
    ("maximum-union", jnp.maximum, lambda: (sp(0), sp(1)), "sparse"),
    ("gt-mask", lambda A: (A > 0.5).astype(jnp.float32) * 2, lambda: (sp(0),), "sparse"),
    ("exp-sampled", lambda A, X: A * jnp.exp(X), lambda: (sp(0), dn(1, SHAPE)), "sparse"),
    ("exp-of-sparse-sampled", lambda A: A * jnp.exp(A), lambda: (sp(0),), "sparse"),
    ("sampled-outer", lambda A, u, v: A * jnp.tanh(u[:, None] + v[None, :]),
     lambda: (sp(0), dn(1, (5,)), dn(2, (6,))), "sparse"),
]


EAGER_CASES = {"dot_general-spgemm", "mul-sparse", "add-union", "sub-union", "maximum-union",
               "concatenate-rows", "concatenate-cols", "reshape", "slice", "dynamic_slice",
               "transpose-3d", "reduce_max", "select_n-self"}
"""Cases also run eagerly (concrete index buffers: exact capacities); all others under jit."""


@pytest.mark.parametrize("fn,make,kind,jit", [
    pytest.param(f, m, k, i not in EAGER_CASES, id=i) for i, f, m, k in CASES])
def test_rule(fn, make, kind, jit):
  run_case(fn, make(), kind, jit=jit)


@pytest.mark.parametrize("fn,make,kind", [
    pytest.param(f, m, k, id=i) for i, f, m, k in CASES
    if i in EAGER_CASES and i != "dot_general-spgemm"])
def test_rule_under_jit(fn, make, kind):
  run_case(fn, make(), kind, jit=True)


@pytest.mark.parametrize("fmt", util.format_params(
    [f for f in util.FORMATS_2D if f[0] in ("csc", "coo", "dcsc", "coo_unordered_nonunique")]))
def test_formats(fmt):
  A = sp(3, fmt=fmt)
  X, v = dn(4, (6, 3)), dn(5, (5,))
  fn = lambda A, X, v: (jnp.tanh(A * 2.0) / v[:, None]) @ X + jnp.max(A, axis=1)[:, None]
  run_case(fn, (A, X, v), "dense", jit=True)
  run_case(lambda A, B: jnp.maximum(A - B, 0.0) * A.T.T, (A, sp(6, fmt=fmt)), "sparse")


def test_batched_and_blocked_operands():
  A = sp(0, (2, 5, 6), "csr", n_batch=1)
  run_case(lambda A, X: A @ X, (A, dn(1, (2, 6, 3))), "dense", jit=True)
  run_case(lambda A, X: jnp.sin(A) * X, (A, dn(1, (2, 5, 6))), "sparse", jit=True)
  B = sp(2, (5, 6, 3), "csr", n_dense=1)
  run_case(lambda B, w: jnp.einsum("ijk,k->ij", B, w), (B, dn(3, (3,))), "dense", jit=True)
  run_case(lambda B: jax.nn.relu(B) * 3.0, (B,), "sparse", jit=True)


def test_non_array_arguments_are_static():
  A = sp(0)
  f = sparsify(lambda A, n, name: A * n if name == "scale" else A)
  assert js.is_sparse(f(A, 3, "scale"))
  np.testing.assert_allclose(f(A, 3, "scale").todense(), 3 * A.todense())


def test_kwargs_and_nested_pytrees():
  A, B = sp(0), sp(1)
  out = sparsify(lambda d, *, x: {"y": d["a"] @ x, "z": (d["b"] * 2.0,)})(
      {"a": A, "b": B}, x=dn(2, (6,)))
  np.testing.assert_allclose(out["y"], A.todense() @ dn(2, (6,)), rtol=1e-5, atol=1e-5)
  assert js.is_sparse(out["z"][0])


def test_dense_only_call_is_unchanged():
  f = lambda x: jnp.exp(x) @ x.T
  x = dn(0, (3, 3))
  np.testing.assert_array_equal(sparsify(f)(x), f(x))


# -- errors and densify ------------------------------------------------------------------------
ERROR_CASES = [
    ("exp", jnp.exp, r"primitive 'exp'.*not zero-preserving \(exp\(0\) = 1\.0\)"),
    ("cos", lambda A: jnp.cos(A) * 2.0, r"primitive 'cos' at .*test_rules.py:\d+.*"
     r"not zero-preserving"),
    ("add-scalar", lambda A: A + 1.0, r"primitive 'add' at .*test_rules.py.*adds a dense "
     r"broadcast or scalar"),
    ("unsupported", lambda A: jnp.cumsum(A, axis=0), r"primitive 'cumsum' at "
     r".*test_rules.py:\d+:\d+ \(<lambda>\) has no sparse rule"),
    ("concatenate-mixed", lambda A: jnp.concatenate([A, jnp.ones(SHAPE)]),
     r"'concatenate'.*joins sparse and dense operands"),
    ("divide-by-sparse", lambda A: 1.0 / A, r"primitive 'div'.*not zero-preserving"),
    ("where-nonzero", lambda A: jnp.where(A > 0, A, 1.0), r"'select_n'.*not all zero"),
    ("scan-carry-grows", lambda A: jax.lax.scan(lambda c, _: (c + c[::-1], None), A, None,
                                                length=2)[0],
     r"'scan'.*changes loop carry 0 .* its pattern cannot grow inside the loop"),
]


@pytest.mark.parametrize("fn,match", [pytest.param(f, m, id=i) for i, f, m in ERROR_CASES])
def test_errors_and_densify(fn, match):
  A = sp(0)
  with pytest.raises(SparsifyError, match=match) as info:
    sparsify(fn)(A)
  assert "densify=True" in str(info.value) and "todense()" in str(info.value)
  assert isinstance(info.value, TypeError)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = sparsify(fn, densify=True)(A)
  effs = [w for w in caught if issubclass(w.category, js.SparseEfficiencyWarning)]
  assert len(effs) == 1, [str(w.message) for w in caught]
  assert re.search(r"densified \d sparse operand\(s\) \((bool|float32)\[5, 6\].*\): "
                   r"\d+ B dense instead of \d+ B stored", str(effs[0].message))
  ref = fn(A.todense())
  for o, r in zip(jax.tree_util.tree_leaves(out, is_leaf=js.is_sparse),
                  jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(np.asarray(dense(o)), r, rtol=1e-5, atol=1e-5)


def test_spgemm_under_jit_needs_eager_sizes():
  A, B = sp(0), sp(1, (6, 4))
  with pytest.raises(SparsifyError, match=r"data-dependent number of entries.*outside jax.jit"):
    jax.jit(sparsify(lambda A, B: A @ B))(A, B)
  with pytest.warns(js.SparseEfficiencyWarning, match="data-dependent size under jit"):
    out = jax.jit(sparsify(lambda A, B: A @ B, densify=True))(A, B)
  np.testing.assert_allclose(out, A.todense() @ B.todense(), rtol=1e-5, atol=1e-5)


def test_shape_error_points_at_user_line():
  A = sp(0)
  with pytest.raises(TypeError, match="dot_general requires contracting dimensions") as info:
    sparsify(lambda A, x: A @ x)(A, jnp.ones((5, 2)))
  frames = [str(f.path) for f in info.traceback]
  assert any(f.endswith("test_rules.py") for f in frames)


def test_rule_error_is_annotated_with_the_primitive():
  A = sp(0)
  with pytest.raises(Exception) as info:
    sparsify(lambda A: jnp.reshape(A, (7, 7)))(A)   # traced dense: shape error at trace time
  assert "reshape" in str(info.value) or "cannot reshape" in str(info.value).lower()


def test_not_callable():
  with pytest.raises(TypeError, match="sparsify: fun must be callable"):
    sparsify(3)
