"""Tests of jscorch/ops/triangular.py: ``tril``, ``triu``, ``diagonal``, ``diag``.

Inputs (``test_coalesce.entries_case``) carry duplicates, explicit zeros and
padding. References: numpy float64 (``np.tril``, ``np.diagonal``, ``np.diag``)
and ``scipy.sparse.tril`` / ``triu`` for 2-D. Masked entries must become padding
(``nse`` kept, ``nnz`` dropped, the format's order and uniqueness intact), except
with a dense block dimension among the last two, where elements become zeros.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps

import jscorch as js
import jscorch.numpy as jsnp

import test_coalesce as tc
import util

F64 = np.float64


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


_nnz = jax.jit(lambda A: A.nnz)

CASES = [
    # (format id, n_batch, n_dense, k values)
    ("csr", 0, 0, (0, -1, 2)),
    ("csc", 0, 0, (1,)),
    ("coo_unordered_nonunique", 0, 0, (0,)),
    ("dcsr", 1, 0, (-2,)),
    ("coo", 0, 1, (0, 1)),          # the last dim is a block dim: zeros inside the blocks
    ("csf3", 0, 0, (0,)),
    ("dense_dcsr3", 0, 0, (-1,)),
]


@pytest.mark.parametrize("fmt_id,n_batch,n_dense,ks", CASES,
                         ids=[f"{f}-b{b}-d{d}" for f, b, d, _ in CASES])
def test_tril_triu_match_numpy(fmt_id, n_batch, n_dense, ks):
  A, x, _ = tc.entries_case(fmt_id, n_batch, n_dense)
  for k in ks:
    for fn, ref in ((js.tril, np.tril), (js.triu, np.triu)):
      B = fn(A, k=k)
      assert (B.format, B.shape, B.nse) == (A.format, A.shape, A.nse)
      tc.check_stored(B, ref(x, k), unique=A.format.unique, ordered=A.format.ordered)
      if not n_dense:     # entries outside the triangle are no longer stored
        for b in np.ndindex(*A.shape[:n_batch]):
          Bb = util.element(B, b[0]) if b else B
          c = util.stored_coordinates(Bb)
          offset = c[:, -1] - c[:, -2]
          assert np.all(offset <= k if fn is js.tril else offset >= k), (fn, k, c)
  if not n_dense:   # below every entry: nothing stays stored
    assert int(np.max(np.asarray(_nnz(js.tril(A, -9))))) == 0


@pytest.mark.parametrize("fmt_id", ["csr", "coo_unordered_nonunique", "dcsc"])
def test_tril_triu_match_scipy(fmt_id):
  A, x, _ = tc.entries_case(fmt_id)
  coords = util.stored_coordinates(A)
  ref = sps.coo_matrix((np.asarray(A.data)[:len(coords)], tuple(coords.T)), shape=A.shape)
  for k in (-1, 0, 1):
    util.assert_allclose(js.tril(A, k).todense(), sps.tril(ref, k).toarray(), F64)
    util.assert_allclose(js.triu(A, k).todense(), sps.triu(ref, k).toarray(), F64)
    # Entry for entry: duplicates and explicit zeros stay as they are, like scipy's.
    assert int(js.tril(A, k).nnz) == sps.tril(ref, k).nnz


def test_tril_transformations():
  A, x, _ = tc.entries_case("dcsr", 1, 0)
  f = jax.jit(lambda A: js.triu(A, k=1))
  util.assert_allclose(f(A).todense(), np.triu(x, 1), F64)
  V = jax.vmap(lambda A: js.tril(A))(A)
  assert V.n_batch == 1
  util.assert_allclose(V.todense(), np.tril(x), F64)
  out = jax.eval_shape(lambda A: js.tril(A, -1), A)
  assert (out.shape, out.nse, out.format) == (A.shape, A.nse, A.format)
  util.check_grads_both(jax.jit(lambda d: js.tril(A.with_data(d), 1).todense()), [A.data])
  B, xb, _ = tc.entries_case("coo", 0, 1)
  util.check_grads_both(jax.jit(lambda d: js.triu(B.with_data(d)).data), [B.data])


def test_tril_errors():
  A, x, _ = tc.entries_case("csr")
  with pytest.raises(TypeError, match=r"^tril: k must be an int; got float 1\.5\.$"):
    js.tril(A, 1.5)
  with pytest.raises(TypeError, match=r"^triu: k must be a static Python int because it fixes "
                     r"buffer shapes; got a traced value\. Pass k= as a concrete int"):
    jax.jit(lambda A, k: js.triu(A, k))(A, 1)
  v = js.from_dense(np.array([1., 0., 2.]), format="coo")
  with pytest.raises(ValueError, match=(
      r"^tril: needs an array of rank >= 2; got SparseArray\(float64\[3\], format=COO, nse=2\), "
      r"expected at least two dimensions \(the triangle is taken in the last two\)\.$")):
    js.tril(v)
  np.testing.assert_array_equal(np.asarray(jsnp.tril(jnp.asarray(x), -1)), np.tril(x, -1))
  util.assert_allclose(jsnp.triu(A, 1).todense(), np.triu(x, 1), F64)


# -- diagonal / diag ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_id,n_batch,n_dense,calls", [
    ("csr", 0, 0, ((0, 0, 1), (2, 0, 1), (-3, 1, 0))),
    ("coo_unordered_nonunique", 0, 0, ((1, 0, 1),)),
    ("dcsr", 1, 0, ((0, 1, 2), (-1, 0, 2))),
    ("coo", 0, 1, ((0, 1, 2), (1, 0, 1))),
    ("csf3", 0, 0, ((1, 0, 2), (0, -1, -2))),
], ids=["csr", "coo_unordered", "dcsr_batched", "coo_block", "csf3"])
def test_diagonal_matches_numpy(fmt_id, n_batch, n_dense, calls):
  A, x, _ = tc.entries_case(fmt_id, n_batch, n_dense)
  for offset, a1, a2 in calls:
    util.assert_allclose(A.diagonal(offset, a1, a2), np.diagonal(x, offset, a1, a2), F64,
                         err_msg=f"{offset, a1, a2}")
  if A.ndim == 2:
    util.assert_allclose(js.diag(A, 1), np.diag(x, 1), F64)
    util.assert_allclose(jsnp.diagonal(A), np.diagonal(x), F64)


def test_diagonal_transformations():
  A, x, _ = tc.entries_case("coo_unordered_nonunique", 1, 0)
  f = jax.jit(lambda A: A.diagonal(1, 1, 2))
  util.assert_allclose(f(A), np.diagonal(x, 1, 1, 2), F64)
  util.assert_allclose(jax.vmap(lambda A: A.diagonal())(A), np.diagonal(x, 0, 1, 2), F64)
  assert jax.eval_shape(lambda A: js.diagonal(A, -1, 0, 2), A).shape == (4, 1) == np.diagonal(
      x, -1, 0, 2).shape
  util.check_grads_both(jax.jit(lambda d: A.with_data(d).diagonal(0, 1, 2)), [A.data])


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "dcsr", util.DCSC],
                         ids=["csr", "csc", "coo", "dcsr", "dcsc"])
def test_diag_builds_matrix(fmt):
  v = util.random_values(1, (4,), F64)
  v[2] = 0.
  for k in (0, 2, -1):
    D = js.diag(jnp.asarray(v), k, format=fmt)
    assert D.shape == (4 + abs(k),) * 2 and D.nse == 4
    util.assert_allclose(D.todense(), np.diag(v, k), F64)
    assert int(D.nnz) == 4                              # zeros of v are stored too
    util.assert_allclose(D.to_scipy().toarray(), sps.diags(v, k).toarray(), F64)
  np.testing.assert_array_equal(util.stored_coordinates(js.diag(jnp.asarray(v), 1)),
                                [[0, 1], [1, 2], [2, 3], [3, 4]])


def test_diag_transformations():
  v = jnp.asarray(util.random_values(2, (3,), F64))
  D = jax.jit(lambda v: js.diag(v, -1, format="coo"))(v)
  util.assert_allclose(D.todense(), np.diag(np.asarray(v), -1), F64)
  vs = jnp.asarray(util.random_values(3, (2, 3), F64))
  B = jax.vmap(js.diag)(vs)
  assert B.n_batch == 1 and B.shape == (2, 3, 3)
  util.assert_allclose(B.todense(), np.stack([np.diag(r) for r in np.asarray(vs)]), F64)
  assert jax.eval_shape(lambda v: js.diag(v, 2), v).shape == (5, 5)
  util.check_grads_both(jax.jit(lambda v: js.diag(v, 1).todense()), [v])
  util.check_grads_both(jax.jit(lambda v: js.diag(v) @ v), [v])


def test_diag_diagonal_errors_and_dense():
  A, x, _ = tc.entries_case("csf3")
  with pytest.raises(ValueError, match=(
      r"^diagonal: axis1 and axis2 must differ; got axis1=0, axis2=-3 \(both dimension 0\)\. "
      r"Pick two different axes\.$")):
    A.diagonal(0, 0, -3)
  with pytest.raises(ValueError, match=(
      r"^diagonal: axis out of range; got axis=3, expected -3 <= axis < 3 for an array of rank "
      r"3\.$")):
    js.diagonal(A, 0, 0, 3)
  with pytest.raises(TypeError, match=r"^diagonal: offset must be an int; got float 1\.0\.$"):
    A.diagonal(1.0)
  with pytest.raises(ValueError, match=(
      r"^diag: a SparseArray must be 2-D \(its diagonal is read\); got SparseArray\(float64\[2, "
      r"3, 4\], format=CSF, nse=\d+\)\. For a sparse vector call js\.diag\(v\.todense\(\), k\)\.$")):
    js.diag(A)
  with pytest.raises(ValueError, match=(
      r"^diag: expects a 1-D vector or a 2-D matrix; got v\.shape=\(2, 3, 4\)\.$")):
    js.diag(x)
  with pytest.raises(ValueError, match=(
      r"^diag: n_dense=0 conflicts with the format's own n_dense=1; got format=Format\(dense, "
      r"compressed, n_dense=1\)\. Pass one or the other\.$")):
    js.diag(np.ones(3), format=js.CSR.replace(n_dense=1))
  with pytest.raises(TypeError, match=r"^diag: k must be an int; got str '1'\.$"):
    js.diag(np.ones(3), "1")
  m = np.arange(6.).reshape(2, 3)
  np.testing.assert_array_equal(np.asarray(js.diag(m, 1)), np.diag(m, 1))
  np.testing.assert_array_equal(np.asarray(jsnp.diag(m)), np.diag(m))
