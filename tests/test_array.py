"""Tests of jscorch/array.py, autodiff.py and _transpose.py: the SparseArray type."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import Layout, SparseFormatError

import util

SHAPE = util.SPARSE_SHAPES[2]          # (4, 5)


def _csr(seed=0, **kw):
  return util.random_sparse(seed, SHAPE, "csr", **kw)


# -- attributes ------------------------------------------------------------------------------
def test_attributes_unbatched():
  A, x = _csr(1)
  nnz = int((x != 0).sum())
  assert A.shape == (4, 5) and A.ndim == 2 and A.size == 20
  assert A.dtype == jnp.float32 and A.nse == nnz + 2
  assert (A.n_batch, A.n_sparse, A.n_dense) == (0, 2, 0)
  assert A.format == js.CSR and A.index_dtype == np.int32
  assert A.layout == Layout.make(js.CSR, (4, 5), nnz + 2)
  assert int(A.nnz) == nnz
  assert A.data is A.tree_flatten()[0][0] and A.data.shape == (nnz + 2,)
  assert A.pos(1) is A.indices[0] and A.crd(1) is A.indices[1]
  np.testing.assert_array_equal(np.asarray(A.pos(1)),
                                np.concatenate([[0], np.cumsum((x != 0).sum(1))]))
  assert js.is_sparse(A) and not js.is_sparse(x) and not js.is_sparse(A.data)


def test_attributes_batched_blocks():
  A, x = util.random_sparse(2, (2, 4, 5, 3), "coo", n_batch=1, n_dense=1)
  assert A.shape == (2, 4, 5, 3) and A.ndim == 4
  assert (A.n_batch, A.n_sparse, A.n_dense) == (1, 2, 1)
  assert A.format == js.COO.replace(n_batch=1, n_dense=1)
  assert A.data.shape == (2, A.nse, 3)
  counts = (x != 0).any(-1).reshape(2, -1).sum(-1)
  assert A.nse == counts.max() + 2
  np.testing.assert_array_equal(np.asarray(A.nnz), counts)
  assert A.pos(0).shape == (2, 2) and A.crd(0).shape == A.crd(1).shape == (2, A.nse)


@pytest.mark.parametrize("level, role, match", [
    (0, "pos", r"SparseArray.pos: level 0 of format Format\(dense, compressed\) has no pos "
     r"buffer"),
    (0, "crd", r"SparseArray.crd: level 0 of format Format\(dense, compressed\) has no crd"),
    (2, "pos", r"SparseArray.pos: level 2 of format"),
], ids=["dense_pos", "dense_crd", "no_level"])
def test_missing_buffer_errors(level, role, match):
  A, _ = _csr()
  with pytest.raises(SparseFormatError, match=match):
    getattr(A, role)(level)


@pytest.mark.parametrize("fmt, shape, kw, text", [
    ("csr", (4, 5), {}, "SparseArray(float32[4, 5], format=CSR, nse=12)"),
    ("csc", (2, 4, 5), dict(n_batch=1), "SparseArray(float32[2, 4, 5], format=CSC, nse=12, "
     "n_batch=1)"),
    ("coo", (4, 5, 3), dict(n_dense=1), "SparseArray(float32[4, 5, 3], format=COO, nse=12, "
     "n_dense=1)"),
    ("csf", (2, 3, 4), {}, "SparseArray(float32[2, 3, 4], format=CSF, nse=14)"),
    (util.DCSC, (4, 5), {}, "SparseArray(float32[4, 5], format=Format(compressed, compressed, "
     "mode_ordering=(1, 0)), nse=12)"),
], ids=["csr", "csc_batched", "coo_block", "csf", "custom"])
def test_repr(fmt, shape, kw, text):
  A, _ = util.random_sparse(3, shape, fmt, **kw)
  assert repr(A) == text


def test_repr_dtype():
  A, _ = _csr(4)
  assert repr(A.astype(jnp.int32)).startswith("SparseArray(int32[4, 5], format=CSR")


# -- pytree ----------------------------------------------------------------------------------
def test_pytree_flatten_unflatten():
  A, x = util.random_sparse(5, (2, 4, 5), "dcsr", n_batch=1)
  leaves, treedef = jax.tree_util.tree_flatten(A)
  assert len(leaves) == 5 and leaves[0] is A.data
  assert all(a is b for a, b in zip(leaves[1:], A.indices))
  B = jax.tree_util.tree_unflatten(treedef, leaves)
  assert B.format == A.format and B.shape == A.shape and B.nse == A.nse
  util.assert_allclose(B.todense(), x, np.float32)
  # The aux data holds no batch dims: the same treedef describes one batch element.
  B0 = jax.tree_util.tree_unflatten(treedef, [leaf[0] for leaf in leaves])
  assert B0.n_batch == 0 and B0.shape == (4, 5) and B0.format == js.DCSR
  util.assert_allclose(B0.todense(), x[0], np.float32)
  assert jax.tree_util.tree_structure(util.element(A, 1)) == treedef


def test_pytree_map_and_with_data():
  A, x = _csr(6)
  B = jax.tree_util.tree_map(lambda l: l * 2 if l.dtype == jnp.float32 else l, A)
  util.assert_allclose(B.todense(), 2 * util.reference(x), np.float32)
  C = A.with_data(-A.data)
  assert all(a is b for a, b in zip(C.indices, A.indices))
  util.assert_allclose(C.todense(), -util.reference(x), np.float32)


# -- jit and vmap ----------------------------------------------------------------------------
def test_jit_argument_and_result():
  A, x = _csr(7)
  w = util.random_values(8, SHAPE, np.float32)

  @jax.jit
  def f(A, w):
    return A.with_data(A.data * 3.0), (A.todense() * w).sum()

  B, s = f(A, w)
  assert isinstance(B, js.SparseArray) and B.format == A.format and B.nse == A.nse
  for a, b in zip(A.indices, B.indices):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  util.assert_allclose(B.todense(), 3 * util.reference(x), np.float32)
  np.testing.assert_allclose(float(s), (util.reference(x) * w).sum(), rtol=1e-5)


def test_vmap_over_batch_dimension():
  A, x = util.random_sparse(9, (2, 4, 5), "csr", n_batch=1)
  w = util.random_values(10, (5, 3), np.float32)
  seen = []

  def f(A):
    seen.append((A.n_batch, A.shape, A.format))
    return A.todense() @ w

  out = jax.vmap(f)(A)
  assert seen == [(0, (4, 5), js.CSR)]
  stacked = np.stack([np.asarray(f(util.element(A, i))) for i in range(2)])
  util.assert_allclose(out, stacked, np.float32)
  util.assert_allclose(out, util.reference(x) @ w, np.float32)


def test_vmap_returns_batched_sparse_and_in_axes_none():
  A, x = util.random_sparse(11, (2, 4, 5), "csr", n_batch=1)
  B = jax.vmap(lambda A: A.with_data(A.data + 1.0))(A)
  assert B.n_batch == 1 and B.format == A.format and B.shape == A.shape
  util.assert_allclose(B.data, np.asarray(A.data) + 1, np.float32)
  A0 = util.element(A, 0)
  s = np.array([0.5, -2.0], np.float32)
  out = jax.vmap(lambda A, s: A.todense() * s, in_axes=(None, 0))(A0, s)
  util.assert_allclose(out, s[:, None, None] * util.reference(x[0]), np.float32)


def _batch2_block2(seed):
  """A CSR array with two batch and two block dims, built under jit (one compile)."""
  shape = (2, 3, 4, 5, 2, 3)
  x = util.random_dense(seed, shape, n_batch=2, n_dense=2)
  nse = util.stored_count(x, 2, 2) + 2
  build = jax.jit(lambda x: js.from_dense(x, "csr", nse=nse, n_batch=2, n_dense=2))
  return build(x), x


def test_nested_vmap_two_batch_dims():
  A, x = _batch2_block2(12)
  assert A.n_batch == 2 and A.n_dense == 2 and A.format == js.CSR.replace(n_batch=2, n_dense=2)
  out = jax.jit(jax.vmap(jax.vmap(lambda A: A.todense())))(A)
  util.assert_allclose(out, x, np.float32)
  out = jax.jit(jax.vmap(lambda A: A.todense(), in_axes=1))(A)       # the second batch dim
  util.assert_allclose(out, util.reference(x).swapaxes(0, 1), np.float32)


def test_eval_shape_todense():
  A, _ = util.random_sparse(13, (2, 4, 5, 3), "coo", n_batch=1, n_dense=1)
  out = jax.eval_shape(lambda A: A.todense(), A)
  assert out.shape == (2, 4, 5, 3) and out.dtype == jnp.float32
  spec = jax.tree_util.tree_map(lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype), A)
  out = jax.eval_shape(lambda A: A.todense(), spec)
  assert out.shape == (2, 4, 5, 3)


# -- differentiation -----------------------------------------------------------------------
def _data_grad_reference(A, dense_grad):
  """d loss / d A.data from the dense gradient: gather at stored coords, 0 for padding."""
  coords = util.stored_coordinates(A)
  g = np.zeros(A.data.shape)
  g[:len(coords)] = dense_grad[tuple(coords.T)]
  return g


@pytest.mark.parametrize("fmt", util.format_params([util.FORMATS[2], util.FORMATS[4]]))
def test_grad_and_value_and_grad(fmt):
  A, x = util.random_sparse(14, SHAPE, fmt)
  w = util.random_values(15, SHAPE, np.float32)

  def loss(A):
    d = A.todense()
    return (d * w).sum() + (d ** 2).sum()

  g = js.grad(loss)(A)
  assert isinstance(g, js.SparseArray) and g.format == A.format and g.nse == A.nse
  assert all(a is b for a, b in zip(g.indices, A.indices))     # the same pattern
  expected = _data_grad_reference(A, w + 2 * util.reference(x))
  util.assert_allclose(g.data, expected, np.float32)
  val, g2 = js.value_and_grad(loss)(A)
  xr = util.reference(x)
  np.testing.assert_allclose(float(val), (w * xr).sum() + (xr ** 2).sum(), rtol=1e-5)
  util.assert_allclose(g2.data, expected, np.float32)


def test_grad_argnums_and_has_aux():
  A, x = _csr(16)
  w = util.random_values(17, SHAPE, np.float32)

  def loss(w, A):
    s = (A.todense() * w).sum()
    return s * s, s

  (gw, gA), aux = js.grad(loss, argnums=(0, 1), has_aux=True)(w, A)
  s = float((util.reference(x) * w).sum())
  np.testing.assert_allclose(float(aux), s, rtol=1e-5)
  util.assert_allclose(gw, 2 * s * util.reference(x), np.float32)
  assert isinstance(gA, js.SparseArray)
  util.assert_allclose(gA.data, _data_grad_reference(A, 2 * s * w.astype(np.float64)),
                       np.float32)
  (val, aux), gA = js.value_and_grad(loss, argnums=1, has_aux=True)(w, A)
  np.testing.assert_allclose(float(val), s * s, rtol=1e-5)
  util.assert_allclose(gA.data, _data_grad_reference(A, 2 * s * w.astype(np.float64)),
                       np.float32)


def test_grad_of_pytree_holding_sparse_arrays():
  A, x = _csr(18)
  B, y = util.random_sparse(19, (2, 4, 5), "coo", n_batch=1)
  params = {"A": A, "B": B, "c": jnp.float32(1.5)}

  def loss(p):
    return p["c"] * (p["A"].todense().sum() + (p["B"].todense() ** 2).sum())

  g = js.grad(loss)(params)
  assert isinstance(g["A"], js.SparseArray) and isinstance(g["B"], js.SparseArray)
  util.assert_allclose(g["A"].data, _data_grad_reference(A, np.full(SHAPE, 1.5)), np.float32)
  for b in range(2):
    util.assert_allclose(g["B"].data[b],
                         _data_grad_reference(util.element(B, b), 3.0 * util.reference(y[b])),
                         np.float32)
  np.testing.assert_allclose(float(g["c"]), x.sum() + (util.reference(y) ** 2).sum(),
                             rtol=1e-5)


def test_jax_grad_allow_int():
  A, x = _csr(20)
  w = util.random_values(21, SHAPE, np.float32)
  g = jax.grad(lambda A: (A.todense() * w).sum(), allow_int=True)(A)
  assert isinstance(g, js.SparseArray)
  assert all(i.dtype == jax.dtypes.float0 for i in g.indices)
  assert all(i.shape == a.shape for i, a in zip(g.indices, A.indices))
  util.assert_allclose(g.data, _data_grad_reference(A, w.astype(np.float64)), np.float32)


def test_jax_grad_without_allow_int_is_an_error():
  A, _ = _csr(22)
  with pytest.raises(TypeError, match=r"grad requires real- or complex-valued inputs.*int32"):
    jax.grad(lambda A: A.todense().sum())(A)


def test_grad_under_jit_and_vmap():
  A, x = util.random_sparse(23, (2, 4, 5), "dcsr", n_batch=1)
  w = util.random_values(24, SHAPE, np.float32)
  g = jax.jit(jax.vmap(js.grad(lambda A: (A.todense() * w).sum())))(A)
  assert isinstance(g, js.SparseArray) and g.n_batch == 1
  for b in range(2):
    util.assert_allclose(g.data[b], _data_grad_reference(util.element(A, b),
                                                         w.astype(np.float64)), np.float32)


# -- transpose -------------------------------------------------------------------------------
def _check_transposed(T, x, axes, n_batch=0):
  """T must store x.transpose(axes): checked by decoding T's buffers with numpy."""
  xt = x.transpose(axes)
  assert T.shape == xt.shape
  for b in np.ndindex(*xt.shape[:n_batch]):
    Tb = jax.tree_util.tree_map(lambda l: l[b], T) if n_batch else T
    coords = util.stored_coordinates(Tb)
    data = np.asarray(Tb.data)
    np.testing.assert_array_equal(data[:len(coords)], xt[b][tuple(coords.T)])
    mask = xt[b] != 0
    if T.n_dense:
      mask = mask.any(axis=tuple(range(mask.ndim - T.n_dense, mask.ndim)))
    assert len(coords) == mask.sum()


@pytest.mark.parametrize("fmt", util.format_params())
def test_T_all_formats(fmt):
  A, x = util.random_sparse(25, util.SPARSE_SHAPES[fmt.n_sparse], fmt)
  T = A.T
  axes = tuple(reversed(range(x.ndim)))
  _check_transposed(T, x, axes)
  assert T.format.levels == fmt.levels                              # storage unchanged
  assert T.data is A.data or np.array_equal(np.asarray(T.data), np.asarray(A.data))
  TT = T.T
  assert TT.format == A.format
  for a, b in zip(A.indices, TT.indices):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_T_formats_and_todense():
  A, x = _csr(26)
  assert A.T.format == js.CSC and A.T.T.format == js.CSR
  util.assert_allclose(A.T.todense(), util.reference(x).T, np.float32)
  B, y = util.random_sparse(27, SHAPE, "coo")
  assert B.T.format == js.Format(js.compressed(unique=False), js.singleton,
                                 mode_ordering=(1, 0))
  util.assert_allclose(B.T.todense(), util.reference(y).T, np.float32)
  assert util.random_sparse(28, SHAPE, "dcsr")[0].T.format == util.DCSC


@pytest.mark.parametrize("axes", list(itertools.permutations(range(3))),
                         ids=lambda a: "".join(map(str, a)))
def test_transpose_permutations_within_sparse_group(axes):
  A, x = util.random_sparse(29, (2, 3, 4), util.DENSE_DCSR3)
  T = A.transpose(axes)
  _check_transposed(T, x, axes)
  inv = tuple(np.argsort(axes))
  back = T.transpose(inv)
  assert back.format == A.format and back.shape == A.shape


def test_transpose_batch_and_block_groups():
  A, x = _batch2_block2(30)
  axes = (1, 0, 3, 2, 5, 4)
  T = A.transpose(axes)
  assert T.n_batch == 2 and T.n_dense == 2 and T.format == js.CSC.replace(n_batch=2, n_dense=2)
  _check_transposed(T, x, axes, n_batch=2)
  T = A.transpose((0, 1, 2, 3, -1, -2))                     # negative axes
  _check_transposed(T, x, (0, 1, 2, 3, 5, 4), n_batch=2)


@pytest.mark.parametrize("shape, fmt, kw, axes, match", [
    ((2, 4, 5), "csr", dict(n_batch=1), None,
     r"SparseArray.transpose: axes=\(2, 1, 0\) moves a dimension between the batch \(0,\), "
     r"sparse \(1, 2\) and block \(\) groups of SparseArray\(float32\[2, 4, 5\], format=CSR, "
     r"nse=12, n_batch=1\); only permutations within each group are free"),
    ((4, 5, 3), "coo", dict(n_dense=1), (2, 0, 1),
     r"axes=\(2, 0, 1\) moves a dimension between the batch \(\), sparse \(0, 1\) and block "
     r"\(2,\) groups"),
    ((4, 5), "csr", {}, (0, 0), r"SparseArray.transpose: axes must be a permutation of "
     r"range\(2\); got \(0, 0\)"),
    ((4, 5), "csr", {}, (0, 1, 2), r"axes must be a permutation of range\(2\); got "
     r"\(0, 1, 2\)"),
], ids=["T_of_batched", "block_into_sparse", "repeat", "too_long"])
def test_transpose_errors(shape, fmt, kw, axes, match):
  A, _ = util.random_sparse(31, shape, fmt, **kw)
  with pytest.raises(SparseFormatError, match=match):
    A.transpose(axes)


# -- astype ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int32, np.complex64, np.float16],
                         ids=["int32", "complex64", "float16"])
def test_astype(dtype):
  A, x = _csr(32)
  B = A.astype(dtype)
  assert B.dtype == dtype and B.format == A.format
  assert all(a is b for a, b in zip(B.indices, A.indices))
  util.assert_allclose(B.data, np.asarray(A.data).astype(dtype), dtype)
  util.assert_allclose(B.todense(), x.astype(dtype), dtype)


def test_block_until_ready_returns_self():
  A, _ = _csr(33)
  assert A.block_until_ready() is A
