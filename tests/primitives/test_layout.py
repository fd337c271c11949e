"""Tests of primitives/layout.py: level capacities, exact buffer shapes, size errors."""
import dataclasses

import jax
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import Layout, SparseFormatError
from jscorch.primitives.layout import index_dtype_for

import util

# (format, shape, nse, capacities, [(level, role, shape), ...], data shape)
LAYOUT_CASES = [
    pytest.param(js.CSR, (4, 6), 5, (4, 5), [(1, "pos", (5,)), (1, "crd", (5,))], (5,),
                 id="csr"),
    pytest.param(js.CSC, (4, 6), 5, (6, 5), [(1, "pos", (7,)), (1, "crd", (5,))], (5,),
                 id="csc"),
    pytest.param(js.COO, (4, 6), 5, (5, 5),
                 [(0, "pos", (2,)), (0, "crd", (5,)), (1, "crd", (5,))], (5,), id="coo"),
    pytest.param(js.DCSR, (4, 6), 5, (4, 5),
                 [(0, "pos", (2,)), (0, "crd", (4,)), (1, "pos", (5,)), (1, "crd", (5,))],
                 (5,), id="dcsr"),
    pytest.param(js.DCSR, (4, 6), 3, (3, 3),
                 [(0, "pos", (2,)), (0, "crd", (3,)), (1, "pos", (4,)), (1, "crd", (3,))],
                 (3,), id="dcsr_small_nse"),
    pytest.param(util.DCSC, (4, 6), 5, (5, 5),
                 [(0, "pos", (2,)), (0, "crd", (5,)), (1, "pos", (6,)), (1, "crd", (5,))],
                 (5,), id="dcsc"),
    pytest.param(js.CSF, (2, 3, 4), 5, (2, 5, 5),
                 [(0, "pos", (2,)), (0, "crd", (2,)), (1, "pos", (3,)), (1, "crd", (5,)),
                  (2, "pos", (6,)), (2, "crd", (5,))], (5,), id="csf3"),
    pytest.param(util.COO3, (2, 3, 4), 5, (5, 5, 5),
                 [(0, "pos", (2,)), (0, "crd", (5,)), (1, "crd", (5,)), (2, "crd", (5,))],
                 (5,), id="coo3"),
    pytest.param(util.DENSE_DCSR3, (2, 3, 4), 5, (4, 5, 5),
                 [(1, "pos", (5,)), (1, "crd", (5,)), (2, "pos", (6,)), (2, "crd", (5,))],
                 (5,), id="dense_dcsr3"),
    pytest.param(js.Format(js.dense, js.dense, js.compressed), (2, 3, 4), 5, (2, 6, 5),
                 [(2, "pos", (7,)), (2, "crd", (5,))], (5,), id="dense_dense_compressed"),
    pytest.param(js.Format(js.dense, js.dense), (2, 3), 6, (2, 6), [], (6,), id="all_dense"),
    pytest.param(js.CSR.replace(n_batch=2), (3, 2, 4, 6), 5, (4, 5),
                 [(1, "pos", (3, 2, 5)), (1, "crd", (3, 2, 5))], (3, 2, 5), id="csr_batch2"),
    pytest.param(js.COO.replace(n_batch=1, n_dense=2), (3, 4, 6, 2, 7), 5, (5, 5),
                 [(0, "pos", (3, 2)), (0, "crd", (3, 5)), (1, "crd", (3, 5))], (3, 5, 2, 7),
                 id="coo_batch_block"),
    pytest.param(js.CSR, (4, 6), 0, (4, 0), [(1, "pos", (5,)), (1, "crd", (0,))], (0,),
                 id="csr_nse0"),
]


@pytest.mark.parametrize("fmt, shape, nse, caps, index_shapes, data_shape", LAYOUT_CASES)
def test_layout_capacities_and_buffer_shapes(fmt, shape, nse, caps, index_shapes, data_shape):
  lay = Layout.make(fmt, shape, nse)
  assert lay.capacities == caps
  assert list(lay.index_shapes) == index_shapes
  assert lay.data_shape == data_shape
  assert lay.index_dtype == np.int32
  assert lay.dense_size == int(np.prod(shape))
  assert lay.parent_capacity(0) == 1
  for k in range(1, fmt.n_sparse):
    assert lay.parent_capacity(k) == caps[k - 1]


@pytest.mark.parametrize("fmt, shape, nse, caps, index_shapes, data_shape", LAYOUT_CASES)
def test_layout_matches_from_dense_buffers(fmt, shape, nse, caps, index_shapes, data_shape):
  """The buffers a constructor produces have exactly the shapes the layout promises."""
  n_batch, n_dense = fmt.n_batch, fmt.n_dense
  A = jax.eval_shape(
      lambda x: js.from_dense(x, fmt.replace(n_batch=0, n_dense=0), nse=nse, n_batch=n_batch,
                              n_dense=n_dense),
      jax.ShapeDtypeStruct(shape, np.float32))
  assert [b.shape for b in A.indices] == [s for _, _, s in index_shapes]
  assert all(b.dtype == np.int32 for b in A.indices)
  assert A.data.shape == data_shape and A.nse == nse
  assert A.layout == Layout.make(fmt, shape, nse)


def test_layout_dimension_groups():
  lay = Layout.make(js.CSC.replace(n_batch=1, n_dense=1), (2, 4, 6, 3), 5)
  assert (lay.n_batch, lay.n_sparse, lay.n_dense) == (1, 2, 1)
  assert lay.batch_shape == (2,) and lay.sparse_shape == (4, 6) and lay.block_shape == (3,)
  assert lay.level_sizes == (6, 4)
  lay3 = Layout.make(util.DENSE_DCSR3, (2, 3, 4), 5)
  assert lay3.level_sizes == (4, 2, 3)


def test_layout_is_static_and_hashable():
  a = Layout.make(js.CSR, (4, 6), 5)
  b = Layout.make(js.Format(js.dense, js.compressed), [4, 6], np.int64(5))
  assert a == b and hash(a) == hash(b) and isinstance(b.nse, int)
  assert a != Layout.make(js.CSR, (4, 6), 6)
  assert a.replace(nse=6) == Layout.make(js.CSR, (4, 6), 6)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.nse = 3


@pytest.mark.parametrize("fmt, shape, nse, match", [
    (js.CSR, (4, 6, 2), 5, r"myfunc: shape \(4, 6, 2\) has rank 3 but format "
     r"Format\(dense, compressed\) describes rank 2"),
    (js.CSR, (4, -1), 5, r"myfunc: shape must be non-negative; got \(4, -1\)"),
    (js.CSR, (4, 6), -1, r"myfunc: nse must be a non-negative int; got nse=-1"),
    (js.CSR, (4, 6), 2.0, r"myfunc: nse must be a non-negative int; got nse=2.0"),
    (js.Format(js.dense, js.dense), (2, 3), 5,
     r"myfunc: an all-dense \(or level-less\) format stores every coordinate; got nse=5, "
     r"expected 6"),
], ids=["rank", "negative_shape", "negative_nse", "float_nse", "all_dense_nse"])
def test_layout_make_errors(fmt, shape, nse, match):
  with pytest.raises(SparseFormatError, match=match):
    Layout.make(fmt, shape, nse, func="myfunc")


@pytest.mark.parametrize("shape, nse", [((2 ** 31, 4), 3), ((4, 2 ** 31 - 1), 3),
                                        ((4, 6), 2 ** 31)],
                         ids=["rows", "cols", "nse"])
def test_layout_int32_overflow(shape, nse):
  with pytest.raises(SparseFormatError,
                     match=r"myfunc: the index space overflows int32; got a dimension or "
                     r"capacity of \d+, expected < 2147483647.*jax_enable_x64"):
    Layout.make(js.CSR, shape, nse, func="myfunc")


def test_layout_huge_shape_uses_int64_under_x64():
  with jax.enable_x64(True):
    lay = Layout.make(js.CSR, (2 ** 31, 4), 3)
    assert lay.index_dtype == np.int64
    assert Layout.make(js.CSR, (4, 6), 3).index_dtype == np.int32   # only when needed
  assert index_dtype_for(2 ** 31 - 2) == np.int32


def test_layout_int32_overflow_of_dense_level_capacity():
  fmt = js.Format(js.dense, js.dense, js.compressed)
  with pytest.raises(SparseFormatError, match=r"overflows int32"):
    Layout.make(fmt, (2 ** 16, 2 ** 16, 4), 3)


def test_layout_check_buffers_accepts_exact_shapes():
  lay = Layout.make(js.DCSR, (4, 6), 3)
  bufs = [np.zeros(s, np.int32) for _, _, s in lay.index_shapes]
  lay.check_buffers(np.zeros(3, np.float32), bufs)        # no error
  with pytest.raises(SparseFormatError, match=r"f: format Format\(compressed, compressed\) "
                     r"needs 4 index buffers \(\['pos\[0\]', 'crd\[0\]', 'pos\[1\]', "
                     r"'crd\[1\]'\]\); got 3"):
    lay.check_buffers(np.zeros(3, np.float32), bufs[:3], func="f")


# -- dense levels below the last sparse one, level-less layouts, relayout capacities ----------------
def test_layout_of_row_formats_and_level_less():
  rows = Layout.make(js.Format(js.compressed, js.dense), (5, 4), 3)
  assert rows.capacities == (3,) and rows.data_shape == (3, 4) and rows.block_shape == (4,)
  assert [s for _, _, s in rows.index_shapes] == [(2,), (3,)]
  none = Layout.make(js.Format(n_batch=1, n_dense=1), (2, 3), 1)
  assert none.index_shapes == () and none.data_shape == (2, 1, 3)
  with pytest.raises(SparseFormatError, match=r"level-less\) format stores every coordinate; "
                     r"got nse=0, expected 1"):
    Layout.make(js.Format(n_dense=2), (2, 3), 0)


@pytest.mark.parametrize("src, dst, nse, expected", [
    (("coo", 0, 0), ("coo", 1, 0), 5, 5),          # sparse -> batch: per element, bounded by 5
    (("coo", 0, 0), ("csf", 0, 1), 7, 4),          # sparse -> block: at most 4 rows
    (("coo", 1, 0), ("coo", 0, 0), 3, 12),         # batch (4) -> sparse
    (("csf", 0, 1), ("coo", 0, 0), 2, 10),         # block (5) -> sparse
    (("coo", 0, 0), ("csr", 2, 0), 6, 1),          # no sparse dim left: one block
], ids=["to_batch", "to_block", "from_batch", "from_block", "level_less"])
def test_relayout_capacity(src, dst, nse, expected):
  from jscorch.primitives import convert
  from jscorch.primitives.formats import resolve_format
  shape = (4, 5)
  s = Layout.make(resolve_format(src[0], 2, n_batch=src[1], n_dense=src[2]), shape, nse)
  fmt = resolve_format(dst[0], 2, n_batch=dst[1], n_dense=dst[2])
  assert convert.relayout_capacity(s, fmt) == expected
  assert convert.relayout_capacity(s, fmt, 3) == (1 if dst[1] == 2 else 3)   # given: kept
