"""BSR operands in einsum / matmul (both lowerings, the kernel path checked), SDDMM at a
BSR pattern, gradients, vmap, and the operators that work on the block view.

Operands are drawn fresh with all-zero blocks and padding; references are float64 numpy.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util
from jax.test_util import check_grads
from test_bsr import blocky

import jscorch as js
from jscorch.primitives import einsum_kernel

TOL = dict(rtol=2e-5, atol=2e-5)
_KERNEL_CALL = re.compile(r"custom_call\s*@(jscorch_k_[0-9a-f]+|jscorch_spgemm_[0-9a-f]+)")


@pytest.fixture(params=["auto", "portable"], ids=["kernel", "portable"])
def lowering(request):
  before = js.config.lowering
  js.config.lowering = request.param
  yield request.param
  js.config.lowering = before


def dense(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def f64(x):
  return np.asarray(x, np.float64)


def bsr(seed, shape=(6, 8), block=(2, 4), pad=2, fmt=None):
  x = blocky(seed, shape, block)
  A = js.from_dense(x, format=js.BSR(block))
  return js.from_dense(x, format=fmt or js.BSR(block), nse=A.nse + pad), x


# -- einsum / matmul ------------------------------------------------------------------------------
CASES = {
    "A@X": lambda A, X, Y, U, V: A @ X,
    "X@A": lambda A, X, Y, U, V: Y @ A,
    "A.T@X": lambda A, X, Y, U, V: A.T @ Y.T,
    "A@x": lambda A, X, Y, U, V: A @ X[:, 0],
    "einsum-ji": lambda A, X, Y, U, V: js.einsum("ij,ki->jk", A, Y),
    "sddmm": lambda A, X, Y, U, V: js.einsum("ij,ik,jk->ij", A, U, V),
    "sum0": lambda A, X, Y, U, V: A.sum(0),
    "sum": lambda A, X, Y, U, V: A.sum(),
}
REFS = {
    "A@X": lambda x, X, Y, U, V: x @ X,
    "X@A": lambda x, X, Y, U, V: Y @ x,
    "A.T@X": lambda x, X, Y, U, V: x.T @ Y.T,
    "A@x": lambda x, X, Y, U, V: x @ X[:, 0],
    "einsum-ji": lambda x, X, Y, U, V: (Y @ x).T,
    "sddmm": lambda x, X, Y, U, V: x * (U @ V.T),
    "sum0": lambda x, X, Y, U, V: x.sum(0),
    "sum": lambda x, X, Y, U, V: x.sum(),
}


def operands(seed):
  return dense(seed, (8, 3)), dense(seed + 1, (5, 6)), dense(seed + 2, (6, 4)), \
      dense(seed + 3, (8, 4))


@pytest.mark.parametrize("name", list(CASES))
def test_einsum_values_and_path(name, lowering):
  A, x = bsr(10)
  dense_ops = operands(11)
  f = jax.jit(lambda A, *d: CASES[name](A, *d))
  einsum_kernel.last_decisions.clear()
  text = f.lower(A, *dense_ops).as_text()
  decisions = [d[1] for d in einsum_kernel.last_decisions]
  if lowering == "auto":
    assert decisions and set(decisions) == {"kernel"} and _KERNEL_CALL.search(text)
  else:
    assert not _KERNEL_CALL.search(text)
  out = f(A, *dense_ops)
  expected = REFS[name](f64(x), *map(f64, dense_ops))
  if js.is_sparse(out):
    assert out.format == js.BSR((2, 4)) and out.nse == A.nse
    np.testing.assert_array_equal(out.data[int(A.nnz):], 0)           # padding stays 0
    out = out.todense()
  np.testing.assert_allclose(out, expected, **TOL)
  eager = CASES[name](A, *dense_ops)
  np.testing.assert_allclose(eager.todense() if js.is_sparse(eager) else eager, expected, **TOL)


@pytest.mark.parametrize("fmt", [js.blocked(js.CSC, (2, 4)), js.blocked(js.COO, (2, 4)),
                                 js.blocked(js.DCSR, (2, 4))], ids=repr)
def test_other_blocked_bases(fmt):
  A, x = bsr(12, fmt=fmt)
  X, Y, U, V = operands(13)
  np.testing.assert_allclose(A @ X, f64(x) @ X, **TOL)
  np.testing.assert_allclose(Y @ A, Y @ f64(x), **TOL)
  S = js.einsum("ij,ik,jk->ij", A, U, V)
  assert S.format == fmt
  np.testing.assert_allclose(S.todense(), f64(x) * (U @ V.T), **TOL)


def test_sparse_products():
  A, x = bsr(14)
  B, y = bsr(15, (8, 4), (4, 2))
  C = A @ B
  assert C.format == js.BSR((2, 2))
  np.testing.assert_allclose(C.todense(), f64(x) @ f64(y), **TOL)
  D = A @ js.from_dense(y)                          # an unblocked operand is blocked by 1
  assert D.format == js.BSR((2, 1))
  np.testing.assert_allclose(D.todense(), f64(x) @ f64(y), **TOL)
  E = jax.jit(lambda A, B: js.matmul(A, B, nse=C.nse, work=16))(A, B)
  np.testing.assert_allclose(E.todense(), f64(x) @ f64(y), **TOL)
  with pytest.raises(ValueError, match=r"einsum: an index is blocked by 4 in one operand and "
                     r"by 2 in"):
    A @ js.from_dense(y, format=js.BSR((2, 2)))


def test_out_format():
  A, x = bsr(16)
  X = dense(17, (8, 6))
  C = js.einsum("ij,jk->ik", A, X, out_format="csr")
  assert C.format == js.CSR
  np.testing.assert_allclose(C.todense(), f64(x) @ X, **TOL)
  with pytest.raises(ValueError, match=r"einsum: out_format=BSR\(\(3, 3\)\) has blocks"):
    js.einsum("ij,ik->ij", A, jnp.ones((6, 2)), out_format=js.BSR((3, 3)))


# -- gradients, vmap ------------------------------------------------------------------------------
def test_grads_order2():
  with util.dtype_context(np.float64):
    A, x = bsr(20, (4, 4), (2, 2), pad=1)
    A = A.astype(jnp.float64)
    X = jnp.asarray(dense(21, (4, 2)), jnp.float64)
    U, V = (jnp.asarray(dense(s, (4, 3)), jnp.float64) for s in (22, 23))
    check_grads(lambda d, X: A.with_data(d) @ X, (A.data, X), order=2, modes=("fwd", "rev"))
    check_grads(lambda d, X: X.T @ A.with_data(d).T, (A.data, X), order=2,
                modes=("fwd", "rev"))
    check_grads(lambda d, U, V: js.einsum("ij,ik,jk->ij", A.with_data(d), U, V).data,
                (A.data, U, V), order=2, modes=("fwd", "rev"))


def test_grad_at_pattern():
  A, x = bsr(24)
  X = dense(25, (8, 3))
  G = js.grad(lambda A: (A @ X).sum())(A)
  assert G.format == A.format and G.data.shape == A.data.shape
  expected = A.with_data(jnp.ones_like(A.data)) * np.broadcast_to(X.sum(1), (6, 8))
  np.testing.assert_allclose(G.data, expected.data, **TOL)
  np.testing.assert_array_equal(G.data[int(A.nnz):], 0)


def test_vmap():
  xs = np.stack([blocky(30 + k) for k in range(3)])
  Ab = js.from_dense(xs, format=js.BSR((2, 4)), n_batch=1, nse=6)
  X = dense(33, (8, 3))
  np.testing.assert_allclose(jax.vmap(lambda A: A @ X)(Ab), f64(xs) @ X, **TOL)
  Xs = np.stack([X, 2 * X])
  A, x = bsr(34)
  np.testing.assert_allclose(jax.vmap(lambda X: A @ X)(Xs), f64(x) @ Xs, **TOL)
  np.testing.assert_allclose(jax.vmap(lambda A, X: A @ X, in_axes=(0, None))(Ab, X),
                             f64(xs) @ X, **TOL)
  s = jax.eval_shape(lambda A: jax.vmap(lambda A: A @ X)(A), Ab)
  assert s.shape == (3, 6, 3)


# -- operators ------------------------------------------------------------------------------------
def test_elementwise():
  A, x = bsr(40)
  B, y = bsr(41)
  np.testing.assert_array_equal((2 * A).todense(), 2 * x)
  np.testing.assert_array_equal((-A).todense(), -x)
  np.testing.assert_array_equal((A / 4).todense(), x / 4)
  w = dense(42, (6, 8))
  for out, ref in [(A * w, x * w), (A * w[0], x * w[0]), (A * B, x * y), (A + B, x + y),
                   (A - B, x - y), (A / (np.abs(w) + 1), x / (np.abs(w) + 1))]:
    assert out.format == js.BSR((2, 4))
    np.testing.assert_allclose(out.todense(), ref, **TOL)
  assert (A * B).nse == A.nse
  np.testing.assert_allclose(A + w, x + w, **TOL)
  np.testing.assert_allclose(js.sin(A).todense(), np.sin(f64(x)), **TOL)
  np.testing.assert_array_equal((A > 0).todense(), x > 0)
  with pytest.raises(ValueError, match=r"add: two blocked operands need the same shape, batch "
                     r"dims and blocks"):
    A + js.from_dense(x, format=js.BSR((3, 2)))
  with pytest.raises(ValueError, match=r"multiply: a blocked operand multiplies a dense array "
                     r"or another blocked operand"):
    A * js.from_dense(x)


def test_transpose_and_sum():
  A, x = bsr(43)
  T = A.T
  assert T.format == js.blocked(js.CSC, (4, 2)) and T.shape == (8, 6)
  np.testing.assert_array_equal(T.todense(), x.T)
  assert T.asformat(js.BSR((4, 2))).format == js.BSR((4, 2))
  np.testing.assert_array_equal(T.asformat(js.BSR((4, 2))).todense(), x.T)
  np.testing.assert_array_equal(T.T.todense(), x)
  for axis in [0, 1, (0, 1), None, -1]:
    np.testing.assert_allclose(A.sum(axis), f64(x).sum(axis), **TOL)
  assert A.sum(1, keepdims=True).shape == (6, 1)
  xs = np.stack([blocky(44), blocky(45)])
  Ab = js.from_dense(xs, format=js.BSR((2, 4)), n_batch=1)
  np.testing.assert_allclose(Ab.sum(2), f64(xs).sum(2), **TOL)
  np.testing.assert_array_equal(Ab.transpose((0, 2, 1)).todense(), xs.transpose(0, 2, 1))


def _masked_softmax(x, stored, axis):
  """Float64 softmax of ``x`` along ``axis`` over the ``stored`` elements (others absent)."""
  z = np.where(stored, x, -np.inf)
  z = z - np.max(np.where(stored.any(axis, keepdims=True), z, 0), axis=axis, keepdims=True)
  e = np.where(stored, np.exp(z), 0)
  total = e.sum(axis, keepdims=True)
  return e / np.where(total == 0, 1, total)


@pytest.mark.parametrize("axis", [1, 0])
def test_softmax_over_stored_blocks(axis):
  """``js.softmax`` of a BSR array (padding blocks present, an empty block row) along
  either axis: over every element of the stored blocks of each logical row / column,
  against float64 numpy; its gradients (order 2, fwd and rev, along the rows), ``jit`` and
  ``vmap``."""
  with util.dtype_context(np.float64):
    A, x = bsr(7)
    A = A.with_data(jnp.asarray(A.data, jnp.float64))
    stored = np.repeat(np.repeat(np.abs(x.reshape(3, 2, 2, 4)).sum(axis=(1, 3)) != 0, 2, 0),
                       4, 1)
    assert 0 < stored.sum() < stored.size
    want = _masked_softmax(f64(A.todense()), stored, axis)
    got = jax.jit(lambda A: js.softmax(A, axis=axis))(A)
    assert got.format == A.format
    np.testing.assert_allclose(f64(got.todense()), want, rtol=1e-12, atol=1e-12)
    if axis == 1:           # (one axis: the gradients share every rule)
      w = jnp.asarray(dense(8, A.data.shape), jnp.float64)
      check_grads(lambda d: (js.softmax(A.with_data(d), axis=axis).data * w).sum(), (A.data,),
                  order=2, modes=("fwd", "rev"))
    twice = jax.vmap(lambda d: js.softmax(A.with_data(d), axis=axis).data)(
        jnp.stack([A.data, 2 * A.data]))
    np.testing.assert_allclose(twice[1], js.softmax(A.with_data(2 * A.data), axis=axis).data,
                               rtol=1e-12)


def test_maximum_minimum_and_extrema():
  """``js.maximum`` / ``js.minimum`` of two BSR arrays (different stored blocks: the union
  of the block views) and ``max`` / ``min`` reductions over every axis (implicit zeros
  count), against float64 numpy; under ``jit``, with gradients (order 2, fwd and rev)."""
  with util.dtype_context(np.float64):
    (A, _), (B, _) = bsr(50), bsr(51)     # no stored zeros: no ties for the gradients
    A, B = (M.with_data(jnp.asarray(dense(k, M.data.shape), jnp.float64))
            for k, M in [(54, A), (55, B)])
    x, y = f64(A.todense()), f64(B.todense())
    for fn, ref in [(js.maximum, np.maximum), (js.minimum, np.minimum)]:
      out = jax.jit(fn)(A, B)
      assert out.format == js.BSR((2, 4))
      np.testing.assert_array_equal(out.todense(), ref(x, y))
      np.testing.assert_array_equal(fn(A, 0.).todense(), ref(x, 0.))
    for axis in [None, 0, 1, -1]:
      np.testing.assert_array_equal(jax.jit(lambda A, axis=axis: A.max(axis))(A), x.max(axis))
      np.testing.assert_array_equal(A.min(axis, keepdims=True), x.min(axis, keepdims=True))
      np.testing.assert_array_equal(js.count_nonzero(A, axis),     # (raised on blocks)
                                    np.count_nonzero(x, axis))
    w = jnp.asarray(dense(52, (8,)), jnp.float64)
    check_grads(jax.jit(lambda d: A.with_data(d).max(0) @ w), (A.data,), order=2,
                modes=("fwd", "rev"))
    check_grads(jax.jit(lambda d: js.maximum(A.with_data(d), B).data.sum()), (A.data,),
                order=2, modes=("fwd", "rev"))


BLOCKED_REFUSED = {
    "reshape": lambda A: A.reshape(8, 6),
    "SparseArray.__getitem__": lambda A: A[1:3],
    "concatenate": lambda A: js.concatenate([A, A]),
    "stack": lambda A: js.stack([A, A]),
    "tril": lambda A: js.tril(A),
    "diagonal": lambda A: js.diagonal(A),
    "segment_max": lambda A: js.segment_max(A),
    "update_layout": lambda A: js.update_layout(A, n_dense=0),
}


@pytest.mark.parametrize("func", list(BLOCKED_REFUSED))
def test_unsupported_ops_name_themselves(func):
  """An op that does not handle blocked formats says so, naming itself and the operand,
  before any work (not an error from the layout or format machinery underneath)."""
  A, _ = bsr(53)
  with pytest.raises(js.SparseFormatError, match=rf"^{re.escape(func)}: (A|a|arrays\[0\]) has "
                     r"the blocked format BSR\(\(2, 4\)\), which .* does not handle"):
    BLOCKED_REFUSED[func](A)


def test_coalescing_works_on_the_block_view():
  """``sum_duplicates`` (duplicate blocks of a non-unique blocked COO summed),
  ``sort_indices`` and ``eliminate_zeros`` (all-zero blocks dropped) of blocked arrays,
  against float64 numpy; ``jit`` of each."""
  x = blocky(56, (6, 8), (2, 4))
  fmt = js.blocked(util.UNORDERED_COO, (2, 4))
  V = js.from_dense(x, format=fmt).block_view()
  n = V.nse
  order = np.random.default_rng(57).permutation(2 * n)     # unordered, each block twice
  rows, cols = (np.concatenate([np.asarray(i), np.asarray(i)])[order] for i in V.indices[1:])
  data = np.concatenate([np.asarray(V.data), -3 * np.asarray(V.data)])[order]
  D = js.ops.blocks.from_view(js.SparseArray.from_buffers(
      data, [np.array([0, 2 * n]), rows, cols], shape=V.shape, format=V.format))
  np.testing.assert_allclose(D.todense(), -2 * f64(x), **TOL)
  S = jax.jit(lambda D: D.sum_duplicates())(D)
  assert S.format == js.blocked(js.COO, (2, 4)) and int(S.nnz) == n
  np.testing.assert_allclose(S.todense(), -2 * f64(x), **TOL)
  O = D.sort_indices()
  grid = np.stack([np.asarray(i) for i in O.indices[1:]], 1)
  assert (np.diff(grid[:, 0] * 100 + grid[:, 1]) >= 0).all()
  np.testing.assert_allclose(O.todense(), -2 * f64(x), **TOL)
  A, _ = bsr(58)
  Z = A.with_data(A.data.at[0].set(0.))
  E = jax.jit(lambda Z: Z.eliminate_zeros())(Z)
  assert E.format == A.format and int(E.nnz) == int(A.nnz) - 1
  np.testing.assert_array_equal(E.todense(), Z.todense())


def test_bool_values_convert_into_blocks():
  """Boolean arrays convert into blocked formats and between block sizes (a logical or
  where blocks gather entries; the scatter-add raised a JAX TypeError)."""
  x = np.random.default_rng(59).random((4, 6)) < 0.3
  A = js.from_dense(x, format="csr")
  B = A.asformat(js.BSR((2, 3)))
  assert B.dtype == jnp.bool_
  np.testing.assert_array_equal(B.todense(), x)
  np.testing.assert_array_equal(B.asformat(js.BSR((1, 3))).todense(), x)
  np.testing.assert_array_equal(jax.jit(lambda B: B.asformat(js.BSR((2, 1))))(B).todense(), x)
