"""Tests of jscorch/ops/reduce.py: ``max``, ``min``, ``mean``, ``count_nonzero`` (implicit
zeros count) and ``segment_max`` / ``segment_min`` (stored entries only).

Inputs (``test_coalesce.entries_case``) carry duplicates (one pair cancelling to
zero), explicit zeros and padding; with ``full_rows`` the first row is completely
stored with negative values (its max has no implicit zero) and the second with
positive ones (its min has none). References: numpy float64 on the dense array,
``scipy.sparse`` ``.max(axis)`` / ``.min(axis)`` for 2-D, and a masked numpy
reduction for the segment functions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps
from jax.test_util import check_grads

import jscorch as js
import jscorch.numpy as jsnp

import test_coalesce as tc
import util

F64 = np.float64


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


CASES = [
    # (format id, n_batch, n_dense, axes to reduce)
    ("csr", 0, 0, (None, 1, 0)),
    ("csc", 0, 0, (1, (0, 1))),
    ("coo_unordered_nonunique", 0, 0, (None, -1)),
    ("dcsr", 1, 0, (2, (0, 2))),
    ("coo", 0, 1, (1, 2, (0, 1))),
    ("csf3", 0, 0, (2, (0, 1))),
    ("dense_dcsr3", 0, 0, (0, 1)),
]
CASE_IDS = [f"{f}-b{b}-d{d}" for f, b, d, _ in CASES]


def case(fmt_id, n_batch, n_dense, **kw):
  return tc.entries_case(fmt_id, n_batch, n_dense, full_rows=True, **kw)


@pytest.mark.parametrize("fmt_id,n_batch,n_dense,axes", CASES, ids=CASE_IDS)
def test_max_min_mean_count_match_numpy(fmt_id, n_batch, n_dense, axes):
  A, x, _ = case(fmt_id, n_batch, n_dense)
  for axis in axes:
    for name, ref in (("max", np.max), ("min", np.min), ("mean", np.mean),
                      ("count_nonzero", np.count_nonzero)):
      got = getattr(js, name)(A, axis=axis)
      want = ref(x, axis=axis)
      if name == "count_nonzero":
        assert got.dtype == jnp.count_nonzero(jnp.ones(1)).dtype
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"{name} {axis}")
      else:
        util.assert_allclose(got, want, F64, err_msg=f"{name} axis={axis}")


def test_implicit_zeros_and_full_rows():
  # Row 0 stores only negatives but has implicit zeros; row 1 is full of negatives;
  # row 2 stores duplicates summing to -1 next to an explicit zero; row 3 is empty.
  # Row 1 also holds a duplicate: (1, 0) = -2 - 1.
  idx = np.array([[0, 0], [0, 2], [1, 0], [1, 1], [1, 2], [2, 1], [2, 1], [2, 2], [1, 0]])
  val = np.array([-1., -3., -2., -5., -4., 1., -2., 0., -1.])
  A = tc.unordered_coo(idx, val, (4, 3), nse=11)
  np.testing.assert_array_equal(np.asarray(A.max(axis=1)), [0., -3., 0., 0.])
  np.testing.assert_array_equal(np.asarray(A.min(axis=1)), [-3., -5., -1., 0.])
  np.testing.assert_array_equal(np.asarray(js.count_nonzero(A, axis=1)), [2, 3, 1, 0])
  np.testing.assert_array_equal(np.asarray(js.segment_max(A, axis=1)), [-1., -3., 0., -np.inf])
  np.testing.assert_array_equal(np.asarray(js.segment_min(A, axis=1, empty=7.)),
                                [-3., -5., -1., 7.])
  ref = sps.coo_matrix((val, tuple(idx.T)), shape=(4, 3))
  for axis in (0, 1, None):
    np.testing.assert_array_equal(np.ravel(A.max(axis=axis)), scipy_reduce(ref, "max", axis))
    np.testing.assert_array_equal(np.ravel(A.min(axis=axis)), scipy_reduce(ref, "min", axis))


def scipy_reduce(m, name: str, axis):
  """``m.max(axis)`` / ``m.min(axis)`` of a scipy matrix as a flat float64 array."""
  r = getattr(m, name)(axis=axis)
  return np.ravel(r.toarray() if sps.issparse(r) else np.asarray(r)).astype(F64)


@pytest.mark.parametrize("fmt_id", ["csr", "csc", "coo_unordered_nonunique", "dcsc"])
def test_max_min_match_scipy(fmt_id):
  A, _, _ = case(fmt_id, 0, 0, seed=3)
  coords = util.stored_coordinates(A)
  ref = sps.coo_matrix((np.asarray(A.data)[:len(coords)], tuple(coords.T)), shape=A.shape)
  for axis in (0, 1, None):
    util.assert_allclose(np.ravel(js.max(A, axis=axis)), scipy_reduce(ref, "max", axis), F64)
    util.assert_allclose(np.ravel(A.min(axis=axis)), scipy_reduce(ref, "min", axis), F64)


@pytest.mark.parametrize("fmt_id,n_batch,n_dense,axis", [
    ("csr", 0, 0, 1), ("csc", 0, 0, 0), ("coo_unordered_nonunique", 0, 0, 1),
    ("dcsr", 1, 0, 1), ("csf3", 0, 0, (0, 2)), ("coo", 0, 1, 1),
], ids=["csr-rows", "csc-cols", "coo_unordered-rows", "dcsr_batched", "csf3", "coo_block"])
def test_segment_max_min_over_stored_entries(fmt_id, n_batch, n_dense, axis):
  A, x, stored = case(fmt_id, n_batch, n_dense)
  mask = stored.reshape(stored.shape + (1,) * n_dense)
  mask = np.broadcast_to(mask, x.shape)
  util.assert_allclose(js.segment_max(A, axis=axis),
                       np.max(np.where(mask, x, -np.inf), axis=axis), F64)
  util.assert_allclose(js.segment_min(A, axis=axis, empty=0.5),
                       np.where(mask.any(axis=axis), np.min(np.where(mask, x, np.inf),
                                                            axis=axis), 0.5), F64)


def test_transformations():
  A, x, _ = case("dcsr", 1, 0, zeros=False)
  f = jax.jit(lambda A: (A.max(axis=2), A.min(axis=(1, 2)), A.mean(axis=1),
                         js.count_nonzero(A, axis=2), js.segment_max(A, axis=2, empty=0.)))
  got = f(A)
  util.assert_allclose(got[0], x.max(2), F64)
  util.assert_allclose(got[1], x.min((1, 2)), F64)
  util.assert_allclose(got[2], x.mean(1), F64)
  np.testing.assert_array_equal(np.asarray(got[3]), np.count_nonzero(x, axis=2))
  # vmap over the batch dim (and with an unbatched operand), against per-element results.
  v = jax.vmap(lambda A: (A.max(axis=1), js.segment_min(A, axis=0)))(A)
  for b in range(A.shape[0]):
    Ab = util.element(A, b)
    util.assert_allclose(v[0][b], Ab.max(axis=1), F64)
    util.assert_allclose(v[1][b], js.segment_min(Ab, axis=0), F64)
  s = jax.vmap(lambda c, A: c * A.max(), in_axes=(0, None))(jnp.arange(3.), util.element(A, 0))
  util.assert_allclose(s, np.arange(3.) * x[0].max(), F64)
  out = jax.eval_shape(lambda A: A.max(axis=1, keepdims=True), A)
  assert (out.shape, out.dtype) == ((2, 1, 5), A.dtype)
  # Gradients w.r.t. the stored values (distinct values: no ties, piecewise linear). min and
  # segment_max share max's segment reduction: a first-order check suffices there.
  for fn in (lambda d: A.with_data(d).max(axis=2), lambda d: A.with_data(d).mean(axis=(1, 2))):
    util.check_grads_both(jax.jit(fn), [A.data])
  for fn in (lambda d: A.with_data(d).min(axis=1),
             lambda d: js.segment_max(A.with_data(d), axis=2, empty=0.)):
    check_grads(jax.jit(fn), (A.data,), order=1, modes=("rev",))


def test_gradient_follows_jnp_max():
  # Ties split the cotangent evenly, as jnp.max: two stored maxima (row 0), a stored 0
  # with no implicit zero (row 1: full), duplicates summing to the maximum (row 2: each
  # duplicate gets the coordinate's cotangent), a stored 0 tying with an implicit zero
  # (row 3: the implicit zero's half is dropped).
  idx = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 0], [2, 0], [3, 0], [3, 1]])
  val = np.array([2., 2., 0., -1., -3., 1.5, 1.5, 0., -1.])
  A = tc.unordered_coo(idx, val, (4, 3), nse=11)
  g_sparse = jax.grad(lambda d: A.with_data(d).max(axis=1).sum())(A.data)
  g_dense = jax.grad(lambda x: jnp.max(x, axis=1).sum())(A.todense())
  np.testing.assert_array_equal(np.asarray(g_sparse), [.5, .5, 1, 0, 0, 1, 1, .5, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(g_sparse)[:9], np.asarray(g_dense)[tuple(idx.T)])


def test_errors():
  A, _, _ = case("csr", 0, 0)
  with pytest.raises(ValueError, match=(
      r"^max: axis out of range; got axis=2, expected -2 <= axis < 2 for an array of rank 2\.$")):
    A.max(axis=2)
  with pytest.raises(ValueError, match=r"^segment_min: repeated axis; got axis=\(1, -1\), "
                     r"expected distinct axes\.$"):
    js.segment_min(A, axis=(1, -1))
  with pytest.raises(TypeError, match=r"^max: axis must be a static Python int"):
    jax.jit(lambda A, k: A.max(axis=k))(A, 1)
  with pytest.raises(TypeError, match=(
      r"^min: \['initial'\] not supported for a SparseArray; got \{'initial': 1\.0\}\. Call "
      r"A\.todense\(\) first\.$")):
    js.min(A, initial=1.0)
  with pytest.raises(TypeError, match=(
      r"^max: complex values have no order; got dtype complex128, expected real values\. "
      r"Reduce A\.real or abs\(A\) instead\.$")):
    A.astype(jnp.complex128).max()
  with pytest.raises(TypeError, match=r"^segment_max: expects a SparseArray; got ndarray\. For "
                     r"a dense array use jnp\.max\.$"):
    js.segment_max(np.ones((2, 2)))
  E = tc.unordered_coo(np.zeros((0, 2), np.int32), np.zeros(0), (0, 3), nse=1)
  np.testing.assert_array_equal(np.asarray(js.segment_max(E, axis=0, empty=1.)), [1., 1., 1.])
  with pytest.raises(ValueError, match=(
      r"^max: zero-size reduction has no identity; got axis=\(0,\) of shape \(0, 3\), expected "
      r"non-empty reduced dimensions\. Use js\.segment_max with empty= for a default value\.$")):
    E.max(axis=0)


def test_jscorch_numpy_dispatch():
  A, x, _ = case("coo", 0, 0)
  util.assert_allclose(jsnp.max(A, axis=0), x.max(0), F64)
  util.assert_allclose(jsnp.min(A), x.min(), F64)
  util.assert_allclose(jsnp.mean(A, axis=1, keepdims=True), x.mean(1, keepdims=True), F64)
  np.testing.assert_array_equal(np.asarray(jsnp.count_nonzero(A, axis=1)),
                                np.count_nonzero(x, axis=1))
  dense = jnp.asarray(x)
  assert float(jsnp.max(dense)) == float(jnp.max(dense))
  assert jsnp.mean(dense, axis=0).shape == (5,)


def test_sparsify_reduce_max_uses_the_same_rule():
  A, x, _ = case("csr", 0, 0)
  f = js.sparsify(lambda a: jnp.max(a, axis=1) + jnp.min(a, axis=0).sum())
  util.assert_allclose(f(A), x.max(1) + x.min(0).sum(), F64)
