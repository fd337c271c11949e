"""Where a new user meets jscorch: array conventions and the seams with numpy, JAX and Flax.

Comparisons, ``bool``, ``np.asarray`` and ``hash`` of a SparseArray; the errors that
``jnp.*`` / ``jax.nn.*`` / Flax layers / ``jax.vmap`` give for one; ``from_coo``'s
negative and 64-bit coordinates; ``ShardedSparseArray @``; ``js.nn`` after
``import jscorch``; other libraries' sparse matrices given to jscorch functions.
"""
from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from flax import nnx
from jax.experimental import sparse as jsparse

import jscorch as js
import jscorch.array
import util

SHAPE = (5, 4)


@pytest.fixture(scope="module")
def A_x():
  """A CSR array with padding and negative, positive and repeated values, and its dense copy."""
  x = util.random_dense(3, SHAPE, density=0.6)
  x[0, 0], x[1, 1] = 2.0, 2.0                           # a value to compare with ==
  A = js.from_dense(x, "csr", nse=util.stored_count(x) + 2)
  return A, x


def _dup_coo():
  """A COO array storing (0, 1) twice (1 + 1) and (1, 0) once, with one padding slot."""
  return js.SparseArray.from_buffers(
      jnp.array([1., 1., 3., 0.]),
      [jnp.array([0, 3]), jnp.array([0, 0, 1, 2]), jnp.array([1, 1, 0, 2])],
      shape=(2, 2), format=util.UNORDERED_COO)


# -- comparisons ------------------------------------------------------------------------------
@pytest.mark.parametrize("symbol, s", [("!=", 0), (">", 0), ("<", 0), ("==", 2.0),
                                       (">=", 1.5), ("<=", -0.5)])
def test_scalar_comparison_is_sparse_with_the_same_pattern(A_x, symbol, s):
  A, x = A_x
  op = jscorch.array._COMPARISONS[symbol]
  out = op(A, s)
  assert js.is_sparse(out) and out.dtype == jnp.bool_
  assert out.format == A.format and out.nse == A.nse
  np.testing.assert_array_equal(np.asarray(out.todense()), op(x, s))


def test_scalar_comparison_reflected_and_under_jit(A_x):
  A, x = A_x
  np.testing.assert_array_equal(np.asarray((0 < A).todense()), x > 0)
  out = jax.jit(lambda A: A != 0)(A)
  assert js.is_sparse(out)
  np.testing.assert_array_equal(np.asarray(out.todense()), x != 0)


def test_comparison_sums_duplicates_first():
  A = _dup_coo()
  np.testing.assert_array_equal(np.asarray((A == 2).todense()), [[False, True], [False, False]])
  np.testing.assert_array_equal(np.asarray((A == 1).todense()), np.zeros((2, 2), bool))


def test_comparison_with_a_dense_array_is_dense(A_x):
  A, x = A_x
  y = util.random_dense(4, SHAPE, density=1.0)
  y[x != 0] = x[x != 0]                                 # some equal entries
  for other in (jnp.asarray(y), y):
    np.testing.assert_array_equal(np.asarray(A == other), x == y)
    np.testing.assert_array_equal(np.asarray(other == A), y == x)
    np.testing.assert_array_equal(np.asarray(A < other), x < y)


def test_comparisons_that_would_be_dense_raise(A_x):
  A, _ = A_x
  with pytest.raises(ValueError, match=r"SparseArray ==: A == 0 is True at every implicit zero "
                                       r"of A, so the result is dense; .*Use the complement, "
                                       r"A != 0, which is sparse"):
    A == 0   # noqa: B015
  with pytest.raises(ValueError, match=r"SparseArray >=: A >= 0 is True .* A < 0"):
    A >= 0   # noqa: B015


def test_comparing_two_sparse_arrays_is_never_identity(A_x):
  A, _ = A_x
  for expr in (lambda: A == A, lambda: A != A, lambda: A < A):
    with pytest.raises(TypeError, match=r"comparing two SparseArrays elementwise is not "
                                        r"supported; .*A.todense\(\) (==|!=|<) B.todense\(\)"):
      expr()


def test_comparison_with_a_traced_scalar_raises(A_x):
  A, _ = A_x
  with pytest.raises(TypeError, match=r"SparseArray !=: the scalar is traced.*"
                                      r"A.with_data\(A.data != s\)"):
    jax.jit(lambda A, s: A != s)(A, 1.0)


# -- bool, np.asarray, hash --------------------------------------------------------------------
def test_bool_follows_numpy(A_x):
  A, _ = A_x
  with pytest.raises(ValueError, match=r"The truth value of an array with more than one element "
                                       r"is ambiguous"):
    bool(A)
  with pytest.raises(ValueError, match=r"The truth value of an empty array is ambiguous"):
    bool(js.from_dense(jnp.zeros((0, 3))))
  assert bool(js.from_dense(jnp.array([[2.5]]))) is True
  assert bool(js.from_dense(jnp.array([[0.]]), nse=1)) is False


def test_asarray_is_the_dense_array(A_x, monkeypatch):
  A, x = A_x
  out = np.asarray(A)
  assert isinstance(out, np.ndarray) and out.dtype == np.float32
  np.testing.assert_array_equal(out, x)
  assert np.asarray(A, dtype=np.float64).dtype == np.float64
  np.testing.assert_array_equal(np.array(A, copy=True), x)
  with pytest.raises(ValueError, match=r"SparseArray.__array__: a SparseArray has no dense "
                                       r"buffer to share; got copy=False"):
    np.array(A, copy=False)
  monkeypatch.setattr(jscorch.array, "DENSE_WARN_SIZE", 10)
  with pytest.warns(js.SparseEfficiencyWarning, match=r"np.asarray: densifying .* into 20 "
                                                      r"elements"):
    np.asarray(A)


def test_unhashable_like_jax_arrays(A_x):
  A, _ = A_x
  with pytest.raises(TypeError, match=r"unhashable type: 'SparseArray'"):
    hash(A)
  with pytest.raises(TypeError, match=r"unhashable"):
    {A}   # noqa: B018


def test_numpy_and_jax_operands_still_reach_sparse_operators(A_x):
  A, x = A_x
  y = util.random_dense(5, SHAPE, density=1.0)
  np.testing.assert_allclose(np.asarray(jnp.asarray(y) + A), y + x, rtol=1e-6)
  np.testing.assert_allclose(np.asarray((y * A).todense()), y * x, rtol=1e-6)
  np.testing.assert_allclose(np.asarray((np.float32(2) * A).todense()), 2 * x)
  v = y[:, 0]
  np.testing.assert_allclose(np.asarray(v @ A), v @ x, rtol=1e-5, atol=1e-6)
  out = jax.jit(lambda y, A: y - A)(jnp.asarray(y), A)      # tracer on the left
  np.testing.assert_allclose(np.asarray(out), y - x, rtol=1e-6)


# -- JAX, Flax and other libraries ------------------------------------------------------------
REFUSED = r"got a SparseArray .*never densifies implicitly.*A.sum\(\).*jscorch.numpy.*js.sparsify"


@pytest.mark.parametrize("call", [
    lambda A: jnp.sum(A),
    lambda A: jnp.dot(A, jnp.ones(SHAPE[1])),
    lambda A: jax.nn.relu(A),
    lambda A: nnx.Dropout(0.5, rngs=nnx.Rngs(0))(A),
    lambda A: nnx.Linear(SHAPE[1], 3, rngs=nnx.Rngs(0))(A),
    lambda A: jnp.asarray(A),
], ids=["jnp.sum", "jnp.dot", "jax.nn.relu", "nnx.Dropout", "nnx.Linear", "jnp.asarray"])
def test_jax_and_flax_functions_point_to_the_sparse_way(A_x, call):
  A, _ = A_x
  with pytest.raises(TypeError, match=REFUSED):
    call(A)


def test_vmap_over_an_unbatched_array_says_how_to_batch():
  # 9 rows and nse 10: pos, crd and data all have 10 slots, so vmap splits them silently
  A = js.from_dense(util.random_dense(6, (9, 4), density=10 / 36), "csr", nse=10)
  with pytest.raises(js.SparseFormatError, match=r"jax.vmap maps over a SparseArray without "
                                                 r"batch dimensions .*n_batch=1.*js.stack"):
    jax.vmap(lambda a: a.todense())(A)
  assert jax.vmap(lambda a, v: a @ v, in_axes=(None, 0))(A, jnp.ones((2, 4))).shape == (2, 9)


def test_grad_advice_in_the_docs_works(A_x):
  """``jax.grad`` w.r.t. a SparseArray cannot be hooked; the documented ways work."""
  A, x = A_x
  f = lambda A: (A * A).sum()
  g = js.grad(f)(A)
  g_int = jax.grad(f, allow_int=True)(A)
  np.testing.assert_allclose(np.asarray(g.todense()), 2 * x, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g_int.data), np.asarray(g.data), rtol=1e-6)
  assert "js.grad" in js.SparseArray.__doc__ or "jscorch.grad" in js.SparseArray.__doc__


@pytest.mark.parametrize("kind", ["scipy", "bcoo"])
def test_other_libraries_sparse_matrices_get_a_conversion_hint(A_x, kind):
  A, _ = A_x
  m = sp.random(400, 300, density=0.5, format="csr", random_state=0, dtype=np.float32)
  if kind == "bcoo":
    m = jsparse.BCOO.from_scipy_sparse(m)
  hint = r"js.from_scipy\(x\)" if kind == "scipy" else r"js.from_bcoo\(x\)"
  shown = r"csr_matrix\(float32\[400, 300\]\)" if kind == "scipy" else r"BCOO\(float32\[400, 300\]\)"
  calls = [lambda: js.einsum("ij,j->i", m, jnp.ones(300)), lambda: js.sum(m),
           lambda: js.matmul(m, jnp.ones(300)), lambda: js.transpose(m),
           lambda: js.maximum(m, A), lambda: js.power(m, 2),
           lambda: js.multiply(A, m), lambda: A + m, lambda: A @ m, lambda: A == m]
  for call in calls:
    with pytest.raises(TypeError, match=rf"got {shown}\..*{hint}") as info:
      call()
    assert len(str(info.value)) < 400        # never the matrix itself


# -- from_coo: negative and 64-bit coordinates --------------------------------------------------
def test_from_coo_negative_coordinates_are_refused_eagerly_and_dropped_under_jit():
  idx = np.array([[-1, 0], [1, 2], [0, -3], [2, 1]], np.int32)
  vals = np.array([1., 2., 3., 4.], np.float32)
  want = np.zeros((3, 3), np.float32)
  want[1, 2], want[2, 1] = 2., 4.                       # never wrapped to the last row/column
  with pytest.raises(js.SparseFormatError, match=r"indices\[0\] = \(-1, 0\) .*Negative "
                                                 r"coordinates are not wrapped"):
    js.from_coo(idx, vals, (3, 3))
  np.testing.assert_array_equal(
      np.asarray(util.jit_todense(util.jit_from_coo(idx, vals, shape=(3, 3)))), want)
  np.testing.assert_array_equal(np.asarray(js.from_coo(idx, vals, (3, 3), check=False).todense()),
                                want)


def test_from_coo_int64_coordinates_need_x64():
  idx = np.array([[2 ** 31 + 1, 0], [1, 1]], np.int64)
  vals = np.array([1., 2.], np.float32)
  assert not jax.config.jax_enable_x64
  with pytest.raises(js.SparseFormatError, match=r"indices\[0\] = \(2147483649, 0\) .*this index "
                                                 r"space needs jax_enable_x64"):
    js.from_coo(idx, vals, (2, 2))
  kept = js.from_coo(idx, vals, (2, 2), check=False)         # dropped, not wrapped into range
  np.testing.assert_array_equal(np.asarray(kept.todense()), [[0., 0.], [0., 2.]])
  with pytest.raises(js.SparseFormatError, match=r"overflows int32.*jax_enable_x64"):
    js.from_coo(np.array([[2 ** 31 + 1, 0]]), vals[:1], (2 ** 31 + 5, 2))


def test_from_coo_large_int64_coordinates_are_not_wrapped_under_jit():
  with jax.enable_x64(True):
    idx = jnp.array([[2 ** 32 + 1, 0], [1, 1]], jnp.int64)   # 2**32 + 1 would wrap to 1
    out = jax.jit(lambda i: js.from_coo(i, jnp.ones(2), (3, 3), nse=2).todense())(idx)
  np.testing.assert_array_equal(np.asarray(out), [[0., 0., 0.], [0., 1., 0.], [0., 0., 0.]])


# -- ShardedSparseArray @ -------------------------------------------------------------------------
def test_sharded_matmul_keeps_the_shape_contract():
  from jscorch import distributed as jsd
  mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  A, a = util.random_sparse(7, (9, 9), "csr", density=0.4)
  As = jsd.shard(A, mesh, axis="x", reorder="degree")     # node layout: 10 rows (one spare)
  x = util.random_dense(8, (9, 3), density=1.0)
  ref = util.reference(a) @ util.reference(x)
  y = As @ x
  assert y.shape == (9, 3)
  util.assert_allclose(y, ref, np.float32)
  util.assert_allclose(As @ x[:, 0], ref[:, 0], np.float32)
  node = As.spmm(x)
  assert node.shape == (As.layout.rows.padded, 3) and node.shape[0] != 9
  util.assert_allclose(As.unshard_rows(node), ref, np.float32)
  util.assert_allclose(jax.jit(lambda A, x: A @ x)(As, x), ref, np.float32)
  with pytest.raises(jsd.SparseShardingError, match=r"ShardedSparseArray @: x must be a global "
                                                    r"array .*x.shape=\(10, 3\), expected "
                                                    r"\(9, ...\).*use A.spmm\(x\)"):
    As @ As.shard_cols(x)


# -- import jscorch ---------------------------------------------------------------------------
def test_import_jscorch_gives_nn_and_graph():
  code = ("import jscorch as js; print(js.nn.GCNConv.__name__, js.graph.__name__, "
          "'nn' in dir(js))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["GCNConv", "jscorch.graph", "True"]
