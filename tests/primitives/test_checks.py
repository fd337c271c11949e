"""Tests of primitives/checks.py (and Layout.check_buffers) through SparseArray.from_buffers.

Every case is a literal set of level buffers; the valid ones are compared with a
hand-written dense matrix, the invalid ones must raise with a message that names
the level, the position and the problem.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import SparseFormatError
from jscorch.primitives.checks import is_concrete

import util

F = "SparseArray.from_buffers"

# x = [[0, 1, 0],
#      [2, 0, 3]]  stored with one padding slot (nse=4)
X = np.array([[0., 1., 0.], [2., 0., 3.]])
DATA = np.array([1., 2., 3., 0.], np.float32)
COL_MAJOR = np.array([2., 1., 3., 0.], np.float32)    # the same entries in column order
VALID = [
    pytest.param("csr", [[0, 1, 3], [1, 0, 2, 3]], DATA, id="csr"),
    pytest.param("csc", [[0, 1, 2, 3], [1, 0, 1, 2]], COL_MAJOR, id="csc"),
    pytest.param("coo", [[0, 3], [0, 1, 1, 2], [1, 0, 2, 3]], DATA, id="coo"),
    pytest.param("dcsr", [[0, 2], [0, 1], [0, 1, 3], [1, 0, 2, 3]], DATA, id="dcsr"),
    pytest.param(util.DCSC, [[0, 3], [0, 1, 2], [0, 1, 2, 3], [1, 0, 1, 2]], COL_MAJOR,
                 id="dcsc"),
    pytest.param(util.UNORDERED_COO, [[0, 3], [1, 0, 1, 2], [0, 1, 2, 3]], COL_MAJOR,
                 id="unordered_coo_out_of_order"),
]


@pytest.mark.parametrize("fmt, indices, data", VALID)
def test_from_buffers_valid(fmt, indices, data):
  A = js.SparseArray.from_buffers(data, [np.array(i) for i in indices], shape=(2, 3),
                                  format=fmt)
  util.assert_allclose(A.todense(), X, np.float32)
  assert A.nse == 4 and int(A.nnz) == 3
  util.assert_buffers_equal(A, indices, data)
  np.testing.assert_array_equal(util.stored_coordinates(A),
                                [[0, 1], [1, 0], [1, 2]] if data is DATA
                                else [[1, 0], [0, 1], [1, 2]])


def test_from_buffers_casts_indices_to_int32():
  A = js.SparseArray.from_buffers(DATA, [np.array([0, 1, 3], np.int64),
                                         np.array([1, 0, 2, 3], np.int16)],
                                  shape=(2, 3), format="csr")
  assert all(i.dtype == jnp.int32 for i in A.indices)
  util.assert_allclose(A.todense(), X, np.float32)


def test_from_buffers_duplicates_allowed_in_nonunique_format():
  fmt = util.UNORDERED_COO
  A = js.SparseArray.from_buffers(np.array([1., 2., 4., 0.], np.float32),
                                  [np.array([0, 3]), np.array([1, 0, 1, 2]),
                                   np.array([0, 1, 0, 3])], shape=(2, 3), format=fmt)
  util.assert_allclose(A.todense(), np.array([[0., 2., 0.], [5., 0., 0.]]), np.float32)


def _csr(pos, crd, shape=(2, 3), data=None, fmt="csr"):
  data = DATA[:len(crd)] if data is None else data
  return js.SparseArray.from_buffers(data, [np.array(pos), np.array(crd)], shape=shape,
                                     format=fmt)


@pytest.mark.parametrize("pos, crd, match", [
    ([0, 1, 3], [1, 3, 2, 3],
     r"coordinate out of range at level 1, position 1: got 3, expected 0 <= crd < 3"),
    ([0, 1, 3], [1, -1, 2, 3],
     r"coordinate out of range at level 1, position 1: got -1, expected 0 <= crd < 3"),
    ([0, 1, 3], [1, 2, 0, 3],
     r"coordinates of level 1 are unsorted within a segment at position 2 \(2 then 0\), "
     r"but the level is ordered"),
    ([0, 1, 3], [1, 2, 2, 3],
     r"repeated coordinate within a segment of level 1, but the level is unique"),
    ([0, 2, 1], [1, 0, 2, 3],
     r"pos of level 1 must start at 0, never decrease and end at most at 4; "
     r"got pos=\[0, 2, 1\]"),
    ([1, 1, 3], [1, 0, 2, 3], r"pos of level 1 must start at 0.*got pos=\[1, 1, 3\]"),
    ([0, 1, 5], [1, 0, 2, 3],
     r"pos of level 1 must start at 0, never decrease and end at most at 4; "
     r"got pos=\[0, 1, 5\]"),
    ([0, 1, 3], [1, 0, 2, 0],
     r"padding positions of level 1 \(from 3 on\) must hold the dimension size 3; got \[0\]"),
], ids=["crd_too_large", "crd_negative", "unsorted", "duplicate", "pos_decreasing",
        "pos_not_zero_start", "pos_past_capacity", "padding_not_size"])
def test_csr_buffer_errors(pos, crd, match):
  with pytest.raises(SparseFormatError, match=F + ": " + match):
    _csr(pos, crd)


def test_csr_with_more_padding_is_valid():
  A = _csr([0, 1, 2], [1, 0, 3, 3])
  util.assert_allclose(A.todense(), np.array([[0., 1., 0.], [2., 0., 0.]]), np.float32)
  assert int(A.nnz) == 2 and A.nse == 4


def test_coo_entries_out_of_storage_order():
  with pytest.raises(SparseFormatError,
                     match=F + r": entries are not in storage order at entry 1: \(0, 2\) then "
                     r"\(0, 1\), but format Format\(compressed\(nonunique\), singleton\) is "
                     r"ordered"):
    js.SparseArray.from_buffers(DATA, [np.array([0, 3]), np.array([0, 0, 1, 2]),
                                       np.array([2, 1, 0, 3])], shape=(2, 3), format="coo")


def test_coo_unsorted_first_level():
  with pytest.raises(SparseFormatError, match=r"coordinates of level 0 are unsorted within a "
                     r"segment at position 1 \(1 then 0\)"):
    js.SparseArray.from_buffers(DATA, [np.array([0, 3]), np.array([1, 0, 1, 2]),
                                       np.array([0, 1, 2, 3])], shape=(2, 3), format="coo")


def test_coo_duplicate_coordinate():
  with pytest.raises(SparseFormatError, match=F + r": duplicate coordinate \(1, 0\), but format "
                     r"Format\(compressed\(nonunique\), singleton\) is unique"):
    js.SparseArray.from_buffers(DATA, [np.array([0, 3]), np.array([0, 1, 1, 2]),
                                       np.array([1, 0, 0, 3])], shape=(2, 3), format="coo")


def test_coo_singleton_padding():
  with pytest.raises(SparseFormatError, match=r"padding positions of level 1 \(from 3 on\) must "
                     r"hold the dimension size 3; got \[1\]"):
    js.SparseArray.from_buffers(DATA, [np.array([0, 3]), np.array([0, 1, 1, 2]),
                                       np.array([1, 0, 2, 1])], shape=(2, 3), format="coo")


def test_dcsr_pos_gives_entries_to_padding_parent():
  # Level 0 stores one row (row 0); level 1's pos must stay flat after parent 0.
  with pytest.raises(SparseFormatError, match=r"pos of level 1 gives entries to padding parents "
                     r"\(positions >= 1\); got pos=\[0, 1, 2\]"):
    js.SparseArray.from_buffers(np.array([1., 2.], np.float32),
                                [np.array([0, 1]), np.array([0, 2]), np.array([0, 1, 2]),
                                 np.array([1, 0])], shape=(2, 3), format="dcsr")


def test_batched_error_names_batch_element():
  fmt = js.CSR.replace(n_batch=1)
  pos = np.array([[0, 1, 2], [0, 2, 2]])
  crd = np.array([[1, 0], [2, 1]])          # element 1, row 0: 2 then 1
  with pytest.raises(SparseFormatError, match=r"coordinates of level 1 \(batch element \(1,\)\) "
                     r"are unsorted within a segment at position 1 \(2 then 1\)"):
    js.SparseArray.from_buffers(np.ones((2, 2), np.float32), [pos, crd], shape=(2, 2, 3),
                                format=fmt)
  A = js.SparseArray.from_buffers(np.ones((2, 2), np.float32), [pos, np.array([[1, 0], [1, 2]])],
                                  shape=(2, 2, 3), format=fmt)
  util.assert_allclose(A.todense(), np.array([[[0, 1, 0], [1, 0, 0]], [[0, 1, 1], [0, 0, 0]]]),
                       np.float32)


@pytest.mark.parametrize("indices, data, match", [
    ([[0, 1, 3]], DATA, r"format Format\(dense, compressed\) needs 2 index buffers "
     r"\(\['pos\[1\]', 'crd\[1\]'\]\); got 1"),
    ([[0, 1, 3], [1, 0, 2, 3], [0]], DATA,
     r"format Format\(dense, compressed\) needs 2 index buffers .*; got 3"),
    ([[0, 1, 3, 3], [1, 0, 2, 3]], DATA,
     r"pos buffer of level 1 has shape \(4,\), expected \(3,\) for format "
     r"Format\(dense, compressed\), shape \(2, 3\), nse=4"),
    ([[0, 1, 3], [1, 0, 2]], DATA, r"crd buffer of level 1 has shape \(3,\), expected \(4,\)"),
    ([[0, 1, 3], [1, 0, 2, 3]], DATA.reshape(4, 1),
     r"data has shape \(4, 1\), expected \(4,\) \(\*batch, nse, \*block\)"),
], ids=["too_few_buffers", "too_many_buffers", "pos_shape", "crd_shape", "data_shape"])
def test_buffer_count_and_shape_errors(indices, data, match):
  with pytest.raises(SparseFormatError, match=F + ": " + match):
    js.SparseArray.from_buffers(data, [np.array(i) for i in indices], shape=(2, 3),
                                format="csr")


@pytest.mark.parametrize("dtype", [np.float32, np.bool_], ids=["float32", "bool"])
def test_non_integer_index_dtype(dtype):
  with pytest.raises(TypeError, match=F + r": pos buffer of level 1 must have an integer dtype; "
                     r"got " + np.dtype(dtype).name + r"\. Cast the indices"):
    js.SparseArray.from_buffers(DATA, [np.array([0, 1, 3], dtype), np.array([1, 0, 2, 3])],
                                shape=(2, 3), format="csr")


def test_check_false_skips_data_checks():
  # Unsorted, out-of-range buffers are accepted as-is; out-of-range entries are padding.
  A = js.SparseArray.from_buffers(DATA, [np.array([0, 1, 3]), np.array([1, 9, 0, 3])],
                                  shape=(2, 3), format="csr", check=False)
  util.assert_allclose(A.todense(), np.array([[0., 1., 0.], [3., 0., 0.]]), np.float32)
  with pytest.raises(SparseFormatError, match=r"crd buffer of level 1 has shape"):
    js.SparseArray.from_buffers(DATA, [np.array([0, 1, 3]), np.array([1, 9, 0])],
                                shape=(2, 3), format="csr", check=False)


def test_checks_skipped_under_jit_but_shapes_checked():
  def build(pos, crd):
    return js.SparseArray.from_buffers(DATA, [pos, crd], shape=(2, 3), format="csr").todense()

  # An out-of-range coordinate under jit is padding: the entry is dropped.
  out = jax.jit(build)(np.array([0, 1, 3]), np.array([1, 7, 2, 3]))
  util.assert_allclose(out, np.array([[0., 1., 0.], [0., 0., 3.]]), np.float32)
  with pytest.raises(SparseFormatError, match=r"pos buffer of level 1 has shape \(2,\)"):
    jax.jit(build)(np.array([0, 3]), np.array([1, 7, 2, 3]))


def test_is_concrete():
  assert is_concrete(np.zeros(2), jnp.zeros(3), 1.0)
  seen = []
  jax.jit(lambda x: seen.append(is_concrete(np.zeros(1), x)) or x)(jnp.zeros(2))
  assert seen == [False]


def test_from_buffers_accepts_list_indices():
  A = js.SparseArray.from_buffers([1., 2., 3., 0.], [[0, 1, 3], [1, 0, 2, 3]], shape=(2, 3),
                                  format="csr")
  util.assert_allclose(A.todense(), X, np.float32)
