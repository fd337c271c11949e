"""Tests of jscorch/ops/index.py: ``A[key]`` with ints, slices, None, Ellipsis, integer arrays
and boolean masks, empty windows, and ``len(A)``.

Each key is applied to fresh random SparseArrays stored with padding (every format of
``util.FORMATS`` for basic keys, a deterministic sample of formats for advanced keys,
batched / blocked arrays, stored duplicates) and compared with numpy indexing of the
densified float64 array: values, exact shapes, dense-or-sparse results, formats and
capacities. Traced integer indices under ``jit`` are clamped; ``vmap`` over a batched
SparseArray, over stored values and over indices; ``check_grads`` (second order, both
modes, float64, w.r.t. the stored values); ``jacfwd`` / ``jacrev`` of empty windows;
``eval_shape``; every error message is matched.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.ops import index as ops_index

import util

todense = jax.jit(lambda A: A.todense())


def dense(x):
  return todense(x) if js.is_sparse(x) else x


def base(A):
  return A.format.replace(n_batch=0, n_dense=0)


def check_key(A, x, key, kind, dtype=np.float32):
  """``A[key]`` equals numpy's ``x[key]`` and is dense (``"d"``) or sparse (``"s"``)."""
  want = util.reference(x)[key]
  got = A[key]
  assert js.is_sparse(got) == (kind == "s"), (key, got)
  assert got.shape == want.shape, (key, got.shape, want.shape)
  util.assert_allclose(dense(got), want, dtype=dtype, err_msg=str(key))
  return got


S = slice(None)
KEYS = {
    2: [(1, "s"), ((-1, S), "s"), ((S, slice(4, 0, -2)), "s"),
        ((slice(None, None, -1), None, 3), "s"), ((Ellipsis, slice(1, 4)), "s"),
        (np.array([3, 0, 3]), "s"), ((S, [4, 1, 1, -5]), "s"), (([2, 0], 1), "d"),
        ((1, 3), "d")],
    3: [((0, S, [3, 1]), "s"), ((slice(1, None), -1), "s"), ((S, slice(None, None, -2), None, 2),
                                                              "s"),
        ((Ellipsis, 3), "s"), ((1, 2, 0), "d"), (([1, 1, 0],), "s")],
}


@pytest.mark.parametrize("fmt", util.format_params())
def test_getitem_every_format(fmt):
  A, x = util.random_sparse(0, util.SPARSE_SHAPES[fmt.n_sparse], fmt, padding=2)
  for key, kind in KEYS[fmt.n_sparse]:
    got = check_key(A, x, key, kind)
    items = key if isinstance(key, tuple) else (key,)
    if all(isinstance(k, slice) for k in items):
      assert (base(got), got.nse) == (base(A), A.nse), key     # slices keep format and capacity


def test_getitem_formats_and_capacity():
  A, x = util.random_sparse(1, (4, 5), "csc", padding=3)
  B = A[1:, ::-2]
  assert (B.format, B.nse) == (js.CSC, A.nse)             # slices keep format and capacity
  C = A[np.array([2, 0, 2, 2])]                           # largest multiplicity 3
  assert (C.format, C.nse) == (js.CSC, min(3 * A.nse, 20))
  util.assert_allclose(todense(C), x[[2, 0, 2, 2]])
  D = A[:, [4, 0]]                            # distinct: capacity kept, at most the size
  assert D.nse == min(A.nse, 8)
  R = A[2]
  assert (base(R), R.nse) == (js.Format(js.compressed), A.nse)   # rank 1: COO
  E, y = util.random_sparse(2, (2, 3, 4), js.CSF, padding=2)
  assert base(E[:, 1]) == js.Format(js.compressed, js.compressed)   # CSF of rank 2
  util.assert_allclose(todense(E[:, 1]), y[:, 1])
  F = E[[0, 1, 1], [2, 2, 0]]                 # two sparse dims by points: CSF of rank 2
  assert (base(F), F.nse) == (js.DCSR, min(2 * E.nse, 12))
  util.assert_allclose(todense(F), y[[0, 1, 1], [2, 2, 0]])
  G = A[np.array([[1, 2], [3, 3]])]           # a 2-D index: a new sparse dim, COO of rank 3
  assert (base(G), G.nse) == (util.COO3, min(2 * A.nse, 20))


# -- advanced indices: integer arrays and boolean masks ----------------------------------------
R4, C4 = np.array([0, 3, 3, -1]), np.array([1, 1, 4, 0])
IDX2 = np.array([[0, 1], [3, 3]])
MASK_ROWS = np.array([True, False, True, True])
MASK_COLS = np.array([False, True, True, False, True])
MASK_FULL = np.random.default_rng(0).random((4, 5)) < 0.5
EMPTY = np.zeros(0, np.int32)
ADVANCED_2D = [
    ((R4, C4), "d"), ((IDX2,), "s"), ((S, np.array([[4, 0], [1, 1]])), "s"),
    ((R4[:, None], C4[None]), "d"), ((MASK_ROWS,), "s"), ((S, MASK_COLS), "s"),
    ((MASK_FULL,), "d"), ((MASK_ROWS, [1, 2, 3]), "d"), ((2, C4), "d"),
    ((None, R4, C4), "d"), ((R4, None, C4), "d"), ((R4, ..., C4), "d"), ((IDX2, None), "s"),
    ((slice(None, None, -2), IDX2[0]), "s"),
]
EMPTY_2D = [((slice(2, 2),), "s"), ((S, slice(3, 1)), "s"), ((EMPTY,), "s"), ((S, EMPTY), "s"),
            ((EMPTY, EMPTY), "d"), ((np.zeros(4, bool),), "s"), ((np.zeros((4, 5), bool),), "d"),
            ((slice(1, 1), C4[:2]), "s")]
M34 = np.random.default_rng(1).random((3, 4)) < 0.5
M234 = np.random.default_rng(2).random((2, 3, 4)) < 0.5
ADVANCED_3D = [
    (([0, 1], [1, 2]), "s"), ((S, [0, 2], [1, 3]), "s"), (([0, 1], S, [1, 3]), "s"),
    ((S, S, [[0, 1], [2, 3]]), "s"), (([1, 0], 2), "s"), (([0, 1], [1, 2], [3, 3]), "d"),
    ((S, M34), "s"), ((M234,), "d"), ((M234[:, :, 0],), "s"), ((S, [2, 2], None, [0, 1]), "s"),
    ((1, Ellipsis, [2, 0]), "s"), ((1, S, [[2], [0]]), "s"), ((slice(1, 1), [0, 2]), "s"),
    ((S, S, slice(2, 0)), "s"),
]
ADVANCED_FORMATS = {2: ["csr", "coo_unordered_nonunique", "dcsc"], 3: ["csf3", "dense_dcsr3"]}


def rotated(keys, fmt_id, fmt_ids):
  """The share of ``keys`` that format ``fmt_id`` runs: every key runs on one format of
  ``fmt_ids`` (deterministic sampling keeps the compile count low)."""
  return keys[fmt_ids.index(fmt_id)::len(fmt_ids)]


@pytest.mark.parametrize("fmt", util.format_params(
    [f for f in util.FORMATS if f[0] in ADVANCED_FORMATS[f[1].n_sparse]]))
def test_advanced_and_empty(fmt):
  A, x = util.random_sparse(3, util.SPARSE_SHAPES[fmt.n_sparse], fmt, padding=2)
  keys = ADVANCED_2D + EMPTY_2D if fmt.n_sparse == 2 else ADVANCED_3D
  for key, kind in rotated(keys, util.format_id(fmt), ADVANCED_FORMATS[fmt.n_sparse]):
    got = check_key(A, x, key, kind)
    if js.is_sparse(got) and not got.size and got.n_batch == 0:
      assert got.nse == 0, (key, got)                     # an empty window stores nothing


BASIC_BATCH_KEYS = [
    (1, "s"), ((S, 2), "s"), ((Ellipsis, 0), "s"), ((0, 1, 2), "d"), (([1, 1, 0],), "s"),
    ((S, S, [4, 0]), "s"), ((S, S, S, [2, 0, 2]), "s"), ((Ellipsis, slice(None, None, -1)), "s"),
    ((slice(None, None, -1),), "s"), ((None, 0), "s"), ((S, 3, None), "s"),
    ((S, slice(3, 1, -2), 1), "s"),
]
ADVANCED_BATCH_KEYS = [
    # advanced: batch arrays, points over the sparse dims, block arrays, mixed kinds, masks
    ((np.array([[1, 0], [0, 0]]),), "s"), ((S, R4, C4), "d"), ((S, IDX2), "s"),
    ((S, S, S, np.array([[2, 0], [1, 1]])), "s"), (([0, 1], [1, 2]), "s"),
    (([0, 1], S, S, [1, 2]), "s"), ((S, [0, 1], S, [1, 2]), "s"), ((S, [0, 1], [1, 2], [0, 0]), "d"),
    (([0, 1], [0, 1], [1, 2]), "d"), ((np.array([True, False]),), "s"),
    ((S, MASK_ROWS, MASK_COLS), "d"), ((S, MASK_FULL), "d"), ((1, [0, 1], 2), "d"),
    (([1, 0], 1, [0, 1]), "d"), ((S, 1, S, [0, 2]), "s"),
    # empty windows and empty index arrays along batch, sparse and block dims
    ((slice(0, 0),), "s"), ((S, slice(1, 1)), "s"), ((S, S, S, slice(2, 2)), "s"),
    ((EMPTY,), "s"), ((S, S, EMPTY), "s"), ((S, S, S, EMPTY), "s"), ((S, EMPTY, EMPTY), "d"),
]


@pytest.mark.parametrize("fmt", util.format_params(util.FORMATS_2D[:3]))
def test_getitem_batch_and_block(fmt):
  A, x = util.random_sparse(3, (2, 4, 5, 3), fmt, n_batch=1, n_dense=1, padding=2)
  fmt_ids = [i for i, _ in util.FORMATS_2D[:3]]
  for key, kind in BASIC_BATCH_KEYS + rotated(ADVANCED_BATCH_KEYS, util.format_id(fmt), fmt_ids):
    check_key(A, x, key, kind)
  assert (A[0].n_batch, A[0].n_dense, A[..., 0].n_dense, A[[1, 0]].n_batch) == (0, 1, 0, 1)
  assert isinstance(A[0, 1, 2], jax.Array)        # no sparse dim left: a dense block
  B = A[np.array([[1, 0], [0, 0]])]               # batch arrays gather buffers
  assert (B.n_batch, B.n_dense, B.nse) == (2, 1, A.nse)
  C = A[..., np.array([[2, 0], [1, 1]])]          # block arrays gather blocks
  assert (C.n_batch, C.n_dense, C.nse) == (1, 2, A.nse)
  assert A[0:0].shape == (0, 4, 5, 3) and todense(A[0:0].asformat("coo")).shape == (0, 4, 5, 3)


def test_duplicates():
  """Stored duplicates are summed by point lookups and kept apart by gathers."""
  idx, vals, ref = util.random_coo(4, (4, 5), 9, duplicates=3)
  A = js.from_coo(idx, vals, (4, 5), format=util.UNORDERED_COO, nse=11)
  assert int(A.nnz) == 9
  rows, cols = idx[:, 0], idx[:, 1]                  # every stored coordinate, repeated ones too
  util.assert_allclose(A[rows, cols], ref[rows, cols], dtype=np.float32)
  check_key(A, ref, (np.array([[rows[0], 1], [3, rows[1]]]),), "s")
  check_key(A, ref, (S, MASK_COLS), "s")
  check_key(A, ref, (MASK_FULL | (ref != 0),), "d")


def test_empty_results_convert():
  """Empty windows give 0-size dims and nse 0; they convert, densify and differentiate."""
  A, x = util.random_sparse(5, (4, 5), "csr", padding=2)
  E = A[2:2]
  assert (E.shape, E.nse, E.format) == ((0, 5), 0, js.CSR)
  for f in ["coo", "csc", "dcsr"]:
    assert todense(E.asformat(f)).shape == (0, 5)
  assert E.to_bcoo().todense().shape == (0, 5)
  Ab, xb = util.random_sparse(6, (2, 4, 5), "coo", n_batch=1, padding=2)
  Eb = Ab[1:1]
  assert Eb.shape == (0, 4, 5) and todense(Eb.asformat("csr")).shape == (0, 4, 5)
  assert int(Eb.nnz.size) == 0 and jnp.sum(Eb.todense()) == 0
  out = jax.eval_shape(lambda A: A[:, 3:1], A)
  assert (out.shape, out.nse) == ((4, 0), 0)
  for f in ["csr", "coo", "csc", "dcsr"]:                  # from_dense of an empty batch
    B = js.from_dense(jnp.zeros((0, 3, 4)), f, n_batch=1)
    assert (B.shape, B.nse, todense(B).shape) == ((0, 3, 4), 0, (0, 3, 4))
  B = js.from_dense(jnp.zeros((2, 0, 3, 4, 2)), "csc", n_batch=2, n_dense=1)
  assert (B.nse, todense(B.asformat("coo")).shape) == (0, (2, 0, 3, 4, 2))
  B = util.jit_from_dense(jnp.zeros((0, 2, 3, 4)), format="csf", nse=2, n_batch=1)
  assert (B.shape, B.nse, todense(B).shape) == ((0, 2, 3, 4), 2, (0, 2, 3, 4))


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_empty_windows_jacobians(jac):
  """Jacobians of empty windows: along a sparse dim, a batch dim and a block dim, and from x."""
  A, x = util.random_sparse(7, (2, 4, 5, 3), "csr", n_batch=1, n_dense=1, padding=2)
  for key, shape in [((S, slice(3, 1)), (2, 0, 5, 3)), ((slice(1, 1),), (0, 4, 5, 3)),
                     ((Ellipsis, slice(2, 2)), (2, 4, 5, 0)), ((S, 1, EMPTY), (2, 0, 3))]:
    got = jac(lambda d: dense(A.with_data(d)[key]))(A.data)
    assert got.shape == shape + A.data.shape, key
  sl = jax.jit(lambda A: ops_index.slice_(A, (0, 2, 0, 0), (2, 2, 5, 3)).todense())
  got = jac(lambda d: sl(A.with_data(d)))(A.data)
  assert got.shape == (2, 0, 5, 3) + A.data.shape
  got = jac(lambda y: js.from_dense(y, "coo", nse=12)[1:1].todense())(jnp.asarray(x[0, ..., 0]))
  assert got.shape == (0, 5, 4, 5)
  spars = js.sparsify(lambda M: jax.lax.dynamic_slice(M, (1, 0), (0, 5)))
  B = A[0, ..., 0]
  got = jac(lambda d: spars(B.with_data(d)).todense())(B.data)
  assert got.shape == (0, 5) + B.data.shape
  g = js.grad(lambda M: jnp.sum(M[:, 2:2].todense()) + jnp.sum(M.todense()))(B)
  util.assert_allclose(todense(g), np.where(x[0, ..., 0] != 0, 1., 0.).astype(np.float32))


def test_getitem_traced_index():
  A, x = util.random_sparse(4, (4, 5), "csr", padding=2)
  f = jax.jit(lambda A, i: A[i].todense())
  g = jax.jit(lambda A, i: A[:, i, None].todense())
  for i in [0, 3, -1, -4, 7, -9]:                     # out of range: clamped, as dynamic_slice
    row = int(np.clip(i + 4 if i < 0 else i, 0, 3))
    col = int(np.clip(i + 5 if i < 0 else i, 0, 4))
    util.assert_allclose(f(A, i), x[row])
    util.assert_allclose(g(A, i), x[:, col, None])
  h = jax.jit(lambda A, idx: A[idx].todense())       # a traced index array: capacity nse * k
  out = jax.eval_shape(lambda A, idx: A[idx], A, jnp.zeros(3, jnp.int32))
  assert (out.shape, out.nse) == ((3, 5), min(3 * A.nse, 15))
  util.assert_allclose(h(A, jnp.array([3, 3, -1])), x[[3, 3, -1]])
  # vmap over indices, over a batched SparseArray and over stored values
  util.assert_allclose(jax.vmap(lambda i: A[i].todense())(jnp.array([0, -1, 2])), x[[0, -1, 2]])
  Ab, xb = util.random_sparse(5, (2, 4, 5), "coo", n_batch=1, padding=2)
  got = jax.vmap(lambda A: A[1:, ::-1].todense())(Ab)
  util.assert_allclose(got, xb[:, 1:, ::-1])
  got = jax.vmap(lambda A, i: A[i, [4, 0]], in_axes=(0, None))(Ab, 2)   # points: dense
  util.assert_allclose(got, xb[:, 2, [4, 0]])
  datas = jnp.stack([A.data, -A.data])
  got = jax.vmap(lambda d: A.with_data(d)[::2, [1, 1]].todense())(datas)
  util.assert_allclose(got, np.stack([x[::2, [1, 1]], -x[::2, [1, 1]]]))
  out = jax.eval_shape(lambda A: A[None, 1:3, -1], A)
  assert out.shape == (1, 2)


def test_advanced_traced():
  """Traced integer arrays under jit (clamped), eval_shape, and vmap over index arrays."""
  A, x = util.random_sparse(8, (4, 5), "dcsr", padding=2)
  pts = jax.jit(lambda A, r, c: A[r, c])
  rows = jax.jit(lambda A, r: A[r])
  r, c = np.array([[0, 7], [-1, -9]]), np.array([[4, 1], [0, 2]])  # out of range: clamped
  rc, cc = np.clip(np.where(r < 0, r + 4, r), 0, 3), np.clip(np.where(c < 0, c + 5, c), 0, 4)
  util.assert_allclose(pts(A, r, c), x[rc, cc])
  util.assert_allclose(pts(A, r[:, :1], c[:1]), x[rc[:, :1], cc[:1]])    # broadcast
  util.assert_allclose(todense(rows(A, r)), x[rc])
  out = jax.eval_shape(rows, A, jax.ShapeDtypeStruct((2, 2), jnp.int32))
  assert (out.shape, out.nse) == ((2, 2, 5), min(4 * A.nse, 20))
  assert jax.eval_shape(pts, A, r, c).shape == (2, 2)
  util.assert_allclose(jax.vmap(lambda r, c: A[r, c])(rc, cc), x[rc, cc])
  util.assert_allclose(jax.vmap(lambda r: A[r, C4].sum())(R4), x[R4[:, None], C4].sum(1))
  Ab, xb = util.random_sparse(9, (2, 4, 5), "csr", n_batch=1, padding=2)
  util.assert_allclose(jax.vmap(lambda A: A[[0, 3], [1, 1]])(Ab), xb[:, [0, 3], [1, 1]])
  got = jax.vmap(lambda A, m: A[m].todense(), in_axes=(0, None))(Ab, MASK_ROWS)
  util.assert_allclose(got, xb[:, MASK_ROWS])
  util.assert_allclose(jax.vmap(lambda A, r: A[r, C4], in_axes=(0, None))(Ab, R4),
                       xb[:, R4, C4])


@pytest.mark.parametrize("key", [(slice(None, None, -2), [1, 1, 4]), (2,), (1, 3)],
                         ids=["flip_gather", "int", "scalar"])
def test_getitem_grads(key):
  A, x = util.random_sparse(6, (4, 5), "dcsr", padding=2)
  want = x[key]
  w = jnp.asarray(util.random_values(7, want.shape, np.float32))
  f = jax.jit(lambda d: jnp.sum(dense(A.with_data(d)[key]) * w))
  util.check_grads_both(f, [A.data], atol=1e-2, rtol=1e-2)
  grad = js.grad(lambda A: jnp.sum(dense(A[key]) * w))(A)
  ref = np.zeros_like(x)
  np.add.at(ref, key, np.asarray(w))
  util.assert_allclose(todense(grad), np.where(x != 0, ref, 0))


# key, and whether to run check_grads: on the point lookup and empty windows (new paths); the
# gather of sparse dims is checked to second order in test_getitem_grads, a multi-dim index
# adds a reshape (tests/test_shape.py), and batch / block gathers index buffers with jnp.
GRAD_KEYS = {
    "points": ((S, R4[:3], C4[:3]), True), "rows_2d": ((S, IDX2), False),
    "empty": ((S, slice(2, 2)), True), "batch_2d": ((np.array([[1, 0], [0, 0]]),), False),
    "block_2d": ((Ellipsis, np.array([[2, 0], [1, 1]])), False), "mixed": (([0, 1], [1, 2]), False),
    "mask": ((S, MASK_FULL), False),
}


@pytest.mark.parametrize("key,full", list(GRAD_KEYS.values()), ids=list(GRAD_KEYS))
def test_advanced_grads(key, full):
  """Gradients (float64) w.r.t. the stored values: js.grad keeps the pattern and matches
  numpy's scatter of the cotangent; check_grads to second order for the new sparse paths."""
  with util.dtype_context(np.float64):
    A, x = util.random_sparse(10, (2, 4, 5, 3), "csc", n_batch=1, n_dense=1, padding=2,
                              dtype=np.float64)
    want = util.reference(x)[key]
    w = jnp.asarray(util.random_values(11, want.shape, np.float64))
    if full:
      f = jax.jit(lambda d: jnp.sum(dense(A.with_data(d)[key]) * w))
      util.check_grads_both(f, [A.data], atol=1e-7, rtol=1e-7)
    grad = js.grad(lambda A: jnp.sum(dense(A[key]) * w))(A)
    ref = np.zeros_like(x)
    np.add.at(ref, key, np.asarray(w))
    util.assert_allclose(todense(grad), np.where(x != 0, ref, 0))


def test_getitem_errors():
  A, x = util.random_sparse(8, (4, 5), "csr")
  with pytest.raises(IndexError, match=r"__getitem__: index 5 is out of bounds for axis 1 with "
                     r"size 5"):
    A[0, 5]
  with pytest.raises(IndexError, match=r"index -5 is out of bounds for axis 0 with size 4"):
    A[-5]
  with pytest.raises(IndexError, match=r"index 9 is out of bounds for axis 1 with size 5"):
    A[:, [0, 9]]
  with pytest.raises(IndexError, match=r"index 4 is out of bounds for axis 0 with size 4"):
    A[np.array([[0], [4]]), 1]
  with pytest.raises(IndexError, match=r"too many indices for an array of rank 2; got 3"):
    A[0, 0, 0]
  with pytest.raises(IndexError, match=r"too many indices for an array of rank 2; got 3"):
    A[np.ones((4, 5), bool), 0]
  with pytest.raises(IndexError, match=r"only have a single ellipsis"):
    A[..., 0, ...]
  with pytest.raises(IndexError, match=r"shape mismatch: indexing arrays could not be broadcast "
                     r"together; got shapes \[\(2,\), \(3,\)\], expected shapes that broadcast"):
    A[[0, 1], [1, 2, 3]]
  with pytest.raises(IndexError, match=r"boolean index did not match the indexed dims 1..1; got "
                     r"a mask of shape \(4,\), expected \(5,\)"):
    A[:, MASK_ROWS]
  with pytest.raises(IndexError, match=r"a boolean mask index must be concrete; got a traced "
                     r"bool\[4\] under jit.*A\[jnp.nonzero\(mask, size=n\)\]"):
    jax.jit(lambda A, m: A[m])(A, MASK_ROWS)
  with pytest.raises(IndexError, match=r"a 0-d boolean index is not supported; got "):
    A[np.bool_(True)]
  with pytest.raises(TypeError, match=r"an array index must hold integers or booleans; got "
                     r"dtype float32"):
    A[np.asarray(x)]
  with pytest.raises(TypeError, match=r"unsupported index 0.5 of type float; expected ints, "
                     r"slices, None, Ellipsis, integer arrays or boolean masks"):
    A[0.5]
  with pytest.raises(TypeError, match=r"slice bounds must be static ints"):
    jax.jit(lambda A, i: A[i:])(A, 1)


def test_len():
  A, _ = util.random_sparse(9, (2, 4, 5), "csr", n_batch=1)
  assert (len(A), len(A[0]), len(A[:, 1:1]), len(A[0:0])) == (2, 4, 2, 0)
  Z = js.SparseArray.from_buffers(jnp.ones(1), [], shape=(), format=js.Format())
  with pytest.raises(TypeError, match=r"SparseArray.__len__: len\(\) of unsized object; got a "
                     r"0-d SparseArray"):
    len(Z)


def test_exact_buffers():
  A = js.from_dense(jnp.array([[1., 0., 2.], [0., 3., 0.]]), format="csr", nse=4)
  util.assert_buffers_equal(A[:, ::-1], [[0, 2, 3], [0, 2, 1, 3]], [2., 1., 3., 0.])
  util.assert_buffers_equal(A[[1, 1]], [[0, 1, 2], [1, 1, 3, 3, 3, 3]], [3., 3., 0., 0., 0., 0.])
  util.assert_buffers_equal(A[:, [True, False, True]], [[0, 2, 2], [0, 1, 2, 2]],
                            [1., 2., 0., 0.])
  util.assert_buffers_equal(A[1:1], [[0], []], [])             # an empty window: nse 0
  util.assert_buffers_equal(A[:, 2:2], [[0, 0, 0], []], [])
