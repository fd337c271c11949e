"""Tests of jscorch/ops/shape.py: reshape, expand_dims, squeeze, broadcast_to, stack, concat, A.T.

Every operation runs on fresh random data stored with padding, in every format of
``util.FORMATS`` (named and custom, 2-D and 3-D) and with batch and block dims, and is
compared with numpy (float64) on the densified array: values, exact shapes, result
formats (the documented rule) and capacities. ``jit``, ``vmap`` (over a batched
SparseArray, over stored values, ``in_axes`` with ``None``), ``check_grads`` (second
order, both modes, w.r.t. the stored values) and ``eval_shape`` are checked on a
sample; every error message is matched.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import jscorch.numpy as jsnp
from jscorch.primitives.formats import resolve_format

import util

todense = jax.jit(lambda A: A.todense())


def dense(x):
  return todense(x) if js.is_sparse(x) else x


def rule(A, n_sparse):
  """The documented result format for ``n_sparse`` sparse dims (named if it exists, else COO)."""
  if n_sparse == A.n_sparse:
    return base(A)
  name = A.format.name
  ok = name in ("coo", "csf") or (name is not None and n_sparse == 2)
  return resolve_format(name if ok else "coo", n_sparse)


def base(A):
  """``A.format`` without its batch / block counts."""
  return A.format.replace(n_batch=0, n_dense=0)


# -- reshape -------------------------------------------------------------------------------------
RESHAPES = {2: [(2, -1, 5), (1, 20)], 3: [(4, 6), (24,)]}


@pytest.mark.parametrize("fmt", util.format_params())
def test_reshape_every_format(fmt):
  A, x = util.random_sparse(0, util.default_shape(fmt), fmt, padding=2)
  for shape in RESHAPES[fmt.n_sparse]:
    B = A.reshape(shape)
    want = x.reshape(shape)
    assert B.shape == want.shape and (B.n_batch, B.n_dense) == (0, 0), (shape, B)
    assert base(B) == rule(A, len(want.shape)), (shape, B.format)
    assert B.nse == A.nse
    util.assert_allclose(todense(B), util.reference(want), dtype=np.float32)
  assert js.reshape(A, A.shape) is A
  util.assert_allclose(todense(jsnp.reshape(A, (-1,))), util.reference(x).ravel())


def test_reshape_batch_and_block():
  A, x = util.random_sparse(1, (2, 4, 5, 3), "csr", n_batch=1, n_dense=1, padding=2)
  B = js.reshape(A, (2, 20, 3))           # batch and block kept: only the sparse dims move
  assert (B.n_batch, B.n_dense, B.nse, base(B)) == (1, 1, A.nse, js.Format(js.compressed))
  util.assert_allclose(todense(B), x.reshape(2, 20, 3))
  C = js.reshape(A, (2, 2, 10, 3))        # 2 sparse dims again: CSR kept
  assert (C.n_batch, C.n_dense, base(C)) == (1, 1, js.CSR)
  util.assert_allclose(todense(C), x.reshape(2, 2, 10, 3))
  D = js.reshape(A, (8, 15))              # batch / block not kept: every dim becomes sparse
  assert (D.n_batch, D.n_dense, D.nse, base(D)) == (0, 0, 2 * A.nse * 3, js.CSR)
  util.assert_allclose(todense(D), x.reshape(8, 15))
  E = js.reshape(A, (2, 20, 3), format="csf")
  assert (E.n_batch, E.n_dense, base(E)) == (1, 1, js.Format(js.compressed))
  util.assert_allclose(todense(E), x.reshape(2, 20, 3))


def test_reshape_format_override_and_duplicates():
  idx, vals, ref = util.random_coo(2, (4, 6), 9, duplicates=3)
  A = js.from_coo(idx, vals, (4, 6), format=util.UNORDERED_COO)
  assert base(A.reshape(8, 3)) == util.UNORDERED_COO     # same sparse rank: format kept
  assert base(A.reshape(24)) == js.Format(js.compressed)   # a custom format becomes COO
  B = A.reshape((3, 8), format="dcsr")       # unique result: duplicates summed
  assert base(B) == js.DCSR
  util.assert_allclose(todense(B), ref.reshape(3, 8))
  assert int(B.nnz) == int((ref != 0).sum())


def test_reshape_errors():
  A, _ = util.random_sparse(3, (4, 5), "csr")
  with pytest.raises(ValueError, match=r"reshape: cannot reshape an array of size 20 \(shape "
                     r"\(4, 5\)\) into shape \(3, 7\) of size 21; the sizes must be equal"):
    A.reshape(3, 7)
  with pytest.raises(ValueError, match=r"reshape: at most one dimension may be -1"):
    A.reshape(-1, -1)
  with pytest.raises(ValueError, match=r"reshape: cannot infer -1 in shape=\(3, -1\) for an "
                     r"array of size 20"):
    A.reshape(3, -1)
  with pytest.raises(ValueError, match=r"reshape: a SparseArray needs at least one dimension"):
    js.reshape(js.from_dense(jnp.ones((1, 1))), ())
  with pytest.raises(TypeError, match=r"reshape: shape must be a static Python int"):
    jax.jit(lambda A, n: A.reshape(n, -1))(A, 2)


def test_reshape_transforms():
  A, x = util.random_sparse(4, (4, 5), "csr", padding=3)
  f = lambda A: js.reshape(A, (2, 10)).todense()
  util.assert_allclose(jax.jit(f)(A), x.reshape(2, 10))
  out = jax.eval_shape(lambda A: js.reshape(A, (2, 10)), A)
  assert (out.shape, out.nse, out.format) == ((2, 10), A.nse, js.CSR)
  # vmap over a batched SparseArray, against the stacked loop
  Ab, xb = util.random_sparse(5, (2, 4, 5), "coo", n_batch=1, padding=2)
  util.assert_allclose(jax.vmap(f)(Ab), np.stack([x_.reshape(2, 10) for x_ in xb]))
  # vmap over stored values, with an unbatched second argument (in_axes None)
  datas = jnp.stack([A.data, 2 * A.data])
  g = lambda d, s: js.reshape(A.with_data(d), (10, 2)).todense() * s
  got = jax.vmap(g, in_axes=(0, None))(datas, 3.0)
  util.assert_allclose(got, np.stack([3 * x.reshape(10, 2), 6 * x.reshape(10, 2)]))
  # grads w.r.t. the stored values (padding stays out of the result)
  w = jnp.asarray(util.random_values(6, (2, 10), np.float32))
  util.check_grads_both(jax.jit(lambda d: jnp.sum(js.reshape(A.with_data(d), (2, 10)).todense()
                                                  * w)), [A.data], atol=1e-2, rtol=1e-2)
  grad = js.grad(lambda A: jnp.sum(A.reshape(2, 10).todense() * w))(A)
  util.assert_allclose(todense(grad), np.where(x != 0, np.asarray(w).reshape(4, 5), 0))


# -- expand_dims / squeeze / broadcast_to ------------------------------------------------------
SAMPLE = [f for f in util.FORMATS if f[0] in ("csr", "coo_unordered_nonunique", "dcsc", "csf3",
                                               "dense_dcsr3")]


@pytest.mark.parametrize("fmt", util.format_params(SAMPLE))
def test_expand_dims_squeeze_formats(fmt):
  A, x = util.random_sparse(7, (2,) + util.SPARSE_SHAPES[fmt.n_sparse] + (3,), fmt, n_batch=1,
                            n_dense=1, padding=2)
  ns = fmt.n_sparse
  cases = {0: (2, 0, 1), 1: (2, 0, 1), 2: (1, ns + 1, 1), ns + 2: (1, 0, 2),
           (0, ns + 3): (2, 0, 2)}      # position -> (n_batch, new sparse dims, n_dense)
  for axis, (nb, extra, nd) in cases.items():
    B = js.expand_dims(A, axis)
    want = np.expand_dims(x, axis)
    assert B.shape == want.shape and (B.n_batch, B.n_dense) == (nb, nd), (axis, B)
    assert base(B) == (base(A) if not extra else rule(A, extra)), (axis, B.format)
    util.assert_allclose(todense(B), want)
    C = js.squeeze(B, axis)
    assert C.shape == x.shape and (C.n_batch, C.n_dense) == (1, 1), (axis, C)
    util.assert_allclose(todense(C), x)
  D = js.squeeze(js.expand_dims(A, (1, 3)))
  assert D.shape == x.shape
  util.assert_allclose(todense(D), x)


def test_squeeze_sparse_dims_and_dense_result():
  A, x = util.random_sparse(8, (1, 5), "csr", padding=2)
  B = A.squeeze(0)
  assert (B.shape, base(B), B.nse) == ((5,), js.Format(js.compressed), A.nse)
  util.assert_allclose(todense(B), x[0])
  C, y = util.random_sparse(9, (1, 1, 3), "csr", n_dense=1, padding=1)
  d = js.squeeze(C)                  # no sparse dim left: a dense array
  assert isinstance(d, jax.Array) and d.shape == (3,)
  util.assert_allclose(d, y[0, 0])
  E, z = util.random_sparse(10, (2, 1, 4, 3), js.CSF, padding=2)
  F = js.squeeze(E, 1)
  assert base(F) == js.CSF                  # csf of the new rank
  util.assert_allclose(todense(F), z[:, 0])
  with pytest.raises(ValueError, match=r"squeeze: cannot squeeze axis 1 of size 5 \(shape "
                     r"\(1, 5\)\); expected size 1"):
    js.squeeze(A, 1)
  with pytest.raises(ValueError, match=r"squeeze: axis out of range; got axis=2"):
    js.squeeze(A, 2)
  with pytest.raises(ValueError, match=r"expand_dims: repeated axis; got axis=\(0, 0\)"):
    js.expand_dims(A, (0, 0))


def test_expand_squeeze_transforms():
  A, x = util.random_sparse(11, (4, 5), "csr", padding=2)
  f = lambda A: js.squeeze(js.expand_dims(A, (0, 2)), 0).todense()
  util.assert_allclose(jax.jit(f)(A), x[:, None])
  out = jax.eval_shape(lambda A: js.expand_dims(A, 1), A)
  assert (out.shape, out.n_batch, out.nse) == ((4, 1, 5), 0, A.nse)
  Ab, xb = util.random_sparse(12, (2, 4, 5), "csr", n_batch=1, padding=2)
  util.assert_allclose(jax.vmap(f)(Ab), xb[:, :, None])
  w = jnp.asarray(util.random_values(13, (4, 1, 5), np.float32))
  g = jax.jit(lambda d: jnp.sum(js.squeeze(js.expand_dims(A.with_data(d), 1), 1).todense()
                                * w[:, 0]))
  util.check_grads_both(g, [A.data], atol=1e-2, rtol=1e-2)


def test_broadcast_to():
  A, x = util.random_sparse(14, (4, 5), "csc", padding=2)
  B = js.broadcast_to(A, (3, 4, 5))
  assert (B.shape, B.n_batch, B.format, B.nse) == ((3, 4, 5), 1, js.CSC.replace(n_batch=1), A.nse)
  assert all(i.shape[0] == 3 for i in B.indices)
  util.assert_allclose(todense(B), np.broadcast_to(x, (3, 4, 5)))
  Ab, xb = util.random_sparse(15, (1, 4, 5, 2), "coo", n_batch=1, n_dense=1, padding=1)
  C = jsnp.broadcast_to(Ab, (2, 3, 4, 5, 2))           # a unit batch dim broadcasts too
  assert (C.n_batch, C.n_dense) == (2, 1)
  util.assert_allclose(todense(C), np.broadcast_to(xb, (2, 3, 4, 5, 2)))
  f = jax.jit(lambda d: js.broadcast_to(A.with_data(d), (2, 4, 5)).todense())
  util.assert_allclose(f(A.data), np.broadcast_to(x, (2, 4, 5)))
  util.check_grads_both(lambda d: jnp.sum(f(d) ** 2), [A.data], atol=1e-2, rtol=1e-2)
  out = jax.eval_shape(lambda A: js.broadcast_to(A, (6, 4, 5)), A)
  assert (out.shape, out.n_batch) == ((6, 4, 5), 1)
  got = jax.vmap(lambda A: js.broadcast_to(A, (2, 4, 5)).todense())(
      js.broadcast_to(A, (3, 4, 5)))
  util.assert_allclose(got, np.broadcast_to(x, (3, 2, 4, 5)))
  for shape in [(4, 1), (3, 5, 5), (4, 5, 1)]:
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast SparseArray\(float32"
                       rf"\[4, 5\].*to shape {re_tuple(shape)}; expected new leading dims"):
      js.broadcast_to(A, shape)


def re_tuple(shape):
  return r"\(" + ", ".join(map(str, shape)) + r"\)"


# -- stack / concatenate -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", util.format_params(SAMPLE))
def test_stack_concatenate_formats(fmt):
  shape = util.SPARSE_SHAPES[fmt.n_sparse]
  A, x = util.random_sparse(16, shape, fmt, padding=2)
  B, y = util.random_sparse(17, shape, "coo" if fmt.n_sparse != 2 else "csc", padding=1)
  S = js.stack([A, B])                          # a new batch dim: buffers stacked
  assert (S.n_batch, base(S), S.nse) == (1, base(A), max(A.nse, B.nse))
  util.assert_allclose(todense(S), np.stack([x, y]))
  for axis in range(1, fmt.n_sparse + 1):       # a new sparse dim: patterns merged
    T = js.stack([A, B], axis=axis)
    assert T.n_batch == 0 and T.shape == np.stack([x, y], axis).shape
    util.assert_allclose(todense(T), np.stack([x, y], axis))
  for axis in range(fmt.n_sparse):
    C = js.concatenate([A, B, A], axis=axis)
    assert C.nse == 2 * A.nse + B.nse and C.format.mode_ordering == A.format.mode_ordering
    assert [lvl.kind for lvl in C.format.levels] == [lvl.kind for lvl in A.format.levels]
    assert C.format.ordered and C.format.unique, C.format
    util.assert_allclose(todense(C), np.concatenate([x, y, x], axis))


@pytest.mark.slow
def test_stack_concatenate_batched_and_transforms():
  A, x = util.random_sparse(18, (2, 4, 5, 3), "csr", n_batch=1, n_dense=1, padding=2)
  B, y = util.random_sparse(19, (2, 4, 5, 3), "dcsr", n_batch=1, n_dense=1, padding=1)
  C = jsnp.concatenate([A, B], axis=0)         # along the batch dim: B converted to CSR
  assert (C.shape, C.n_batch, base(C), C.nse) == ((4, 4, 5, 3), 1, js.CSR, A.nse)
  util.assert_allclose(todense(C), np.concatenate([x, y]))
  S = jsnp.stack([A, B], axis=1)
  assert (S.shape, S.n_batch) == ((2, 2, 4, 5, 3), 2)
  util.assert_allclose(todense(S), np.stack([x, y], 1))
  T = js.stack([A, B], axis=3)
  util.assert_allclose(todense(T), np.stack([x, y], 3))
  f = jax.jit(lambda a, b: js.stack([A.with_data(a), B.with_data(b)], axis=2).todense())
  util.assert_allclose(f(A.data, B.data), np.stack([x, y], 2))
  with jax.enable_x64(True):               # float64: the numerical second order is exact enough
    w = jnp.asarray(util.random_values(25, (2, 4, 2, 5, 3), np.float64))
    util.check_grads_both(lambda a, b: jnp.sum(f(a, b) ** 2 * w),
                          [A.data.astype(jnp.float64), B.data.astype(jnp.float64)])
  out = jax.eval_shape(lambda A, B: js.concatenate([A, B], axis=2), A, B)
  assert (out.shape, out.nse) == ((2, 4, 10, 3), A.nse + B.nse)
  # vmap over the batch dim of both operands, against the stacked loop
  got = jax.vmap(lambda a, b: js.stack([a, b], axis=1).todense())(A, B)
  util.assert_allclose(got, np.stack([np.stack([x[i], y[i]], 1) for i in range(2)]))


def test_stack_concatenate_errors():
  A, x = util.random_sparse(20, (4, 5), "csr")
  B, _ = util.random_sparse(21, (4, 6), "csr")
  with pytest.raises(ValueError, match=r"stack: all operands must have the same shape and "
                     r"batch/block split; got shapes \[\(4, 5\), \(4, 6\)\]"):
    js.stack([A, B])
  with pytest.raises(ValueError, match=r"concatenate: operands must match except along axis 0; "
                     r"got shapes \[\(4, 5\), \(4, 6\)\]"):
    js.concatenate([A, B])
  with pytest.raises(TypeError, match=r"stack: operands must be all SparseArrays or all dense"):
    js.stack([A, jnp.asarray(x)])
  with pytest.raises(ValueError, match=r"stack: need at least one array"):
    js.stack([])
  D, _ = util.random_sparse(22, (4, 5, 2), "csr", n_dense=1)
  with pytest.raises(ValueError, match=r"stack: axis 3 would be a block dimension"):
    js.stack([D, D], axis=3)
  with pytest.raises(ValueError, match=r"concatenate: axis 2 is a block dimension"):
    js.concatenate([D, D], axis=2)
  with pytest.raises(ValueError, match=r"stack: axis out of range; got axis=4"):
    js.stack([D, D], axis=4)
  util.assert_allclose(js.stack([x, x], axis=1), np.stack([x, x], 1))   # dense: jnp.stack


# -- transpose -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", util.format_params())
def test_transpose_every_format(fmt):
  A, x = util.random_sparse(23, util.default_shape(fmt, 1, 1), fmt, n_batch=1, n_dense=1)
  ns = fmt.n_sparse
  perm = (0,) + tuple(range(ns, 0, -1)) + (ns + 1,)
  T = A.transpose(perm)
  assert T.nse == A.nse and all(a is b for a, b in zip(T.indices, A.indices))   # free
  util.assert_allclose(todense(T), np.transpose(x, perm))
  B, y = util.random_sparse(24, util.SPARSE_SHAPES[ns], fmt)
  util.assert_allclose(todense(B.T), y.T)
  assert base(B.T.T) == base(B)
  if fmt in (js.CSR, js.CSC):
    assert base(B.T) == (js.CSC if fmt == js.CSR else js.CSR)


def test_exact_buffers():
  A = js.from_dense(jnp.array([[1., 0., 2.], [0., 3., 0.]]), format="csr", nse=4)
  util.assert_buffers_equal(A.reshape(3, 2), [[0, 1, 2, 3], [0, 0, 0, 2]], [1., 2., 3., 0.])
  util.assert_buffers_equal(js.broadcast_to(A, (2, 2, 3)), [[[0, 2, 3]] * 2, [[0, 2, 1, 3]] * 2],
                            [[1., 2., 3., 0.]] * 2)
  util.assert_buffers_equal(js.expand_dims(A, 0), [[[0, 2, 3]], [[0, 2, 1, 3]]],
                            [[1., 2., 3., 0.]])
