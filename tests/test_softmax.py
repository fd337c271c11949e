"""Tests of ``js.softmax`` (jscorch/ops/softmax.py): softmax over the stored entries only.

The reference is a dense float64 softmax with the entries that are not stored
masked out (``-inf``), slices without entries left empty. Arrays carry padding
and have empty rows; the reduced axis is the inner storage level (contiguous
segments) or an outer one (segments found by sorting), in CSR, CSC, COO, DCSR,
unordered COO, CSF, a batched CSR and a CSR with dense blocks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.ops.unary import valid_mask
from jscorch.primitives import SparseFormatError

import util

F64 = np.float64

# One compile per layout instead of op-by-op dispatch (tests/util.py).
todense = util.jit_todense
from_dense = util.jit_from_dense
from_coo = util.jit_from_coo
random_sparse = util.random_sparse_jit


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def masked_softmax(x, mask, axis):
  """Dense softmax of ``x`` along ``axis`` over ``mask`` only; 0 elsewhere (float64)."""
  x = np.where(mask, np.asarray(x, F64), -np.inf)
  m = np.max(x, axis=axis, keepdims=True)
  m = np.where(np.isfinite(m), m, 0)
  e = np.where(mask, np.exp(x - m), 0)
  s = e.sum(axis=axis, keepdims=True)
  return np.where(mask, e / np.where(s == 0, 1, s), 0)


CASES = {
    # id -> (format, shape, n_batch, n_dense, axis)
    "csr-rows": ("csr", (4, 5), 0, 0, -1),
    "csr-cols": ("csr", (4, 5), 0, 0, 0),
    "csc-rows": ("csc", (4, 5), 0, 0, 1),
    "coo-cols": ("coo", (4, 5), 0, 0, -2),
    "dcsr-cols": ("dcsr", (4, 5), 0, 0, 0),
    "coo_unordered-rows": (util.UNORDERED_COO, (4, 5), 0, 0, 1),
    "csf3-middle": ("csf", (2, 3, 4), 0, 0, 1),
    "csr_batched-rows": ("csr", (2, 4, 5), 1, 0, -1),
    "csr_batched-cols": ("csr", (2, 4, 5), 1, 0, 1),
    "csr_block-rows": ("csr", (4, 5, 3), 0, 1, 1),
    "csr_block-block": ("csr", (4, 5, 3), 0, 1, -1),
}


@functools.lru_cache(maxsize=None)
def case_data(name: str):
  fmt, shape, nb, nd, axis = CASES[name]
  A, x = random_sparse(len(name), shape, fmt, n_batch=nb, n_dense=nd, density=0.3,
                            padding=2, dtype=F64)
  mask = x != 0
  if nd:    # a stored block holds every element of the block
    mask = np.broadcast_to(mask.any(axis=-1, keepdims=True), x.shape)
  return A, x, mask, axis


def check_result(S, A, expected):
  A = A if A.format.unique else A.sum_duplicates()     # duplicates are summed first
  assert S.format == A.format and S.shape == A.shape and S.nse == A.nse
  for s, a in zip(S.indices, A.indices):
    np.testing.assert_array_equal(np.asarray(s), np.asarray(a))
  util.assert_allclose(todense(S), expected, dtype=F64)
  padding = ~np.broadcast_to(np.asarray(valid_mask(A)), S.data.shape)
  assert padding.any()
  np.testing.assert_array_equal(np.asarray(S.data)[padding], 0)


@pytest.mark.parametrize("name", list(CASES))
def test_softmax_matches_masked_dense(name):
  A, x, mask, axis = case_data(name)
  expected = masked_softmax(x, mask, axis)
  check_result(js.softmax(A, axis=axis), A, expected)
  check_result(jax.jit(functools.partial(js.softmax, axis=axis))(A), A, expected)


def test_padding_and_empty_rows():
  x = np.array([[0., 0., 0., 0.],        # empty row
                [1., 0., 2., 0.],
                [0., 0., 0., -3.]])
  A = from_dense(x, format="csr", nse=6)     # three padding slots
  S = js.softmax(A)
  e = np.exp([1., 2.]) / np.exp([1., 2.]).sum()
  util.assert_allclose(S.data, np.array([e[0], e[1], 1., 0., 0., 0.]), dtype=F64)
  assert int((np.asarray(S.data) != 0).sum()) == 3
  g = jax.grad(lambda d: (js.softmax(A.with_data(d)).data * jnp.arange(6.)).sum())(A.data)
  np.testing.assert_array_equal(np.asarray(g)[3:], 0)     # padding gets no gradient


@pytest.mark.parametrize("n_dense, axis", [(0, 1), (0, 0), (1, 1), (1, 2)])
def test_duplicates_are_summed_first(n_dense, axis):
  """A non-unique array's softmax is that of its dense array (duplicates summed), along
  a sparse or a block axis; gradients order 2."""
  idx = np.array([[0, 1], [2, 3], [0, 1], [1, 1], [2, 3], [0, 4]])
  vals = util.random_values(7, (6,) + (3,) * n_dense, F64)
  A = js.from_coo(idx, vals, (3, 5) + (3,) * n_dense, format=util.UNORDERED_COO, nse=8)
  x = np.asarray(todense(A))
  mask = np.zeros((3, 5), bool)
  mask[tuple(idx.T)] = True
  mask = np.broadcast_to(mask.reshape(mask.shape + (1,) * n_dense), x.shape)
  check_result(js.softmax(A, axis=axis), A, masked_softmax(x, mask, axis))
  w = jnp.asarray(util.random_values(8, x.shape, F64))
  util.check_grads_both(
      jax.jit(lambda d: (todense(js.softmax(A.with_data(d), axis=axis)) * w).sum()), (A.data,))


def test_explicit_zeros_take_part_and_neg_inf():
  A = from_coo(np.array([[0, 0], [0, 2], [1, 1], [1, 3]]),
               np.array([0., 0., -np.inf, 1.]), shape=(2, 4), format="csr", nse=4)
  S = js.softmax(A)
  util.assert_allclose(todense(S), np.array([[.5, 0, .5, 0], [0, 0, 0, 1.]]), dtype=F64)


def test_a_stored_pos_inf_makes_its_slice_nan():
  """As ``jax.nn.softmax`` of the masked dense slice: ``+inf`` among the entries gives NaN
  for the whole slice (the maximum was reset to 0, giving ``[nan, 0]``); a slice of
  ``-inf`` only stays NaN; other slices are unaffected. CSR rows and columns, BSR, jit."""
  A = from_coo(np.array([[0, 0], [0, 2], [1, 0], [1, 1]]),
               np.array([np.inf, 2., 1., -np.inf]), shape=(2, 3), format="csr", nse=5)
  mask = np.asarray(todense(A.with_data(jnp.ones_like(A.data)))) != 0
  dense = np.where(mask, np.asarray(todense(A)), -np.inf)
  for axis in (-1, 0):
    want = np.where(mask, np.asarray(jax.nn.softmax(jnp.asarray(dense), axis=axis)), 0)
    for got in (js.softmax(A, axis=axis), jax.jit(lambda A: js.softmax(A, axis=axis))(A)):
      np.testing.assert_array_equal(np.asarray(todense(got)), want)
  B = js.from_dense(np.array([[1., 1., 0., 0.], [1., 0., 0., 0.]]), format=js.BSR((1, 2)))
  got = js.softmax(B.with_data(B.data.at[0, 0, 0].set(np.inf)), axis=1).todense()
  np.testing.assert_array_equal(np.isnan(np.asarray(got)), [[1, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(np.asarray(got)[1], [*np.exp([1, 0]) / (np.e + 1), 0, 0])


def test_vmap_batched_pattern_and_shared_pattern():
  A, x, mask, _ = case_data("csr_batched-rows")
  got = jax.vmap(js.softmax)(A)
  expected = np.stack([todense(js.softmax(util.element(A, i))) for i in range(2)])
  util.assert_allclose(todense(got), expected, dtype=F64)
  B, y, mask, _ = case_data("csr-rows")
  temps = jnp.array([0.5, 2.0])
  got = jax.vmap(lambda B, t: todense(js.softmax(B * t)), in_axes=(None, 0))(B, temps)
  expected = np.stack([masked_softmax(y * t, mask, -1) for t in (0.5, 2.0)])
  util.assert_allclose(got, expected, dtype=F64)


@pytest.mark.parametrize("name", ["csr_batched-cols", "csr_block-rows"])
def test_check_grads(name):
  A, _, _, axis = case_data(name)
  w = jnp.asarray(util.random_values(5, A.data.shape, F64))

  @jax.jit
  def f(d):
    return js.softmax(A.with_data(d), axis=axis).data * w

  util.check_grads_both(f, (A.data,))


def test_gradient_is_sparse_with_same_pattern():
  A, x, mask, _ = case_data("csr-rows")
  W = jnp.asarray(util.random_values(6, x.shape, F64))
  g = js.grad(lambda A: (todense(js.softmax(A)) * W).sum())(A)
  assert g.format == A.format and g.nse == A.nse
  eps = 1e-6
  d = np.asarray(A.data).copy()
  num = []
  for k in range(2):
    dp, dm = d.copy(), d.copy()
    dp[k] += eps
    dm[k] -= eps
    fp = (masked_softmax(np.asarray(todense(A.with_data(dp))), mask, -1) * W).sum()
    fm = (masked_softmax(np.asarray(todense(A.with_data(dm))), mask, -1) * W).sum()
    num.append((fp - fm) / (2 * eps))
  np.testing.assert_allclose(np.asarray(g.data)[:2], num, rtol=1e-6, atol=1e-8)


def test_eval_shape_and_dense_input():
  A, _, _, _ = case_data("csr_batched-rows")
  s = jax.eval_shape(js.softmax, A)
  assert js.is_sparse(s) and s.shape == A.shape and s.nse == A.nse and s.dtype == A.dtype
  x = jnp.asarray(util.random_values(1, (3, 4), F64))
  util.assert_allclose(js.softmax(x, axis=0), np.asarray(jax.nn.softmax(x, axis=0)), dtype=F64)


def test_errors():
  A, _, _, _ = case_data("csr_batched-rows")
  with pytest.raises(SparseFormatError, match=r"softmax: axis 0 is a batch dimension"):
    js.softmax(A, axis=0)
  with pytest.raises(SparseFormatError, match=r"softmax: axis out of range; got axis=3"):
    js.softmax(A, axis=3)
  with pytest.raises(TypeError, match=r"softmax: needs real floating values; got dtype int32"):
    js.softmax(A.astype(jnp.int32))
  with pytest.raises(TypeError, match=r"softmax: axis must be a static Python int"):
    jax.jit(js.softmax)(A, 1)
