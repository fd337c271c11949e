"""Tests of jscorch/ops_index.py: ``A[key]`` with ints, slices, None, Ellipsis and integer arrays.

Each key is applied to fresh random SparseArrays stored with padding (every format of
``util.FORMATS``, and batched / blocked arrays) and compared with numpy indexing of
the densified float64 array: values, exact shapes, result formats and capacities.
Traced integer indices under ``jit`` follow ``lax.dynamic_slice`` (clamped); ``vmap``
over a batched SparseArray, over stored values and over indices; ``check_grads``
(second order, both modes, w.r.t. the stored values); ``eval_shape``; every error
message is matched.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js

import util

todense = jax.jit(lambda A: A.todense())


def dense(x):
  return todense(x) if js.is_sparse(x) else x


def base(A):
  return A.format.replace(n_batch=0, n_dense=0)


S = slice(None)
KEYS = {
    2: [1, (-1, S), (S, slice(4, 0, -2)), (slice(None, None, -1), None, 3),
        (Ellipsis, slice(1, 4)), np.array([3, 0, 3]), (S, [4, 1, 1, -5]), ([2, 0], 1)],
    3: [(0, S, [3, 1]), (slice(1, None), -1), (S, slice(None, None, -2), None, 2),
        (Ellipsis, 3), (1, 2, 0), ([1, 1, 0],)],
}


@pytest.mark.parametrize("fmt", util.format_params())
def test_getitem_every_format(fmt):
  A, x = util.random_sparse(0, util.SPARSE_SHAPES[fmt.n_sparse], fmt, padding=2)
  for key in KEYS[fmt.n_sparse]:
    want = util.reference(x)[key]
    got = A[key]
    if want.ndim == 0:
      assert isinstance(got, jax.Array), (key, got)
    else:
      assert js.is_sparse(got) and got.shape == want.shape, (key, got, want.shape)
      items = key if isinstance(key, tuple) else (key,)
      if not any(k is None or isinstance(k, int) for k in items):
        assert (base(got), got.nse) == (base(A), A.nse) or not all(
            isinstance(k, slice) for k in items), key      # slices keep format and capacity
    util.assert_allclose(dense(got), want, dtype=np.float32, err_msg=str(key))


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


BATCH_KEYS = [1, (S, 2), (Ellipsis, 0), (0, 1, 2), ([1, 1, 0],), (S, S, [4, 0]),
              (S, S, S, [2, 0, 2]), (Ellipsis, slice(None, None, -1)), (slice(None, None, -1),),
              (None, 0), (S, 3, None), (S, slice(3, 0, -2), 1)]


@pytest.mark.parametrize("fmt", util.format_params(util.FORMATS_2D[:3]))
def test_getitem_batch_and_block(fmt):
  A, x = util.random_sparse(3, (2, 4, 5, 3), fmt, n_batch=1, n_dense=1, padding=2)
  for key in BATCH_KEYS:
    want = util.reference(x)[key]
    got = A[key]
    assert got.shape == want.shape, (key, got, want.shape)
    util.assert_allclose(dense(got), want, dtype=np.float32, err_msg=str(key))
  assert (A[0].n_batch, A[0].n_dense, A[..., 0].n_dense, A[[1, 0]].n_batch) == (0, 1, 0, 1)
  assert isinstance(A[0, 1, 2], jax.Array)        # no sparse dim left: a dense block


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
  got = jax.vmap(lambda A, i: A[i, [4, 0]].todense(), in_axes=(0, None))(Ab, 2)
  util.assert_allclose(got, xb[:, 2, [4, 0]])
  datas = jnp.stack([A.data, -A.data])
  got = jax.vmap(lambda d: A.with_data(d)[::2, [1, 1]].todense())(datas)
  util.assert_allclose(got, np.stack([x[::2, [1, 1]], -x[::2, [1, 1]]]))
  out = jax.eval_shape(lambda A: A[None, 1:3, -1], A)
  assert out.shape == (1, 2)


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


def test_getitem_errors():
  A, x = util.random_sparse(8, (4, 5), "csr")
  with pytest.raises(IndexError, match=r"__getitem__: index 5 is out of bounds for axis 1 with "
                     r"size 5"):
    A[0, 5]
  with pytest.raises(IndexError, match=r"index -5 is out of bounds for axis 0 with size 4"):
    A[-5]
  with pytest.raises(IndexError, match=r"index 9 is out of bounds for axis 1 with size 5"):
    A[:, [0, 9]]
  with pytest.raises(IndexError, match=r"too many indices for an array of rank 2; got 3"):
    A[0, 0, 0]
  with pytest.raises(IndexError, match=r"only have a single ellipsis"):
    A[..., 0, ...]
  with pytest.raises(IndexError, match=r"at most one integer-array index is supported"):
    A[[0, 1], [1, 2]]
  with pytest.raises(IndexError, match=r"the slice slice\(3, 1, None\) selects nothing along "
                     r"axis 0 of size 4"):
    A[3:1]
  with pytest.raises(IndexError, match=r"an empty index array along axis 1 gives an empty "):
    A[:, np.zeros(0, np.int32)]
  with pytest.raises(TypeError, match=r"an array index must be 1-D of integers; got dtype bool"):
    A[np.asarray(x) > 0]
  with pytest.raises(TypeError, match=r"unsupported index 0.5 of type float"):
    A[0.5]
  with pytest.raises(TypeError, match=r"slice bounds must be static ints"):
    jax.jit(lambda A, i: A[i:])(A, 1)


def test_exact_buffers():
  A = js.from_dense(jnp.array([[1., 0., 2.], [0., 3., 0.]]), format="csr", nse=4)
  util.assert_buffers_equal(A[:, ::-1], [[0, 2, 3], [0, 2, 1, 3]], [2., 1., 3., 0.])
  util.assert_buffers_equal(A[[1, 1]], [[0, 1, 2], [1, 1, 3, 3, 3, 3]], [3., 3., 0., 0., 0., 0.])
