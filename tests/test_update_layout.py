"""Layout changes and small API items: update_layout, level-less layouts, eye, random, todense,
and broadcasting ``sparse * sparse``; float64 numpy references, padding present."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import SparseFormatError
from jscorch.primitives._errors import CapacityRequiredError

import util

pytestmark = pytest.mark.slow   # eager conversions op by op: minutes on 2 cores

F64 = np.float64
SHAPE = (2, 3, 4)


# -- update_layout --------------------------------------------------------------------------------
_relayout = jax.jit(lambda A, nb, nd, nse: js.update_layout(A, nb, nd, nse=nse,
                                                             on_inefficient=None).todense(),
                    static_argnums=(1, 2, 3))

# (source n_batch, n_dense) -> (target n_batch, n_dense): every kind of move, and mixes
MOVES = [((0, 0), (1, 0)), ((0, 0), (0, 1)), ((0, 0), (2, 1)), ((1, 0), (0, 0)),
         ((0, 1), (0, 0)), ((1, 1), (0, 0)), ((1, 0), (0, 1)), ((0, 1), (1, 0)),
         ((0, 0), (3, 0)), ((0, 0), (0, 3)), ((3, 0), (0, 0)), ((0, 3), (1, 0))]


@pytest.mark.parametrize("src, dst", MOVES, ids=[f"{s}->{d}" for s, d in MOVES])
def test_update_layout_values(src, dst):
  with util.dtype_context(F64):
    x = util.random_dense(sum(src + dst), SHAPE, n_batch=src[0], n_dense=src[1], dtype=F64)
    nse = util.stored_count(x, *src) + 1 if src[0] + src[1] < 3 else 1
    A = js.from_dense(x, "coo", nse=nse, n_batch=src[0], n_dense=src[1])
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", js.SparseEfficiencyWarning)
      B = A.update_layout(*dst)
    assert (B.n_batch, B.n_dense, B.shape) == (dst[0], dst[1], SHAPE)
    n_sparse = 3 - sum(dst)
    assert B.format.n_sparse == n_sparse and (n_sparse or B.nse == 1)
    util.assert_allclose(util.jit_todense(B), x, F64)
    util.assert_allclose(_relayout(A, *dst, B.nse), x, F64)          # under jit
    C = B.update_layout(*src, on_inefficient=None)          # and back (block zeros are kept)
    util.assert_allclose(util.jit_todense(C), x, F64)


def test_update_layout_capacities_formats_and_warnings():
  x = np.zeros(SHAPE, np.float32)
  x[0, 1, 2], x[1, 2, 0], x[1, 2, 3] = 1., 2., 3.
  A = js.from_dense(x, "csf", nse=4)                                   # one padding slot
  B = js.update_layout(A, n_batch=1)
  assert B.format == js.DCSR.replace(n_batch=1) and B.nse == 4
  util.assert_buffers_equal(B.update_layout(nse=2).asformat("dcsr", nse=2),
                            [[[0, 1], [0, 1]], [[1, 3], [2, 3]], [[0, 1, 1], [0, 2, 2]],
                             [[2, 4], [0, 3]]], [[1, 0], [2, 3]])
  R = js.update_layout(A, n_dense=1)
  assert R.format == js.DCSR.replace(n_dense=1) and R.nse == 4
  assert R.asformat(js.Format(js.compressed, js.compressed, js.dense)).format.n_block_levels == 1
  with pytest.warns(js.SparseEfficiencyWarning, match=r"update_layout: moving batch or block "
                    r"dims into the sparse dims multiplies the stored entries by 4"):
    D = js.update_layout(R, n_dense=0)
  assert D.nse == 16 and D.format == util.COO3                  # "dcsr" has no 3-D form
  with pytest.raises(SparseFormatError, match=r"multiplies the stored entries by 2"):
    js.update_layout(B, n_batch=0, on_inefficient="error")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    js.update_layout(B, n_batch=0, on_inefficient=None)


@pytest.mark.parametrize("kw, exc, match", [
    (dict(n_batch=3, n_dense=1), SparseFormatError,
     r"update_layout: n_batch and n_dense must be >= 0 with n_batch \+ n_dense <= ndim; got "
     r"n_batch=3, n_dense=1 for an array of rank 3"),
    (dict(n_dense=-1), SparseFormatError, r"got n_batch=0, n_dense=-1"),
    (dict(on_inefficient="loud"), SparseFormatError,
     r"update_layout: unknown on_inefficient; got 'loud', expected one of"),
    (dict(n_batch=1, format="csf", nse=1), js.SparseCapacityError,
     r"update_layout: the result needs 2 stored entries but its capacity is nse=1"),
    (dict(n_batch=1.0), TypeError, r"update_layout: n_batch must be an int"),
    (dict(n_batch=2, format="dcsr"), SparseFormatError, r"update_layout: format='dcsr' does "
     r"not fit an array of rank 3 with n_batch=2"),
], ids=["too_many", "negative", "on_inefficient", "capacity", "float", "format"])
def test_update_layout_errors(kw, exc, match):
  x = np.zeros(SHAPE, np.float32)
  x[1, 0, 0], x[1, 2, 3] = 1., 2.
  with pytest.raises(exc, match=match):
    js.update_layout(js.from_dense(x, "coo"), **kw)


# -- layouts with no sparse dimension -------------------------------------------------------------
@pytest.mark.parametrize("n_batch, n_dense", [(2, 0), (0, 2), (1, 1)])
def test_no_sparse_dimension(n_batch, n_dense):
  with util.dtype_context(F64):
    x = util.random_values(3, (3, 4), F64)
    A = js.from_dense(x, n_batch=n_batch, n_dense=n_dense)
    assert A.format == js.Format(n_batch=n_batch, n_dense=n_dense) and A.nse == 1
    assert A.indices == () and A.data.shape == {(2, 0): (3, 4, 1), (0, 2): (1, 3, 4),
                                                (1, 1): (3, 1, 4)}[n_batch, n_dense]
    util.assert_allclose(util.jit_todense(A), x, F64)
    C = js.update_layout(A, 0, 0, format="csr", on_inefficient=None)
    assert C.format == js.CSR and C.nse == 12
    util.assert_allclose(C.todense(), x, F64)
    B = jax.jit(lambda x: js.from_dense(x, js.Format(), n_batch=n_batch, n_dense=n_dense))(x)
    util.assert_allclose(B.todense(), x, F64)
    util.assert_allclose(js.update_layout(js.from_dense(x), n_batch, n_dense,
                                          on_inefficient=None).todense(), x, F64)
    g = jax.grad(lambda d: jnp.sum(A.with_data(d).todense() ** 2))(A.data)
    util.assert_allclose(g, 2 * A.data, F64)
    v = util.random_values(4, (4,), F64)
    util.assert_allclose(js.einsum("ij,j->i", A, v), x @ v, F64)       # as its dense value
    util.assert_allclose(A @ v, x @ v, F64)
  with pytest.raises(SparseFormatError, match=r"from_buffers: an all-dense \(or level-less\) "
                     r"format stores every coordinate; got nse=2, expected 1"):
    js.SparseArray.from_buffers(np.ones((3, 2, 4)), [], shape=(3, 4),
                                format=js.Format(n_batch=1, n_dense=1))


# -- eye, random -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_batch, n_dense, nse", [(0, 0, 3), (1, 0, 1), (0, 1, 3), (1, 1, 1),
                                                    (2, 0, 1), (0, 2, 1)])
def test_eye_layouts(n_batch, n_dense, nse):
  for k in (0, 2, -1):
    E = js.eye(3, 5, k, n_batch=n_batch, n_dense=n_dense, dtype=jnp.float32)
    assert (E.shape, E.n_batch, E.n_dense) == ((3, 5), n_batch, n_dense)
    np.testing.assert_array_equal(E.todense(), np.eye(3, 5, k))
  assert js.eye(3, 5, n_batch=n_batch, n_dense=n_dense).nse == nse
  with pytest.raises(SparseFormatError, match=r"eye: n_batch and n_dense must be >= 0 with a "
                     r"sum of at most 2; got n_batch=2, n_dense=1"):
    js.eye(3, n_batch=2, n_dense=1)


@pytest.mark.parametrize("shape, density, count", [((3, 4), 0.01, 1), ((4, 5), 0.33, 7),
                                                   ((7,), 0.5, 4), ((4, 5), 0.0, 0)])
def test_random_count_is_ceil(shape, density, count):
  A = js.random(jax.random.key(0), shape, density, format="coo")
  assert A.nse == count == math.ceil(density * math.prod(shape))
  assert int(A.nnz) == count and int((np.asarray(A.todense()) != 0).sum()) == count
  R = js.random(jax.random.key(1), (5, 4), 0.5, format=js.Format(js.compressed, js.dense))
  assert R.nse == 3 and R.data.shape == (3, 4)                           # 3 of 5 rows


# -- todense ---------------------------------------------------------------------------------------
def test_todense_function():
  x = jnp.arange(6.).reshape(2, 3)
  assert js.todense(x) is x
  n = np.ones(3)
  assert js.todense(n) is n
  A = js.from_dense(x, "coo", nse=7)
  np.testing.assert_array_equal(js.todense(A), x)
  np.testing.assert_array_equal(jax.jit(js.todense)(A), x)
  g = js.grad(lambda A: jnp.sum(js.todense(A) ** 2))(A)
  np.testing.assert_array_equal(g.todense(), 2 * x)


# -- broadcasting sparse * sparse -----------------------------------------------------------------
BROADCASTS = [((4, 1), "csr", (4, 5), "csr"), ((5,), "coo", (4, 5), "dcsr"),
              ((4, 5), "coo", (1, 5), "csr"), ((2, 4, 5), "csf", (4, 5), "csc"),
              ((1, 1), "csr", (4, 5), "coo")]


@pytest.mark.parametrize("sa, fa, sb, fb", BROADCASTS,
                         ids=[f"{a}x{b}" for a, _, b, _ in BROADCASTS])
def test_multiply_broadcasts(sa, fa, sb, fb):
  with util.dtype_context(F64):
    x = util.random_dense(1, sa, dtype=F64, density=0.6)
    y = util.random_dense(2, sb, dtype=F64, density=0.6)
    A = js.from_dense(x, fa, nse=util.stored_count(x) + 1)
    B = js.from_dense(y, fb, nse=util.stored_count(y) + 1)
    R = A * B
    util.assert_allclose(R.todense(), x * y, F64)
    full = A if A.shape == R.shape else B               # the pattern comes from this operand
    assert R.nse == full.nse
    util.assert_allclose(jax.jit(lambda A, B: (A * B).todense())(A, B), x * y, F64)
    util.assert_allclose((B * A).todense(), x * y, F64)
    if sa == (4, 1):
      util.check_grads_both(lambda a, b: jnp.sum((A.with_data(a) * B.with_data(b)).data ** 2),
                            (A.data, B.data))


def test_multiply_both_broadcast_and_errors():
  x = util.random_dense(3, (4, 1), density=0.75)
  y = util.random_dense(4, (1, 5), density=0.6)
  A, B = js.from_dense(x), js.from_dense(y)
  util.assert_allclose((A * B).todense(), x * y)                   # eager: an outer product
  with pytest.raises(CapacityRequiredError, match=r"multiply: both sparse operands broadcast.*"
                     r"a.shape=\(4, 1\), b.shape=\(1, 5\).*js.einsum\('a,b->ab'"):
    jax.jit(lambda A, B: A * B)(A, B)
  with pytest.raises(ValueError, match=r"multiply: operand shapes do not broadcast; got "
                     r"a.shape=\(4, 1\), b.shape=\(3, 5\)"):
    A * js.from_dense(np.ones((3, 5)))
