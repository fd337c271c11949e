"""``js.maximum`` / ``js.minimum``: unions whose implicit zeros take part."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import jscorch.numpy as jsnp

import util

F64 = np.float64


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


FUNCS = [(js.maximum, np.maximum), (js.minimum, np.minimum)]
IDS = ["maximum", "minimum"]


@pytest.mark.parametrize("fn, ref", FUNCS, ids=IDS)
@pytest.mark.parametrize("fa, fb", [("csr", "csc"), ("coo", util.DCSC),
                                    (util.UNORDERED_COO, "csr")],
                         ids=["csr_csc", "coo_dcsc", "unordered_coo_csr"])
def test_two_sparse_eager_and_jit(fn, ref, fa, fb):
  A, a = util.random_sparse(1, (4, 5), fa, dtype=F64)
  B, b = util.random_sparse(2, (4, 5), fb, dtype=F64)
  C = fn(A, B)
  assert js.is_sparse(C) and C.nse == int(np.count_nonzero((a != 0) | (b != 0)))
  util.assert_allclose(C.todense(), ref(a, b), F64)
  D = jax.jit(lambda A, B: fn(A, B, nse=A.nse + B.nse))(A, B)
  assert D.nse == A.nse + B.nse
  util.assert_allclose(D.todense(), ref(a, b), F64)


def test_implicit_zeros_take_part():
  A = js.from_dense(np.array([[-1., 0.], [0., 2.]]))
  B = js.from_dense(np.array([[0., -3.], [0., 1.]]))
  np.testing.assert_array_equal(js.maximum(A, B).todense(), [[0., 0.], [0., 2.]])
  np.testing.assert_array_equal(js.minimum(A, B).todense(), [[-1., -3.], [0., 1.]])


@pytest.mark.parametrize("fn, ref", FUNCS, ids=IDS)
def test_grads_vmap_and_eval_shape(fn, ref):
  A, a = util.random_sparse(3, (3, 4), "csr", dtype=F64)
  B, b = util.random_sparse(4, (3, 4), "coo", dtype=F64)
  nse = A.nse + B.nse
  f = lambda x, y: fn(A.with_data(x), B.with_data(y), nse=nse).data
  util.check_grads_both(f, (A.data, B.data))
  ga, gb = jax.grad(lambda x, y: jnp.sum(fn(A.with_data(x), B.with_data(y)).todense()),
                    argnums=(0, 1))(A.data, B.data)
  dense_fn = getattr(jnp, ref.__name__)
  wa, wb = jax.grad(lambda x, y: jnp.sum(dense_fn(x, y)), argnums=(0, 1))(jnp.asarray(a),
                                                                        jnp.asarray(b))
  util.assert_allclose(A.with_data(ga).todense(), np.where(a != 0, wa, 0), F64)
  util.assert_allclose(B.with_data(gb).todense(), np.where(b != 0, wb, 0), F64)
  scales = jnp.asarray([1., -2.])
  got = jax.vmap(lambda s: fn(A.with_data(A.data * s), B, nse=nse).todense())(scales)
  for k, s in enumerate([1., -2.]):
    util.assert_allclose(got[k], ref(a * s, b), F64)
  shape = jax.eval_shape(lambda A, B: fn(A, B, nse=nse), A, B)
  assert shape.shape == (3, 4) and shape.nse == nse


def test_scalar_zero_keeps_pattern_other_operands_are_dense():
  A, a = util.random_sparse(5, (4, 5), "csr", dtype=F64)
  R = js.maximum(A, 0.)
  assert js.is_sparse(R) and R.format == A.format and R.nse == A.nse
  util.assert_allclose(R.todense(), np.maximum(a, 0), F64)
  util.assert_allclose(jsnp.minimum(A, 0.).todense(), np.minimum(a, 0), F64)
  R = jax.jit(lambda A: js.maximum(A, 0.))(A)       # a Python zero is still known under jit
  assert js.is_sparse(R) and R.format == A.format
  util.assert_allclose(R.todense(), np.maximum(a, 0), F64)
  x = util.random_values(6, (4, 5), F64)
  util.assert_allclose(js.maximum(A, x), np.maximum(a, x), F64)
  util.assert_allclose(js.minimum(x, A), np.minimum(x, a), F64)
  util.assert_allclose(js.maximum(A, 1.), np.maximum(a, 1.), F64)


def test_errors():
  A, _ = util.random_sparse(7, (4, 5), "csr", dtype=F64)
  B, _ = util.random_sparse(8, (5, 4), "csr", dtype=F64)
  with pytest.raises(ValueError, match=r"maximum: sparse operands must have the same shape; "
                                       r"got a.shape=\(4, 5\), b.shape=\(5, 4\)"):
    js.maximum(A, B)
  with pytest.raises(TypeError, match=r"minimum: nse= sets the capacity .* Drop nse="):
    js.minimum(A, np.ones((4, 5)), nse=3)
  with pytest.raises(js.SparseCapacityError, match=r"maximum: the union needs \d+ stored "
                                                   r"entries but its capacity is nse=1"):
    js.maximum(A, js.from_dense(np.ones((4, 5))), nse=1)


def test_result_dtypes_follow_jnp_promotion():
  """Integer, bool and half-precision operands promote as in ``jnp`` on the dense arrays:
  ``maximum(int8 A, 0.0)`` is float32 (it kept int8 before), ``A ** 2.0`` of an int8
  array is float32 (it wrapped 100 ** 2 to 16 before), and a comparison with a scalar
  the dtype wraps decides sparsity with the same semantics as its stored values."""
  x = jnp.array([[100, 0, -2], [0, 3, 0]], jnp.int8)
  A = js.from_dense(x)
  cases = [(js.maximum(A, 0.0), jnp.maximum(x, 0.0)),
           (js.minimum(A, np.float32(0)), jnp.minimum(x, np.float32(0))),
           (js.maximum(A, jnp.array(0, jnp.int32)), jnp.maximum(x, jnp.array(0, jnp.int32))),
           (js.maximum(js.from_dense(x != 0), 0), jnp.maximum(x != 0, 0)),
           (js.minimum(A.astype(jnp.float16), np.float32(0)),
            jnp.minimum(x.astype(jnp.float16), np.float32(0))),
           (A ** 2.0, x ** 2.0), (A ** np.float32(2), x ** np.float32(2)), (A ** 2, x ** 2),
           (js.from_dense(x != 0) ** 2, (x != 0) ** 2),     # int32 under x64 (was int64)
           (abs(A).astype(jnp.float16) ** np.float32(0.5),
            abs(x).astype(jnp.float16) ** np.float32(0.5))]
  for got, want in cases:
    assert got.dtype == want.dtype, (got, want.dtype)
    np.testing.assert_array_equal(np.asarray(got.todense(), np.float64),
                                  np.asarray(want, np.float64))
  u = js.from_dense(jnp.array([[1, 0, 2]], jnp.uint8))
  with pytest.raises(ValueError, match=r"A < -1 is True at every implicit zero"):
    u < -1                          # jnp: -1 is 255 in uint8, so 0 < -1 is True


def test_subtract_and_mean_follow_jnp_dtypes():
  """``A - B`` negates ``B`` in the result's dtype (a uint8 ``B`` was negated as uint8,
  wrapping: int8 0 - uint8 1 gave 255, float32 1.5 - uint8 1 gave 256.5), and ``mean``
  with an integer ``dtype`` divides as integers as ``jnp.mean`` does (it returned a
  float), summing float16 in float32."""
  rng = np.random.default_rng(61)
  a = jnp.asarray(rng.integers(-5, 6, (3, 4)) * (rng.random((3, 4)) < 0.6), jnp.int8)
  b = jnp.asarray(rng.integers(0, 6, (3, 4)) * (rng.random((3, 4)) < 0.6), jnp.uint8)
  f = jnp.asarray(rng.standard_normal((3, 4)) * (rng.random((3, 4)) < 0.6), jnp.float32)
  A, B, F = (js.from_dense(t, format="csr", nse=int((t != 0).sum()) + 2) for t in (a, b, f))
  for got, want in [(A - B, a - b), (F - B, f - b), (B - A, b - a),
                    (jax.jit(lambda A, B: A - B)(A, B), a - b)]:
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got.todense()), np.asarray(want))
  cases = [(js.mean(A, dtype=jnp.int32), jnp.mean(a, dtype=jnp.int32)),
           (A.mean(axis=1, dtype=jnp.int8), jnp.mean(a, axis=1, dtype=jnp.int8)),
           (B.mean(axis=0, dtype=jnp.uint8), jnp.mean(b, axis=0, dtype=jnp.uint8)),
           (A.mean(axis=0), jnp.mean(a, axis=0)),
           (F.astype(jnp.float16).mean(axis=1), jnp.mean(f.astype(jnp.float16), axis=1))]
  for got, want in cases:                 # integers exact; floats up to the last bit
    assert got.dtype == want.dtype, (got, want)
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=1e-3 if want.dtype == jnp.float16 else 1e-6)


def test_bool_and_unsigned_products():
  """All-bool products are bool, true where any product is (as ``jnp``: they raised a
  JAX TypeError from an integer add); an unsigned sparse-sparse product does not trip
  over its overflow poison value (-1 is not a uint8)."""
  rng = np.random.default_rng(5)
  x = rng.random((4, 5)) < 0.4
  v = rng.random(5) < 0.5
  A = js.from_dense(x)
  np.testing.assert_array_equal(A @ v, x @ v)
  np.testing.assert_array_equal(js.einsum("ij,kj->ik", A, x), jnp.einsum("ij,kj->ik", x, x))
  got = js.einsum("ij,ij->ij", A, A)
  assert got.dtype == jnp.bool_ and js.is_sparse(got)
  np.testing.assert_array_equal(got.todense(), x)
  u = rng.integers(0, 4, (4, 5)).astype(np.uint8)
  U = js.from_dense(u, format="csr")
  product = U @ U.T
  np.testing.assert_array_equal(product.todense() if js.is_sparse(product) else product,
                                u.astype(np.int64) @ u.T.astype(np.int64))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_products_accumulate_in_float32(dtype):
  """Row sums and products of float16 / bfloat16 arrays accumulate in float32 and round once,
  as ``jnp`` does: summed in bfloat16 a row of 4096 ones stalled at 256 (float16: 2048)."""
  x = np.ones((3, 4096), np.float32)
  x[1, ::3] = 0.0
  x[2] = np.random.default_rng(67).random(4096)
  xh = jnp.asarray(x, dtype)
  A = js.from_dense(xh, format="csr", nse=int((x != 0).sum()) + 5)
  v = jnp.ones(4096, dtype)
  for got, want in [(A.sum(axis=1), jnp.sum(xh, axis=1)), (A @ v, xh @ v),
                    (jax.jit(lambda A, v: A @ v)(A, v), xh @ v),
                    (js.einsum("ij,j->i", A, v), jnp.einsum("ij,j->i", xh, v))]:
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                               rtol=2 ** -7)
  g = jax.grad(lambda d: jnp.sum((A.with_data(d) @ v).astype(jnp.float32)))(A.data)
  assert g.dtype == dtype
  np.testing.assert_array_equal(np.asarray(g[:int(A.nnz)], np.float32), 1.0)
