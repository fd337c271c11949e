"""Tests of jscorch/interop.py: scipy.sparse and jax.experimental.sparse.BCOO conversions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.experimental import sparse as jsparse

import jscorch as js
from jscorch.primitives import SparseCapacityError, SparseFormatError

import util

SHAPE = util.SPARSE_SHAPES[2]          # (4, 5)
NSE = 12                               # the suite's standard capacity for SHAPE


def _dense(seed):
  return util.random_dense(seed, SHAPE, dtype=np.float64)        # 10 nonzeros


# -- from_scipy ------------------------------------------------------------------------------
@pytest.mark.parametrize("make, fmt", [
    (sp.csr_matrix, js.CSR), (sp.csr_array, js.CSR), (sp.csc_matrix, js.CSC),
    (sp.csc_array, js.CSC), (sp.coo_matrix, js.COO), (sp.coo_array, js.COO),
], ids=["csr_matrix", "csr_array", "csc_matrix", "csc_array", "coo_matrix", "coo_array"])
def test_from_scipy_keeps_format(make, fmt):
  x = _dense(1)
  m = make(x)
  A = js.from_scipy(m, nse=NSE)
  assert A.format == fmt and A.shape == SHAPE and A.nse == NSE
  assert A.dtype == jnp.float32                    # float64 values under 32-bit JAX
  util.assert_allclose(A.todense(), m.toarray(), np.float32)
  js.SparseArray.from_buffers(A.data, A.indices, shape=A.shape, format=A.format)  # valid
  assert js.from_scipy(m).nse == m.nnz == 10       # default: exactly the stored entries


def test_from_scipy_exact_buffers():
  m = sp.csr_array(np.array([[0., 1., 0., 2.], [0., 0., 0., 0.], [3., 0., 4., 0.]]))
  A = js.from_scipy(m, nse=6)
  util.assert_buffers_equal(A, [[0, 2, 2, 4], [1, 3, 0, 2, 4, 4]], [1., 2., 3., 4., 0., 0.])
  A = js.from_scipy(sp.csc_array(m), nse=5)
  util.assert_buffers_equal(A, [[0, 1, 2, 3, 4], [2, 0, 2, 0, 3]], [3., 1., 4., 2., 0.])


@pytest.mark.parametrize("make", [sp.csr_array, sp.csc_array, sp.bsr_array])
def test_from_scipy_runs_no_xla_program(make):
  """The buffers are copied to the device, not staged through a compiled program (one per
  shape in a fresh process: the largest cost of a first result on a big graph)."""
  # shapes no other test (nor another case here) uses: an in-process cache would hide a
  # staging program
  shape = {sp.csr_array: (37, 41), sp.csc_array: (43, 47), sp.bsr_array: (53, 59)}[make]
  dense = util.random_dense(7, shape, density=0.2)
  m = make(dense, blocksize=(1, 1)) if make is sp.bsr_array else make(dense)
  with util.count_lowerings() as lowered:
    A = js.from_scipy(m)
    jax.block_until_ready(A)
  assert lowered[0] == 0
  np.testing.assert_array_equal(A.todense(), dense)


@pytest.mark.parametrize("kind", ["csr", "csc"])
def test_from_scipy_unsorted_indices_and_duplicates(kind):
  # Row (column) 0 lists minor indices 3, 1, 3: unsorted, with a duplicate.
  data = np.array([1., 2., 4., 8., 16.])
  indices = np.array([3, 1, 3, 0, 0])
  indptr = np.array([0, 3, 3, 5, 5])
  make = sp.csr_array if kind == "csr" else sp.csc_array
  shape = (4, 5) if kind == "csr" else (5, 4)
  m = make((data, indices, indptr), shape=shape)
  expected = m.toarray()
  assert expected[tuple(np.array([[0, 3]]).T if kind == "csr" else np.array([[3, 0]]).T)] == 5
  A = js.from_scipy(m, nse=4)
  util.assert_allclose(A.todense(), expected, np.float32)
  assert int(A.nnz) == 3
  js.SparseArray.from_buffers(A.data, A.indices, shape=A.shape, format=A.format)  # sorted
  np.testing.assert_array_equal(m.indices, indices)          # the input is left untouched


def test_from_scipy_coo_duplicates_and_unsorted():
  row = np.array([3, 0, 3, 1, 0])
  col = np.array([4, 2, 4, 0, 1])
  data = np.array([1., 2., 3., 4., 5.])
  m = sp.coo_array((data, (row, col)), shape=SHAPE)
  A = js.from_scipy(m)
  assert A.format == js.COO and A.nse == 4                   # distinct coordinates
  util.assert_allclose(A.todense(), m.toarray(), np.float32)
  util.assert_buffers_equal(A, [[0, 4], [0, 0, 1, 3], [1, 2, 0, 4]], [5., 2., 4., 4.])


@pytest.mark.parametrize("kind", ["lil", "dok", "dia"])   # bsr keeps BSR: tests/test_bsr.py
def test_from_scipy_other_formats_become_csr(kind):
  x = _dense(2)
  m = sp.csr_array(x).asformat(kind)
  A = js.from_scipy(m, nse=NSE)
  assert A.format == js.CSR and A.nse == NSE
  util.assert_allclose(A.todense(), x, np.float32)


def test_from_scipy_float64_under_x64():
  x = _dense(3)
  with jax.enable_x64(True):
    A = js.from_scipy(sp.csr_array(x), nse=NSE)
    assert A.dtype == jnp.float64 and A.index_dtype == np.int32
    util.assert_allclose(A.todense(), x, np.float64)


def test_from_scipy_integer_and_complex():
  x = util.random_dense(4, SHAPE, dtype=np.int32)
  util.assert_allclose(js.from_scipy(sp.csc_array(x), nse=NSE).todense(), x, np.int32)
  z = util.random_dense(5, SHAPE, dtype=np.complex64)
  util.assert_allclose(js.from_scipy(sp.coo_array(z), nse=NSE).todense(), z, np.complex64)


@pytest.mark.parametrize("arg, exc, match", [
    (np.eye(3), SparseFormatError, r"from_scipy: expected a scipy.sparse matrix or array; got "
     r"ndarray\. Use js.from_dense for dense arrays"),
    (sp.csr_array(np.eye(4)), SparseCapacityError,
     r"from_scipy: the matrix has 4 entries but nse=2\. Pass nse=4 \(or larger\)"),
    (sp.csc_array(np.eye(4)), SparseCapacityError, r"from_scipy: the matrix has 4 entries"),
], ids=["dense_input", "csr_nse_too_small", "csc_nse_too_small"])
def test_from_scipy_errors(arg, exc, match):
  with pytest.raises(exc, match=match):
    js.from_scipy(arg, nse=2)


def test_from_scipy_coo_capacity_error_names_from_scipy():
  with pytest.raises(SparseCapacityError, match=r"^from_scipy: "):
    js.from_scipy(sp.coo_array(np.eye(4)), nse=2)


# -- to_scipy --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, kind", [
    (js.CSR, "csr"), (js.CSC, "csc"), (js.COO, "coo"), (js.DCSR, "coo"), (util.DCSC, "coo"),
    (util.UNORDERED_COO, "coo"),
], ids=["csr", "csc", "coo", "dcsr", "dcsc", "unordered_coo"])
def test_to_scipy(fmt, kind):
  A, x = util.random_sparse(6, SHAPE, fmt, padding=2)
  m = A.to_scipy()
  assert sp.issparse(m) and m.format == kind and isinstance(m, sp.sparray)
  assert m.shape == SHAPE and m.dtype == np.float32
  assert m.nnz == int((x != 0).sum())              # padding is not exported
  np.testing.assert_array_equal(m.toarray(), x)
  B = js.from_scipy(m, nse=A.nse)                  # and back
  util.assert_allclose(B.todense(), x, np.float32)


def test_to_scipy_transposed_and_converted():
  A, x = util.random_sparse(7, SHAPE, "csr")
  m = A.T.to_scipy()
  assert m.format == "csc"
  np.testing.assert_array_equal(m.toarray(), x.T)
  np.testing.assert_array_equal(A.asformat("csc").to_scipy().toarray(), x)


@pytest.mark.parametrize("shape, fmt, kw", [
    ((2, 4, 5), "csr", dict(n_batch=1)), ((4, 5, 3), "coo", dict(n_dense=1)),
    ((2, 3, 4), "csf", {}),
], ids=["batched", "blocks", "3d"])
def test_to_scipy_errors(shape, fmt, kw):
  A, _ = util.random_sparse(8, shape, fmt, **kw)
  with pytest.raises(SparseFormatError, match=r"SparseArray.to_scipy: scipy holds 2-D matrices "
                     r"without batch or block dims; got SparseArray\("):
    A.to_scipy()


# -- BCOO ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, n_batch, n_dense", [
    ((4, 5), 0, 0), ((2, 4, 5), 1, 0), ((4, 5, 3), 0, 1), ((2, 3, 4), 0, 0),
], ids=["2d", "batched", "blocks", "3d"])
def test_from_bcoo_to_bcoo_round_trip(shape, n_batch, n_dense):
  x = util.random_dense(9, shape, n_batch=n_batch, n_dense=n_dense)
  nse = util.stored_count(x, n_batch, n_dense) + 2              # BCOO padding too
  b = jsparse.BCOO.fromdense(x, nse=nse, n_batch=n_batch, n_dense=n_dense)
  A = js.from_bcoo(b)
  n_sparse = len(shape) - n_batch - n_dense
  assert A.format == js.primitives.formats.resolve_format("coo", len(shape), n_batch=n_batch,
                                                          n_dense=n_dense)
  assert A.nse == nse and A.shape == shape and A.n_sparse == n_sparse
  util.assert_allclose(A.todense(), x, np.float32)
  js.SparseArray.from_buffers(A.data, A.indices, shape=A.shape, format=A.format)
  b2 = A.to_bcoo()
  assert isinstance(b2, jsparse.BCOO) and b2.nse == nse
  assert (b2.n_batch, b2.n_dense) == (n_batch, n_dense)
  assert b2.indices_sorted and b2.unique_indices
  util.assert_allclose(b2.todense(), x, np.float32)
  # The padding is BCOO padding: out-of-range indices, zero values.
  idx = np.asarray(b2.indices).reshape(-1, n_sparse)
  valid = np.all(idx < np.asarray(shape[n_batch:n_batch + n_sparse]), axis=1)
  assert valid.sum() == (np.abs(x) > 0).reshape(
      x.shape[:n_batch + n_sparse] + (-1,)).any(-1).sum()


def test_from_bcoo_sums_duplicates_and_sorts():
  indices = jnp.array([[3, 4], [0, 2], [3, 4], [1, 0], [4, 5]])          # last row: padding
  data = jnp.array([1., 2., 3., 4., 0.])
  b = jsparse.BCOO((data, indices), shape=SHAPE)
  A = js.from_bcoo(b)
  assert A.nse == 5
  util.assert_allclose(A.todense(), b.todense(), np.float32)
  util.assert_buffers_equal(A, [[0, 3], [0, 1, 3, 4, 4], [2, 0, 4, 5, 5]],
                            [2., 4., 4., 0., 0.])


@pytest.mark.parametrize("fmt", util.format_params([util.FORMATS[1], util.FORMATS[5],
                                                    util.FORMATS[8]]))
def test_to_bcoo_from_other_formats(fmt):
  A, x = util.random_sparse(10, util.SPARSE_SHAPES[fmt.n_sparse], fmt)
  b = A.to_bcoo()
  assert b.nse == A.nse
  assert b.indices_sorted == (fmt.mode_ordering == tuple(range(fmt.n_sparse)) and fmt.ordered)
  assert b.unique_indices == fmt.unique
  util.assert_allclose(b.todense(), x, np.float32)
  util.assert_allclose(jsparse.bcoo_sum_duplicates(b).todense(), x, np.float32)


def test_bcoo_under_jit():
  x = util.random_dense(11, SHAPE)
  b = jsparse.BCOO.fromdense(x, nse=NSE)
  out = jax.jit(lambda b: js.from_bcoo(b).todense())(b)
  util.assert_allclose(out, x, np.float32)
  b2 = jax.jit(lambda A: A.to_bcoo())(js.from_dense(x, "csr", nse=NSE))
  util.assert_allclose(b2.todense(), x, np.float32)


def test_from_bcoo_error():
  with pytest.raises(SparseFormatError, match=r"from_bcoo: expected a "
                     r"jax.experimental.sparse.BCOO; got ndarray"):
    js.from_bcoo(np.eye(3))
  with pytest.raises(SparseFormatError, match=r"from_bcoo: expected .* got BCSR"):
    js.from_bcoo(jsparse.BCSR.fromdense(jnp.eye(3)))
