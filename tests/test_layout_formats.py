"""Dense levels below the last sparse level: ``Format(compressed, dense)`` and relatives.

Scorch's ``sd`` / ``sdd`` / ``ssdd`` formats (sparse rows of dense vectors) are stored
as dense blocks under the last sparse level; these tests pin the buffers, the round
trips, conversions to and from every 2-D format, einsum (both lowerings), gradients
and vmap, all against float64 numpy references with padding present.
"""
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import SparseFormatError
from jscorch.primitives.formats import resolve_format

import util

pytestmark = pytest.mark.slow   # eager conversions op by op: minutes on 2 cores

F64 = np.float64
ROWS = js.Format(js.compressed, js.dense)                          # "sd"
ROWS3 = js.Format(js.compressed, js.dense, js.dense)               # "sdd"
CSR_ROWS = js.Format(js.dense, js.compressed, js.dense)            # "dsd"
DCSR_ROWS = js.Format(js.compressed, js.compressed, js.dense, js.dense)   # "ssdd"
COO_ROWS = js.Format(js.compressed(unique=False), js.singleton, js.dense)
ROW_FORMATS = [("sd", ROWS), ("sdd", ROWS3), ("dsd", CSR_ROWS), ("ssdd", DCSR_ROWS),
               ("coo_d", COO_ROWS)]
SHAPES = {2: (5, 4), 3: (3, 4, 2), 4: (3, 4, 2, 3)}


def _row_dense(seed, shape, n_sparse, dtype=F64):
  """A dense array whose sparse coordinates (first ``n_sparse`` dims) hold dense rows: about
  half of them nonzero (rows with zeros inside too), at least one zero row."""
  rng = np.random.default_rng(seed)
  lead = shape[:n_sparse]
  x = util.random_values(rng, shape, dtype)
  keep = rng.random(lead) < 0.5
  keep.flat[0], keep.flat[-1] = True, False
  x = np.where(keep.reshape(lead + (1,) * (len(shape) - n_sparse)), x, 0)
  x[(0,) * len(shape)] = 0                                  # an explicit zero inside a row
  return x


# -- the format itself -------------------------------------------------------------------------
def test_format_spelling_and_storage():
  assert repr(ROWS) == "Format(compressed, dense)"
  assert (ROWS.levels, ROWS.mode_ordering, ROWS.n_dense, ROWS.n_block_levels) == \
      ((js.compressed,), (0,), 1, 1)
  assert ROWS.spelled_levels == (js.compressed, js.dense) and ROWS.name is None
  assert ROWS != js.Format(js.compressed, n_dense=1) and ROWS == js.Format(js.compressed, js.dense)
  assert repr(CSR_ROWS.replace(n_batch=2)) == "Format(dense, compressed, dense, n_batch=2)"
  assert repr(js.Format(js.compressed, js.dense, n_dense=1)) == \
      "Format(compressed, dense, n_dense=1)"
  assert js.Format(js.compressed, js.dense, n_dense=1).n_dense == 2
  assert pickle.loads(pickle.dumps(DCSR_ROWS)) == DCSR_ROWS
  assert hash(ROWS) == hash(js.Format(js.compressed, js.dense))
  # n_dense given to resolve_format may count the dense levels or not (the rank decides)
  assert resolve_format(ROWS, 2, n_dense=0) == ROWS == resolve_format(ROWS, 2, n_dense=1)
  assert resolve_format(ROWS, 3, n_batch=1) == ROWS.replace(n_batch=1)
  assert resolve_format(ROWS, 3, n_dense=1).n_dense == 2


@pytest.mark.parametrize("build, match", [
    (lambda: js.Format(js.compressed, js.dense, js.compressed),
     r"Format: level 1 is dense but lies between sparse levels.*Use a compressed level there"),
    (lambda: js.Format(js.compressed, js.dense, mode_ordering=(1, 0)),
     r"dense levels below the last sparse level must store the last sparse dimensions in "
     r"order; got mode_ordering=\(1, 0\).*Transpose the array"),
    (lambda: resolve_format(ROWS, 3, n_dense=2, func="f"),
     r"f: format Format\(compressed, dense\) has 2 sparse levels but the array has 1"),
    (lambda: js.from_dense(np.ones((2, 3)), ROWS3),
     r"from_dense: format Format\(compressed, dense, dense\) has 3 sparse levels"),
], ids=["dense_between", "transposed_dense_level", "resolve_rank", "from_dense_rank"])
def test_format_errors(build, match):
  with pytest.raises(SparseFormatError, match=match):
    build()


# -- exact buffers -----------------------------------------------------------------------------
def test_buffers_rows_with_padding():
  x = np.array([[0, 0, 0], [1, 0, 2], [0, 0, 0], [0, 3, 0]], np.float32)
  A = js.from_dense(x, ROWS, nse=3)
  assert A.format == ROWS and A.nse == 3 and A.n_dense == 1 and A.shape == (4, 3)
  util.assert_buffers_equal(A, [[0, 2], [1, 3, 4]], [[1, 0, 2], [0, 3, 0], [0, 0, 0]])
  C = js.from_dense(x.reshape(2, 2, 3), CSR_ROWS, nse=3)       # dense, compressed, dense
  util.assert_buffers_equal(C, [[0, 1, 2], [1, 1, 2]], [[1, 0, 2], [0, 3, 0], [0, 0, 0]])
  D = js.from_dense(x.reshape(2, 2, 3), js.Format(js.compressed, js.compressed, js.dense))
  util.assert_buffers_equal(D, [[0, 2], [0, 1], [0, 1, 2], [1, 1]], [[1, 0, 2], [0, 3, 0]])
  E = js.from_dense(x.reshape(2, 2, 3), ROWS3)
  util.assert_buffers_equal(E, [[0, 2], [0, 1]], [[[0, 0, 0], [1, 0, 2]], [[0, 0, 0], [0, 3, 0]]])


def test_from_coo_elements_and_rows():
  idx = np.array([[3, 1], [1, 0], [1, 2], [3, 1], [9, 9]])     # duplicates; an unused row
  vals = np.array([1., 2., 3., 4., 5.], np.float32)
  A = js.from_coo(idx, vals, (4, 3), format=ROWS, check=False)
  util.assert_buffers_equal(A, [[0, 2], [1, 3]], [[2, 0, 3], [0, 5, 0]])
  B = jax.jit(lambda i, v: js.from_coo(i, v, (4, 3), format=ROWS, check=False))(idx, vals)
  assert B.nse == 4                                           # static: at most one row per entry
  np.testing.assert_array_equal(B.todense(), A.todense())
  rows = js.from_coo(np.array([[3], [1]]), np.arange(6.).reshape(2, 3), (4, 3), format=ROWS)
  util.assert_buffers_equal(rows, [[0, 2], [1, 3]], [[3, 4, 5], [0, 1, 2]])


# -- round trips and conversions -----------------------------------------------------------------
@pytest.mark.parametrize("fmt", util.format_params(ROW_FORMATS))
def test_round_trips(fmt):
  n_sp = fmt.n_sparse + fmt.n_block_levels
  shape = SHAPES[n_sp]
  with util.dtype_context(F64):
    x = _row_dense(fmt.n_sparse, shape, fmt.n_sparse)
    nse = util.stored_count(x, 0, fmt.n_dense) + 2
    A = util.jit_from_dense(x, format=fmt, nse=nse)             # padding: two spare rows
    assert A.format == fmt and A.nse == nse and A.data.shape == (nse,) + shape[fmt.n_sparse:]
    util.assert_allclose(util.jit_todense(A), x, F64)
    js.SparseArray.from_buffers(A.data, A.indices, shape=shape, format=fmt)    # valid buffers
    coo = A.asformat("coo")
    assert coo.nse == nse * int(np.prod(shape[fmt.n_sparse:]))
    util.assert_allclose(util.jit_todense(coo), x, F64)
    back = coo.asformat(fmt, nse=nse)
    util.assert_allclose(back.data, A.data, F64)
    for a, b in zip(back.indices, A.indices):
      np.testing.assert_array_equal(a, b)
    idx = np.argwhere(x != 0)
    C = js.from_coo(idx, x[tuple(idx.T)], shape, format=fmt)
    util.assert_allclose(C.todense(), x, F64)
    assert C.nse == util.stored_count(x, 0, fmt.n_dense)


_2D = util.FORMATS_2D + [("dense2", js.Format(js.dense, js.dense))]


@pytest.mark.parametrize("other", util.format_params(_2D))
def test_asformat_every_2d_format(other):
  with util.dtype_context(F64):
    x = _row_dense(1, (5, 4), 1)
    A = js.from_dense(x, ROWS, nse=5)                       # at most 4 rows: padding
    B = A.asformat(other)
    assert B.format == other
    util.assert_allclose(util.jit_todense(B), x, F64)
    C = B.asformat(ROWS)
    assert C.format == ROWS and C.nse == min(B.nse, 5)
    util.assert_allclose(util.jit_todense(C), x, F64)
    assert A.asformat(js.Format(js.compressed, n_dense=1)).data is A.data    # respelled only
    sp = A.to_scipy()
    util.assert_allclose(sp.toarray(), x, F64)


def test_batched_and_blocked_rows():
  with util.dtype_context(F64):
    x = np.stack([_row_dense(s, (4, 3, 2), 1) for s in (2, 3)])     # [batch, rows, cols, block]
    A = js.from_dense(x, ROWS, n_batch=1, n_dense=1)
    assert A.format == js.Format(js.compressed, js.dense, n_batch=1, n_dense=1)
    assert A.data.shape == (2, A.nse, 3, 2)
    util.assert_allclose(util.jit_todense(A), x, F64)
    util.assert_allclose(util.jit_todense(A.asformat("csr")), x, F64)
    per = jax.vmap(lambda A: A.asformat("coo").asformat(ROWS.replace(n_dense=2)).todense())(A)
    util.assert_allclose(per, x, F64)                       # conversions inside vmap


# -- einsum -------------------------------------------------------------------------------------
@pytest.fixture(params=["auto", "portable"])
def lowering(request):
  old = js.config.lowering
  js.config.lowering = request.param
  yield request.param
  js.config.lowering = old


_ops = jax.jit(lambda A, B, y, w, g: (
    js.einsum("ij,jk->ik", A, y),
    js.einsum("ij,ij->ij", A, w).todense(),
    js.einsum("ij,jk->ik", A, B, out_format=ROWS, nse=5, work=40).todense(),
    js.einsum("ij,jk->ik", B.T, g, out_format=ROWS, nse=4).todense()))


def test_einsum_values(lowering):
  with util.dtype_context(F64):
    x = _row_dense(4, (5, 4), 1)
    z = util.random_dense(5, (4, 4), dtype=F64)
    y = util.random_values(6, (4, 3), F64)
    A = js.from_dense(x, ROWS, nse=5)                       # at most 4 rows: padding
    B = js.from_dense(z, "csr", nse=10)
    w = util.random_values(9, (5, 4), F64)
    got = _ops(A, B, y, w, x.T @ x)
    want = (x @ y, x * w, x @ z, z.T @ (x.T @ x))
    for g, w in zip(got, want):
      util.assert_allclose(g, w, F64)
    R = js.einsum("ij,jk->ik", A, B, out_format=ROWS)         # eager: exact row count
    assert R.format == ROWS and R.nse == int((np.abs(x @ z).sum(1) != 0).sum())
    S = js.einsum("ij,ij->ij", A, jnp.asarray(2 * x))           # sampled: keeps A's format
    assert S.format == ROWS and S.nse == A.nse


def test_einsum_grads_and_vmap(lowering):
  with util.dtype_context(F64):
    x = _row_dense(7, (5, 4), 1)
    y = util.random_values(8, (4, 3), F64)
    A = js.from_dense(x, ROWS, nse=5)                       # at most 4 rows: padding
    f = lambda d, y: jnp.sum(js.einsum("ij,jk->ik", A.with_data(d), y) ** 2)
    util.check_grads_both(f, (A.data, y))
    G = js.grad(lambda A: f(A.data, y))(A)
    assert G.format == ROWS and G.indices == A.indices
    util.assert_allclose(G.todense(), 2 * (x @ y) @ y.T * (np.abs(x).sum(1, keepdims=True) != 0)
                         * np.ones_like(x), F64)
    xs = np.stack([x, 3 * x])
    Ab = js.from_dense(xs, ROWS, n_batch=1, nse=5)
    got = jax.vmap(lambda A, y: js.einsum("ij,jk->ik", A, y), in_axes=(0, None))(Ab, y)
    util.assert_allclose(got, np.stack([x @ y, 3 * x @ y]), F64)
