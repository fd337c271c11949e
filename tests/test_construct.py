"""Tests of jscorch/construct.py and SparseArray.asformat: from_dense, from_coo, random, eye."""
import functools
import itertools
import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import SparseCapacityError, SparseFormatError

import util

# -- exact buffers ---------------------------------------------------------------------------
# A 3 x 4 matrix with an empty row, stored with two padding slots (nse = 6).
X = np.array([[0., 1., 0., 2.],
              [0., 0., 0., 0.],
              [3., 0., 4., 0.]], np.float32)
# A 2 x 3 x 2 tensor with four entries, stored with two padding slots.
X3 = np.zeros((2, 3, 2), np.float32)
X3[0, 1, 0], X3[0, 1, 1], X3[1, 0, 1], X3[1, 2, 0] = 1., 2., 3., 4.

ROW_MAJOR = [1., 2., 3., 4., 0., 0.]
COL_MAJOR = [3., 1., 4., 2., 0., 0.]
STRUCTURE = [
    # (format, x, expected index buffers in leaf order, expected data)
    pytest.param("csr", X, [[0, 2, 2, 4], [1, 3, 0, 2, 4, 4]], ROW_MAJOR, id="csr"),
    pytest.param("csc", X, [[0, 1, 2, 3, 4], [2, 0, 2, 0, 3, 3]], COL_MAJOR, id="csc"),
    pytest.param("coo", X, [[0, 4], [0, 0, 2, 2, 3, 3], [1, 3, 0, 2, 4, 4]], ROW_MAJOR,
                 id="coo"),
    pytest.param("dcsr", X, [[0, 2], [0, 2, 3], [0, 2, 4, 4], [1, 3, 0, 2, 4, 4]], ROW_MAJOR,
                 id="dcsr"),
    pytest.param(util.DCSC, X, [[0, 4], [0, 1, 2, 3], [0, 1, 2, 3, 4], [2, 0, 2, 0, 3, 3]],
                 COL_MAJOR, id="dcsc"),
    pytest.param(util.UNORDERED_COO, X, [[0, 4], [0, 0, 2, 2, 3, 3], [1, 3, 0, 2, 4, 4]],
                 ROW_MAJOR, id="coo_unordered_nonunique"),
    pytest.param("csf", X3, [[0, 2], [0, 1], [0, 1, 3], [1, 0, 2, 3, 3, 3],
                             [0, 2, 3, 4, 4, 4, 4], [0, 1, 1, 0, 2, 2]], ROW_MAJOR, id="csf3"),
    pytest.param("coo", X3, [[0, 4], [0, 0, 1, 1, 2, 2], [1, 1, 0, 2, 3, 3],
                             [0, 1, 1, 0, 2, 2]], ROW_MAJOR, id="coo3"),
    pytest.param(util.DENSE_DCSR3, X3, [[0, 2, 4], [0, 1, 0, 1], [0, 1, 2, 3, 4],
                                        [1, 2, 1, 0, 3, 3]], [1., 4., 2., 3., 0., 0.],
                 id="dense_dcsr3"),
]


@pytest.mark.parametrize("fmt, x, indices, data", STRUCTURE)
def test_from_dense_exact_buffers(fmt, x, indices, data):
  A = js.from_dense(x, fmt, nse=6)
  util.assert_buffers_equal(A, indices, data)
  assert A.nse == 6 and int(A.nnz) == 4


@pytest.mark.parametrize("fmt, x, indices, data", STRUCTURE)
def test_asformat_exact_buffers(fmt, x, indices, data):
  """Converting from another format (and another capacity) gives the same buffers."""
  src = "csc" if x.ndim == 2 else util.DENSE_DCSR3
  if fmt == src:
    src = "coo"
  A = js.from_dense(x, src, nse=4).asformat(fmt, nse=6)
  util.assert_buffers_equal(A, indices, data)


def test_from_dense_exact_buffers_batched():
  x2 = np.array([[5., 0., 0., 0.], [0., 6., 0., 7.], [0., 0., 0., 0.]], np.float32)
  A = js.from_dense(np.stack([X, x2]), "csr", nse=4, n_batch=1)
  util.assert_buffers_equal(A, [[[0, 2, 2, 4], [0, 1, 3, 3]], [[1, 3, 0, 2], [0, 1, 3, 4]]],
                            [[1., 2., 3., 4.], [5., 6., 7., 0.]])
  A = js.from_dense(np.stack([X, x2]), "dcsr", nse=4, n_batch=1)
  util.assert_buffers_equal(A, [[[0, 2], [0, 2]], [[0, 2, 3], [0, 1, 3]],
                                [[0, 2, 4, 4], [0, 1, 3, 3]], [[1, 3, 0, 2], [0, 1, 3, 4]]],
                            [[1., 2., 3., 4.], [5., 6., 7., 0.]])


def test_from_dense_exact_buffers_blocks():
  # A block is stored when any of its elements is nonzero, zeros inside it included.
  xd = np.zeros((2, 3, 2), np.float32)
  xd[0, 1], xd[1, 0], xd[1, 2] = [1., 2.], [3., 0.], [0., 4.]
  A = js.from_dense(xd, "csr", nse=4, n_dense=1)
  util.assert_buffers_equal(A, [[0, 1, 3], [1, 0, 2, 3]],
                            [[1., 2.], [3., 0.], [0., 4.], [0., 0.]])
  assert A.shape == (2, 3, 2) and A.n_dense == 1


def test_asformat_exact_buffers_capacity_change():
  A = js.from_dense(X, "csr", nse=6).asformat("dcsr", nse=5)
  util.assert_buffers_equal(A, [[0, 2], [0, 2, 3], [0, 2, 4, 4], [1, 3, 0, 2, 4]],
                            [1., 2., 3., 4., 0.])
  A = js.from_dense(X, "csc", nse=6).asformat("coo", nse=4)          # no padding left
  util.assert_buffers_equal(A, [[0, 4], [0, 0, 2, 2], [1, 3, 0, 2]], [1., 2., 3., 4.])
  A = js.from_dense(X, "dcsr", nse=6).asformat(util.DCSC, nse=7)
  util.assert_buffers_equal(A, [[0, 4], [0, 1, 2, 3], [0, 1, 2, 3, 4], [2, 0, 2, 0, 3, 3, 3]],
                            [3., 1., 4., 2., 0., 0., 0.])


def test_asformat_sums_duplicates_into_unique_format():
  idx = np.array([[2, 2], [0, 3], [2, 2], [0, 1]])
  B = js.from_coo(idx, np.array([1., 2., 3., 4.], np.float32), (3, 4),
                  format=util.UNORDERED_COO, nse=5)
  # The duplicates are kept, in sorted coordinate order (ties in any order).
  util.assert_buffers_equal(B, [[0, 4], [0, 0, 2, 2, 3], [1, 3, 2, 2, 4]],
                            np.asarray(B.data))
  np.testing.assert_array_equal(np.asarray(B.data)[:2], [4., 2.])
  np.testing.assert_array_equal(np.sort(np.asarray(B.data)[2:4]), [1., 3.])
  assert B.data[4] == 0
  C = B.asformat("csr")
  util.assert_buffers_equal(C, [[0, 2, 2, 3], [1, 3, 2, 4, 4]], [4., 2., 4., 0., 0.])


# -- from_dense / todense round trips -------------------------------------------------------
BATCH_DENSE = [(0, 0), (1, 0), (0, 1), (1, 1)]
OTHER_DTYPES = [np.int32, np.complex64]     # float64: csr only (64-bit JAX compiles anew)


def _round_trip_cases():
  """Formats x (n_batch, n_dense) x dtypes, sampled deterministically.

  Every format runs float32 with batch and/or block dims, and one other dtype;
  rotating through the lists, every dtype meets 2-D and 3-D formats, and every
  batch/block setting meets several formats and dtypes. (Unbatched float32 round
  trips of every format are the property test at the end of this module.)
  """
  cases = []
  for i, (fid, fmt) in enumerate(util.FORMATS):
    nb, nd = BATCH_DENSE[1 + i % 3]
    cases.append(pytest.param(fmt, nb, nd, np.float32, id=f"{fid}-b{nb}-d{nd}-float32"))
    dtype = np.float64 if i == 0 else OTHER_DTYPES[i % 2]
    nb, nd = BATCH_DENSE[(i // 2 + i) % 4]
    name = np.dtype(dtype).name
    cases.append(pytest.param(fmt, nb, nd, dtype, id=f"{fid}-b{nb}-d{nd}-{name}"))
  return cases


def _check_stored_entries(A, x, n_batch, n_dense):
  """Decodes A's buffers with numpy and checks coordinates, values and padding."""
  mask = x != 0
  if n_dense:
    mask = mask.any(axis=tuple(range(x.ndim - n_dense, x.ndim)))
  for b in np.ndindex(*x.shape[:n_batch]):
    Ab = util.element(A, b[0]) if n_batch else A
    coords = util.stored_coordinates(Ab)
    expected = np.argwhere(mask[b])
    order = np.lexsort(coords.T[::-1])
    np.testing.assert_array_equal(coords[order], expected)       # exactly the nonzeros
    data = np.asarray(Ab.data)
    np.testing.assert_array_equal(data[:len(coords)], x[b][tuple(coords.T)])
    assert not data[len(coords):].any(), "padding values must be 0"


@functools.partial(jax.jit, static_argnames=("fmt", "nse", "n_batch", "n_dense"))
def _from_dense_todense(x, fmt, nse, n_batch, n_dense):
  A = js.from_dense(x, fmt, nse=nse, n_batch=n_batch, n_dense=n_dense)
  return A, A.todense()


@pytest.mark.parametrize("fmt, n_batch, n_dense, dtype", _round_trip_cases())
def test_from_dense_round_trip(fmt, n_batch, n_dense, dtype):
  """Round trips under jit (one compiled program per case); eager ones are tested above."""
  rng = np.random.default_rng(sum(map(ord, util.format_id(fmt))) + 10 * n_batch + n_dense)
  shape = util.default_shape(fmt, n_batch, n_dense)
  with util.dtype_context(dtype):
    x = util.random_dense(rng, shape, n_batch=n_batch, n_dense=n_dense, dtype=dtype)
    nse = util.stored_count(x, n_batch, n_dense) + 2
    A, dense = _from_dense_todense(x, fmt, nse, n_batch, n_dense)
    assert A.shape == shape and A.dtype == np.dtype(dtype)
    assert A.format == fmt.replace(n_batch=n_batch, n_dense=n_dense)
    assert A.nse == nse
    assert all(i.dtype == jnp.int32 for i in A.indices)
    expected_shapes = [s for _, _, s in js.primitives.Layout.make(A.format, shape,
                                                                  nse).index_shapes]
    assert [i.shape for i in A.indices] == expected_shapes
    util.assert_allclose(dense, util.reference(x), dtype)
    _check_stored_entries(A, x, n_batch, n_dense)
    # The buffers keep every promise of the format (order, uniqueness, padding).
    js.SparseArray.from_buffers(A.data, A.indices, shape=A.shape, format=A.format)


def test_from_dense_default_nse_is_max_over_batch():
  x = np.zeros((2, 4, 5), np.float32)
  x[0, 1, 2] = 1.
  x[1, :3, :4] = 2.                   # 12 entries in element 1
  A = js.from_dense(x, "coo", n_batch=1)
  assert A.nse == 12
  np.testing.assert_array_equal(np.asarray(A.nnz), [1, 12])
  util.assert_allclose(A.todense(), x, np.float32)
  assert js.from_dense(np.zeros((2, 3), np.float32), "csr").nse == 0


def test_from_dense_all_dense_format_stores_everything():
  x = np.array([[0., 1., 0.], [2., 0., 0.]], np.float32)
  A = js.from_dense(x, js.Format(js.dense, js.dense), nse=99)       # nse is fixed by the shape
  assert A.nse == 6 and A.indices == ()
  np.testing.assert_array_equal(np.asarray(A.data), x.reshape(-1))
  util.assert_allclose(A.todense(), x, np.float32)


@pytest.mark.parametrize("fmt", util.format_params([util.FORMATS[0]]))
def test_from_dense_under_jit(fmt):
  rng = np.random.default_rng(11)
  shape = util.default_shape(fmt, n_batch=1)
  x = util.random_dense(rng, shape, n_batch=1)
  nse = util.stored_count(x, 1) + 2
  A = jax.jit(functools.partial(js.from_dense, format=fmt, nse=nse, n_batch=1))(x)
  B = js.from_dense(x, fmt, nse=nse, n_batch=1)
  assert A.format == B.format and A.shape == B.shape == shape and A.nse == nse
  for a, b in zip(A.indices, B.indices):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(A.data), np.asarray(B.data))
  util.assert_allclose(jax.jit(lambda A: A.todense())(A), x, np.float32)


def test_from_dense_eval_shape():
  out = jax.eval_shape(lambda x: js.from_dense(x, "dcsr", nse=7),
                       jax.ShapeDtypeStruct((4, 5), jnp.float32))
  assert isinstance(out, js.SparseArray) and out.shape == (4, 5) and out.nse == 7
  assert [i.shape for i in out.indices] == [(2,), (4,), (5,), (7,)]
  assert out.data.dtype == jnp.float32


# -- from_dense errors -----------------------------------------------------------------------
def test_from_dense_capacity_error_names_needed_size():
  with pytest.raises(SparseCapacityError, match=r"from_dense: the result needs 4 stored entries "
                     r"but its capacity is nse=3\. Pass nse=4 \(or larger\)"):
    js.from_dense(X, "csr", nse=3)
  with pytest.raises(SparseCapacityError, match=r"needs 4 stored entries .* nse=1"):
    js.from_dense(np.stack([X, X]), "coo", nse=1, n_batch=1)


def test_from_dense_traced_nse():
  with pytest.raises(TypeError, match=r"from_dense: nse must be a static Python int because it "
                     r"fixes buffer shapes; got a traced value\. Pass nse= as a concrete int"):
    jax.jit(lambda x, n: js.from_dense(x, "csr", nse=n).data)(X, 4)


def test_from_dense_nse_missing_under_jit():
  with pytest.raises(TypeError, match=r"from_dense: nse must be given under jit, because the "
                     r"number of nonzeros of a traced x \(shape \(3, 4\)\) is unknown at trace "
                     r"time\. Pass nse= as a static int"):
    jax.jit(lambda x: js.from_dense(x, "csr").data)(X)


@pytest.mark.parametrize("nse, match", [
    (2.5, r"from_dense: nse must be an int; got float 2.5"),
    (True, r"from_dense: nse must be an int; got bool True"),
    ("4", r"from_dense: nse must be an int; got str '4'"),
], ids=["float", "bool", "str"])
def test_from_dense_nse_type(nse, match):
  with pytest.raises(TypeError, match=match):
    js.from_dense(X, "csr", nse=nse)


@pytest.mark.parametrize("kw, match", [
    (dict(format="bsr"), r"from_dense: unknown format name; got format='bsr', expected one of "
     r"\('coo', 'csr', 'csc', 'dcsr', 'csf'\)"),
    (dict(format="csr", n_batch=1), r"from_dense: format='csr' does not fit an array of rank 2 "
     r"with n_batch=1, n_dense=0"),
    (dict(format=js.CSR, n_dense=1), r"from_dense: format Format\(dense, compressed\) has 2 "
     r"sparse levels but the array has 1 sparse dimensions \(rank 2, n_batch=0, n_dense=1\)"),
], ids=["unknown_name", "csr_batched_2d", "level_count"])
def test_from_dense_format_errors(kw, match):
  with pytest.raises(SparseFormatError, match=match):
    js.from_dense(X, **kw)


def test_from_dense_format_objects_and_names():
  # A CSF (or COO) Format adapts to the rank; names are case-insensitive.
  A = js.from_dense(X, js.CSF, nse=6)
  assert A.format == js.DCSR
  util.assert_buffers_equal(A, [[0, 2], [0, 2, 3], [0, 2, 4, 4], [1, 3, 0, 2, 4, 4]], ROW_MAJOR)
  assert js.from_dense(X, "CSC", nse=6).format == js.CSC


def test_from_dense_format_with_own_batch_dims():
  x = np.stack([X, -X])
  A = js.from_dense(x, js.CSR.replace(n_batch=1), nse=4)
  assert A.n_batch == 1
  util.assert_allclose(A.todense(), x, np.float32)


def test_random_format_with_own_batch_dims():
  A = js.random(jax.random.key(0), (2, 4, 5), 0.6, js.CSR.replace(n_batch=1))
  assert A.n_batch == 1 and A.nse == 12


@pytest.mark.parametrize("dtype, bad", [(np.float32, np.nan), (np.int32, -1)],
                         ids=["float32_nan", "int32_minus1"])
def test_from_dense_overflow_under_jit_poisons(dtype, bad):
  x = X.astype(dtype)
  A = jax.jit(lambda x: js.from_dense(x, "csr", nse=3))(x)
  data = np.asarray(A.data)
  assert data.dtype == dtype and data.shape == (3,)
  if np.isnan(bad):
    assert np.isnan(data).all()
    assert np.isnan(np.asarray(A.todense())).any()
  else:
    np.testing.assert_array_equal(data, [bad] * 3)
  # Enough capacity: no poisoning.
  A = jax.jit(lambda x: js.from_dense(x, "csr", nse=4))(x)
  util.assert_allclose(A.todense(), X.astype(dtype), dtype)


# -- from_coo --------------------------------------------------------------------------------
COO_FORMATS = [(i, f) for i, f in util.FORMATS if f != util.UNORDERED_COO]


@pytest.mark.parametrize("fmt", util.format_params(COO_FORMATS))
def test_from_coo_sorts_and_sums_duplicates(fmt):
  rng = np.random.default_rng(3)
  shape = util.SPARSE_SHAPES[fmt.n_sparse]
  nse = util.stored_count(util.random_dense(0, shape)) + 2     # the suite's standard capacity
  idx, values, expected = util.random_coo(rng, shape, nse, duplicates=3)
  distinct = len(np.unique(idx, axis=0))
  A = js.from_coo(idx, values, shape, format=fmt, nse=nse)
  assert A.nse == nse and A.format == fmt and int(A.nnz) == distinct
  util.assert_allclose(A.todense(), expected, np.float32)
  js.SparseArray.from_buffers(A.data, A.indices, shape=shape, format=fmt)   # valid buffers
  assert not np.asarray(A.data)[distinct:].any()                            # padding is 0


def test_from_coo_batched_and_blocks():
  rng = np.random.default_rng(4)
  shape = (2, 4, 5, 3)
  idx, values, _ = util.random_coo(rng, shape, 12, n_batch=1, n_dense=1, duplicates=2)
  idx[0] = util.random_coo(rng, shape[1:], 12, n_dense=1, duplicates=0)[0]   # all distinct
  expected = np.zeros(shape)
  for b in range(2):
    np.add.at(expected[b], tuple(idx[b].T), values[b])
  # Default capacity: the largest number of distinct coordinates of any batch element.
  A = js.from_coo(idx, values, shape, format="csc")
  assert A.format == js.CSC.replace(n_batch=1, n_dense=1) and A.nse == 12
  np.testing.assert_array_equal(np.asarray(A.nnz), [12, len(np.unique(idx[1], axis=0))])
  util.assert_allclose(A.todense(), expected, np.float32)
  A0 = js.from_coo(idx[0], values[0], shape[1:], format="csc", nse=12)
  for a, b in zip((A0.data, *A0.indices), (util.element(A, 0).data,
                                           *util.element(A, 0).indices)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_from_coo_default_format_is_coo():
  A = js.from_coo(np.array([[1, 0], [0, 2]]), np.array([1., 2.], np.float32), (2, 3))
  assert A.format == js.COO
  util.assert_allclose(A.todense(), np.array([[0., 0., 2.], [1., 0., 0.]]), np.float32)


def test_from_coo_under_jit_out_of_range_is_padding():
  idx = np.array([[0, 1], [5, 0], [1, 2], [-1, 0], [0, 1]])
  val = np.array([1., 10., 2., 20., 3.], np.float32)
  out = jax.jit(lambda i, v: js.from_coo(i, v, (2, 3), format="csr").todense())(idx, val)
  util.assert_allclose(out, np.array([[0., 4., 0.], [0., 0., 2.]]), np.float32)
  A = js.from_coo(idx, val, (2, 3), format="csr", check=False)     # eager, unchecked: same
  util.assert_allclose(A.todense(), np.array([[0., 4., 0.], [0., 0., 2.]]), np.float32)
  assert A.nse == 2


def test_from_coo_nonunique_format_keeps_duplicates():
  idx = np.array([[0, 1], [2, 3], [0, 1], [1, 1]])
  val = np.array([1., 2., 3., 4.], np.float32)
  A = js.from_coo(idx, val, (3, 4), format=util.UNORDERED_COO, nse=5)
  assert int(A.nnz) == 4
  np.testing.assert_array_equal(util.stored_coordinates(A), [[0, 1], [0, 1], [1, 1], [2, 3]])
  util.assert_allclose(A.todense(), np.array([[0, 4, 0, 0], [0, 4, 0, 0], [0, 0, 0, 2]]),
                       np.float32)


def test_from_coo_nonunique_format_default_nse():
  idx = np.array([[0, 1], [2, 3], [0, 1], [1, 1]])
  A = js.from_coo(idx, np.array([1., 2., 3., 4.], np.float32), (3, 4),
                  format=util.UNORDERED_COO)
  util.assert_allclose(A.todense(), np.array([[0, 4, 0, 0], [0, 4, 0, 0], [0, 0, 0, 2]]),
                       np.float32)


@pytest.mark.parametrize("fmt", [f for _, f in util.FORMATS_2D] + [
    js.Format(js.dense, js.compressed(unique=False))], ids=str)
def test_from_coo_no_coordinates_with_spare_capacity(fmt):
  """An empty edge list into a capacity with room to spare is all padding (a non-unique
  CSR once failed here: its values are moved by a gather from an empty buffer)."""
  A = js.from_coo(np.zeros((0, 2), np.int32), np.zeros(0, np.float32), (3, 2), format=fmt,
                  nse=2)
  assert A.nse == 2 and int(A.nnz) == 0
  util.assert_allclose(A.todense(), np.zeros((3, 2)), np.float32)


@pytest.mark.parametrize("args, exc, match", [
    ((np.array([[0., 1.]]), np.array([1.]), (2, 2)), TypeError,
     r"from_coo: indices must be integers; got dtype float32\. Cast them"),
    ((np.array([[0, 1], [2, 5]]), np.array([1., 2.]), (2, 2)), SparseFormatError,
     r"from_coo: coordinate out of range: indices\[1\] = \(2, 5\) for shape \(2, 2\); "
     r"expected 0 <= index < \(2, 2\)"),
    ((np.array([[0, 1], [-1, 0]]), np.array([1., 2.]), (2, 2)), SparseFormatError,
     r"coordinate out of range: indices\[1\] = \(-1, 0\)"),
    ((np.array([[[0, 1]], [[1, 3]]]), np.ones((2, 1)), (2, 2, 3)), SparseFormatError,
     r"coordinate out of range: indices\[1, 0\] = \(1, 3\) for shape \(2, 2, 3\)"),
    ((np.array([[0, 1], [1, 0]]), np.array([1., 2., 3.]), (2, 2)), SparseFormatError,
     r"from_coo: indices \(2, 2\) and values \(3,\) do not fit shape \(2, 2\)"),
    ((np.array([[0, 1], [1, 0]]), np.array([1., 2.]), (2, 2, 2)), SparseFormatError,
     r"from_coo: indices \(2, 2\) and values \(2,\) do not fit shape \(2, 2, 2\); expected "
     r"indices \[\*batch, n, n_sparse\] and values \[\*batch, n, \*block\]"),
    ((np.array([0, 1]), np.array([1., 2.]), (2,)), SparseFormatError,
     r"from_coo: indices must have shape \[\*batch, n, n_sparse\]; got \(2,\)\. For a 1-D "
     r"array pass indices\[:, None\]"),
], ids=["float_indices", "out_of_range", "negative", "batched_out_of_range",
        "values_length", "rank_mismatch", "flat_indices"])
def test_from_coo_errors(args, exc, match):
  with pytest.raises(exc, match=match):
    js.from_coo(*args)


def test_from_coo_capacity_error():
  with pytest.raises(SparseCapacityError, match=r"from_coo: the result needs 2 stored entries "
                     r"but its capacity is nse=1\. Pass nse=2"):
    js.from_coo(np.array([[0, 1], [1, 0], [0, 1]]), np.ones(3, np.float32), (2, 2), nse=1)


# -- random ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", util.format_params())
def test_random_each_format(fmt):
  shape = util.SPARSE_SHAPES[fmt.n_sparse]
  size = int(np.prod(shape))
  A = js.random(jax.random.key(1), shape, 0.6, format=fmt)
  nse = math.ceil(0.6 * size)                     # ceil, as JAX's random_bcoo
  assert A.nse == nse and int(A.nnz) == nse and A.format == fmt and A.dtype == jnp.float32
  dense = np.asarray(A.todense())
  assert (dense != 0).sum() == nse                 # distinct coordinates, nonzero values
  assert np.all(np.asarray(A.data) != 0)
  js.SparseArray.from_buffers(A.data, A.indices, shape=shape, format=fmt)   # valid buffers
  # Values are standard normal: 12 of them (fixed key) take both signs.
  assert (np.asarray(A.data) > 0).any() and (np.asarray(A.data) < 0).any()


def test_random_batched_deterministic_and_distinct():
  key = jax.random.key(5)
  A = js.random(key, (2, 4, 5), 0.6, format="dcsr", n_batch=1)
  B = js.random(key, (2, 4, 5), 0.6, format="dcsr", n_batch=1)
  C = js.random(jax.random.key(6), (2, 4, 5), 0.6, format="dcsr", n_batch=1)
  assert A.nse == 12 and A.n_batch == 1
  np.testing.assert_array_equal(np.asarray(A.nnz), [12, 12])
  dense = np.asarray(A.todense())
  np.testing.assert_array_equal(dense, np.asarray(B.todense()))
  assert not np.array_equal(dense, np.asarray(C.todense()))
  assert not np.array_equal(dense[0] != 0, dense[1] != 0)     # own pattern per element
  js.SparseArray.from_buffers(A.data, A.indices, shape=A.shape, format=A.format)


@pytest.mark.parametrize("dtype", [np.int32, np.complex64], ids=["int32", "complex64"])
def test_random_dtypes(dtype):
  A = js.random(jax.random.key(2), (4, 5), 0.3, format="csc", dtype=dtype)
  data = np.asarray(A.data)
  assert data.dtype == dtype and A.nse == 6
  if dtype == np.int32:
    assert data.min() >= 1 and data.max() < 10
  else:
    assert np.all(np.abs(data) > 0) and np.any(data.imag != 0)
  assert (np.asarray(A.todense()) != 0).sum() == 6


def test_random_and_from_coo_keep_bool_dtype():
  A = js.random(jax.random.key(2), (4, 5), 0.3, format="csc", dtype=np.bool_)
  B = js.from_coo(np.array([[0, 1], [1, 0]]), np.array([True, True]), (2, 2), format="csr")
  assert A.dtype == np.bool_ and B.dtype == np.bool_
  assert np.asarray(A.data).all() and A.nse == 6


def test_from_dense_bool():
  x = np.array([[True, False, True], [False, False, True]])
  A = js.from_dense(x, "csr", nse=4)
  assert A.dtype == np.bool_
  np.testing.assert_array_equal(np.asarray(A.todense()), x)


def test_random_blocks_and_legacy_key():
  A = js.random(jax.random.PRNGKey(0), (4, 5, 2), 0.25, format="coo", n_dense=1)
  assert A.shape == (4, 5, 2) and A.nse == 5 and A.data.shape == (5, 2)
  assert np.all(np.asarray(A.data) != 0)
  mask = np.asarray(A.todense()).any(-1)
  assert mask.sum() == 5


@pytest.mark.parametrize("density", [-0.1, 1.5], ids=["negative", "above_one"])
def test_random_density_error(density):
  with pytest.raises(SparseFormatError, match=r"random: density must be in \[0, 1\]; got "
                     + str(density)):
    js.random(jax.random.key(0), (4, 5), density)


def test_random_full_and_empty():
  A = js.random(jax.random.key(3), (3, 4), 1.0, format="coo")
  assert A.nse == 12 and np.all(np.asarray(A.todense()) != 0)
  B = js.random(jax.random.key(3), (3, 4), 0.0, format="csr")
  assert B.nse == 0 and not np.asarray(B.todense()).any()


# -- eye -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, m, k, fmt", [
    (3, None, 0, "csr"), (3, 5, 1, "csc"), (5, 3, -2, "coo"), (4, 4, 3, "dcsr"),
    (3, 3, 5, "csr"), (2, 3, -4, "coo"), (4, 5, -1, "dcsr"), (4, 3, 0, "csc")],
    ids=["square-csr", "wide_k1-csc", "tall_km2-coo", "corner-dcsr", "k_past_end-csr",
         "k_before_start-coo", "wide_km1-dcsr", "tall-csc"])
def test_eye(n, m, k, fmt):
  A = js.eye(n, m, k=k, format=fmt)
  expected = np.eye(n, m, k=k)
  assert A.format == js.primitives.formats.resolve_format(fmt, 2)
  assert A.nse == int(expected.sum())
  util.assert_allclose(A.todense(), expected, np.float32)


def test_eye_dtype_and_errors():
  A = js.eye(3, dtype=jnp.int32, format="coo")
  util.assert_allclose(A.todense(), np.eye(3, dtype=np.int32), np.int32)
  with pytest.raises(TypeError, match=r"eye: k must be an int; got float 1.5"):
    js.eye(3, k=1.5)
  with pytest.raises(TypeError, match=r"eye: n must be a static Python int"):
    jax.jit(lambda n: js.eye(n).data)(3)


# -- asformat between every pair -------------------------------------------------------------
def _asformat_pairs():
  cases = []
  for group in (util.FORMATS_2D, util.FORMATS_3D):
    for k, ((si, src), (di, dst)) in enumerate(itertools.product(group, group)):
      n_batch = k % 2
      cases.append(pytest.param(src, dst, n_batch, id=f"{si}-to-{di}-b{n_batch}"))
  return cases


@pytest.mark.parametrize("src, dst, n_batch", _asformat_pairs())
def test_asformat_every_pair(src, dst, n_batch):
  rng = np.random.default_rng(hash((util.format_id(src), util.format_id(dst))) % 2 ** 32)
  shape = util.default_shape(src, n_batch)
  A, x = util.random_sparse(rng, shape, src, n_batch=n_batch, padding=2)
  B = A.asformat(dst)
  assert B.format == dst.replace(n_batch=n_batch) and B.shape == shape
  assert B.nse == A.nse                                 # capacity kept by default
  util.assert_allclose(B.todense(), x, np.float32)
  _check_stored_entries(B, x, n_batch, 0)
  js.SparseArray.from_buffers(B.data, B.indices, shape=B.shape, format=B.format)
  if dst == src:
    assert A.asformat(dst) is A


def test_asformat_by_name_keeps_batch_and_blocks():
  rng = np.random.default_rng(8)
  A, x = util.random_sparse(rng, (2, 4, 5, 3), "csr", n_batch=1, n_dense=1)
  B = A.asformat("coo")
  assert B.format == js.COO.replace(n_batch=1, n_dense=1)
  util.assert_allclose(B.todense(), x, np.float32)
  C = A.asformat(js.CSF)                        # CSF adapts to two sparse dims
  assert C.format == js.DCSR.replace(n_batch=1, n_dense=1)
  util.assert_allclose(C.todense(), x, np.float32)


def test_asformat_to_all_dense_format():
  A, x = util.random_sparse(0, (4, 5), "coo")
  B = A.asformat(js.Format(js.dense, js.dense))
  assert B.nse == 20 and B.indices == ()
  np.testing.assert_array_equal(np.asarray(B.data), x.reshape(-1))


def test_asformat_errors():
  A, _ = util.random_sparse(1, (4, 5), "csr")
  with pytest.raises(SparseCapacityError, match=r"SparseArray.asformat: the result needs 10 "
                     r"stored entries but its capacity is nse=4\. Pass nse=10"):
    A.asformat("csc", nse=4)
  with pytest.raises(SparseFormatError, match=r"SparseArray.asformat: unknown format name; got "
                     r"format='csf3', expected one of \('coo', 'csr', 'csc', 'dcsr', 'csf'\)"):
    A.asformat("csf3")
  with pytest.raises(SparseFormatError, match=r"SparseArray.asformat: format Format\(dense, "
                     r"compressed, compressed, mode_ordering=\(2, 0, 1\)\) has 3 sparse levels "
                     r"but the array has 2 sparse dimensions"):
    A.asformat(util.DENSE_DCSR3)
  with pytest.raises(TypeError, match=r"SparseArray.asformat: nse must be a static Python int"):
    jax.jit(lambda A, n: A.asformat("coo", nse=n).data)(A, 12)


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", util.format_params([util.FORMATS[1]]))
def test_grads_from_dense(fmt):
  rng = np.random.default_rng(21)
  shape = util.SPARSE_SHAPES[fmt.n_sparse]
  x = util.random_dense(rng, shape)
  mask = (x != 0).astype(np.float32)                    # keeps the pattern under perturbation
  nse = int(mask.sum()) + 2
  util.check_grads_both(lambda x: js.from_dense(x * mask, fmt, nse=nse).data, (x,))
  # The gradient is the mask: stored positions get the cotangent, zeros get nothing.
  g = jax.grad(lambda x: js.from_dense(x * mask, fmt, nse=nse).data.sum())(x)
  util.assert_allclose(g, mask, np.float32)


@pytest.mark.parametrize("fmt", util.format_params([util.FORMATS[0]]))
def test_grads_todense(fmt):
  A, x = util.random_sparse(22, util.default_shape(fmt, n_batch=1), fmt, n_batch=1)
  util.check_grads_both(lambda d: A.with_data(d).todense(), (A.data,))
  w = util.random_values(23, x.shape, np.float32)
  g = jax.grad(lambda d: (A.with_data(d).todense() * w).sum())(A.data)
  # d/d data[b, p] = w at the coordinate of leaf p; 0 for padding leaves.
  for b in range(x.shape[0]):
    coords = util.stored_coordinates(util.element(A, b))
    expected = np.zeros(A.nse)
    expected[:len(coords)] = w[b][tuple(coords.T)]
    util.assert_allclose(g[b], expected, np.float32)


@pytest.mark.parametrize("src, dst", [(js.COO, util.DCSC)], ids=["coo-to-dcsc"])
def test_grads_asformat(src, dst):
  A, x = util.random_sparse(24, util.SPARSE_SHAPES[src.n_sparse], src)
  util.check_grads_both(jax.jit(lambda d: A.with_data(d).asformat(dst, nse=A.nse + 1).data),
                        (A.data,))
  g = jax.grad(lambda d: A.with_data(d).asformat(dst).todense().sum())(A.data)
  expected = np.zeros(A.nse)
  expected[:int(A.nnz)] = 1.0                           # padding gets no gradient
  util.assert_allclose(g, expected, np.float32)


# -- vmap ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", util.format_params([util.FORMATS[3]]))
def test_vmap_from_dense_and_todense(fmt):
  rng = np.random.default_rng(31)
  xs = util.random_dense(rng, (2,) + util.SPARSE_SHAPES[2], n_batch=1)
  nse = util.stored_count(xs, 1) + 2
  A = jax.vmap(lambda x: js.from_dense(x, fmt, nse=nse))(xs)
  B = js.from_dense(xs, fmt, nse=nse, n_batch=1)
  assert A.n_batch == 1 and A.format == B.format and A.shape == xs.shape
  for a, b in zip((A.data, *A.indices), (B.data, *B.indices)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for i in range(2):                                    # against a stacked loop
    Ai = js.from_dense(xs[i], fmt, nse=nse)
    for a, b in zip((Ai.data, *Ai.indices), (util.element(A, i).data,
                                             *util.element(A, i).indices)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  dense = jax.vmap(lambda A: A.todense())(A)
  util.assert_allclose(dense, xs, np.float32)
  scales = np.array([1.5, -2., 3.], np.float32)
  A0 = util.element(A, 0)
  out = jax.vmap(lambda A, s: A.todense() * s, in_axes=(None, 0))(A0, scales)
  util.assert_allclose(out, scales[:, None, None] * xs[0], np.float32)


# -- properties ------------------------------------------------------------------------------------
def _dense_arrays(shape, max_nonzeros=None):
  """Hypothesis arrays of ``shape``: arbitrary patterns (empty rows, full, none) and values.

  At most ``max_nonzeros`` entries are kept nonzero (the first ones in row-major order),
  so a fixed capacity always suffices and compiled shapes are shared between examples.
  """
  elements = st.one_of(st.just(0.0), st.floats(-8, 8, width=32, allow_subnormal=False))
  arrays = hnp.arrays(np.float32, shape, elements=elements)
  if max_nonzeros is None:
    return arrays

  def clip(x):
    flat = x.reshape(-1).copy()
    flat[np.flatnonzero(flat)[max_nonzeros:]] = 0
    return flat.reshape(shape)
  return arrays.map(clip)


@hypothesis.given(data=st.data(), fmt_index=st.integers(0, len(util.FORMATS) - 1))
def test_property_round_trip(data, fmt_index):
  _, fmt = util.FORMATS[fmt_index]
  shape = util.SPARSE_SHAPES[fmt.n_sparse]
  nse = util.stored_count(util.random_dense(0, shape)) + 2     # the suite's standard capacity
  x = data.draw(_dense_arrays(shape, max_nonzeros=nse - 1), label="x")
  A = js.from_dense(x, fmt, nse=nse)
  np.testing.assert_array_equal(np.asarray(A.todense()), x)
  np.testing.assert_array_equal(util.stored_coordinates(A)[:, 0].size, int((x != 0).sum()))


PAIRS_2D = [(s, d) for s in util.FORMATS_2D for d in util.FORMATS_2D if s is not d]


@hypothesis.given(data=st.data(), pair=st.sampled_from(PAIRS_2D))
def test_property_asformat_twice_is_identity(data, pair):
  (_, src), (_, dst) = pair
  x = data.draw(_dense_arrays((4, 5), max_nonzeros=11), label="x")
  A = js.from_dense(x, src, nse=12)
  B = A.asformat(dst).asformat(src)
  np.testing.assert_array_equal(np.asarray(B.todense()), x)
  assert B.format == A.format and B.nse == A.nse
  if src.unique:                     # a unique format has one canonical storage
    for a, b in zip(A.indices, B.indices):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(A.data), np.asarray(B.data))


def test_eager_from_dense_is_one_program():
  # a shape no other test uses: eagerly, each of from_dense's operations was an XLA program
  x = np.zeros((13, 29), np.float32)
  x[[0, 3, 12], [5, 28, 0]] = [1.0, -2.0, 3.0]
  with util.count_lowerings() as lowered:
    A = js.from_dense(x, format="csr")
  # the conversion; at most the default nse's nonzero mask and the capacity check besides
  assert lowered[0] <= 3, lowered[0]
  np.testing.assert_array_equal(np.asarray(A.todense()), x)


def test_from_coo_into_an_all_dense_format():
  """An all-dense format stores every coordinate: the default capacity is the fixed one,
  not the number of coordinates given (duplicates summed, eager and jit)."""
  idx = np.array([[0, 1], [1, 1], [0, 1], [2, 0]])
  vals = np.array([1., 2., 3., 4.], np.float32)
  want = np.zeros((3, 4), np.float32)
  np.add.at(want, tuple(idx.T), vals)
  for order in [(0, 1), (1, 0)]:
    fmt = js.Format(js.dense, js.dense, mode_ordering=order)
    for A in [js.from_coo(idx, vals, (3, 4), format=fmt),
              jax.jit(lambda i, v, fmt=fmt: js.from_coo(i, v, (3, 4), format=fmt))(idx, vals)]:
      assert A.format == fmt and A.nse == 12
      np.testing.assert_array_equal(A.todense(), want)
