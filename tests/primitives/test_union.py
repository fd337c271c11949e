"""Tests of primitives/union.py: pattern union and concatenation as compositions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import SparseCapacityError, union
from jscorch.primitives.formats import Format, compressed
from jscorch.primitives.layout import Layout

import util

F64 = np.float64

# One compile per layout instead of op-by-op dispatch (tests/util.py).
todense = util.jit_todense
from_dense = util.jit_from_dense
from_coo = util.jit_from_coo
random_sparse = util.random_sparse_jit


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def parts_of(*arrays):
  return [(A.layout, A.data, A.indices) for A in arrays]


def test_canonical_format():
  assert union.canonical_format(util.UNORDERED_COO) == js.COO
  assert union.canonical_format(js.CSR) == js.CSR
  assert union.canonical_format(util.DCSC) == util.DCSC
  assert union.canonical_format(Format(compressed(unique=False))) == Format(compressed)
  assert union.canonical_format(js.CSR.replace(n_batch=1)) == js.CSR.replace(n_batch=1)


def test_union_exact_buffers():
  # (0, 0) and (1, 2) union (0, 1) and (1, 2): three entries, (1, 2) summed.
  a = from_coo(np.array([[0, 0], [1, 2]]), np.array([1., 2.]), shape=(2, 3), format="csr", nse=3)
  b = from_coo(np.array([[0, 1], [1, 2]]), np.array([3., 4.]), shape=(2, 3), format="csr", nse=2)
  assert union.union_size([(a.layout, a.indices), (b.layout, b.indices)]) == 3
  out = Layout(js.CSR, (2, 3), 4)
  data, indices = union.union(out, parts_of(a, b), func="add")
  C = js.SparseArray.from_buffers(data, indices, shape=(2, 3), format="csr")
  util.assert_buffers_equal(C, [[0, 2, 3], [0, 1, 2, 3]], [1., 3., 6., 0.])


@pytest.mark.parametrize("fmt", util.format_params(
    [(i, f) for i, f in util.FORMATS_2D if i in ("csr", "dcsc", "coo_unordered_nonunique")]))
def test_union_of_two_formats(fmt):
  A, x = random_sparse(0, (4, 5), fmt, padding=2, dtype=F64)
  B, y = random_sparse(1, (4, 5), "csc", padding=1, dtype=F64)
  out_fmt = union.canonical_format(fmt)
  n = union.union_size([(A.layout, A.indices), (B.layout, B.indices)])
  assert n == int(((x != 0) | (y != 0)).sum())
  data, indices = union.union(Layout(out_fmt, (4, 5), n), parts_of(A, B), func="add")
  C = js.SparseArray.from_buffers(data, indices, shape=(4, 5), format=out_fmt)  # validated
  util.assert_allclose(todense(C), x + y, dtype=F64)


def test_union_batched_block_and_vmap():
  A, x = random_sparse(2, (2, 4, 5, 3), "coo", n_batch=1, n_dense=1, padding=2, dtype=F64)
  B, y = random_sparse(3, (2, 4, 5, 3), "coo", n_batch=1, n_dense=1, padding=1, dtype=F64)
  n = union.union_size([(A.layout, A.indices), (B.layout, B.indices)])
  per = ((x != 0).any(-1) | (y != 0).any(-1)).reshape(2, -1).sum(-1)
  assert n == per.max()
  out = Layout(A.format, A.shape, n)
  data, indices = union.union(out, parts_of(A, B), func="add")
  C = js.SparseArray.from_buffers(data, indices, shape=A.shape, format=A.format)
  util.assert_allclose(todense(C), x + y, dtype=F64)
  # vmap with one operand unbatched: the union is taken per batch element.
  b0 = util.element(B, 0)

  def one(A):
    out = Layout(A.format, A.shape, A.nse + b0.nse)
    d, idx = union.union(out, parts_of(A, b0), func="add")
    return todense(js.SparseArray._make(d, idx, A.format, A.shape))

  got = jax.vmap(one)(A)
  util.assert_allclose(got, x + np.asarray(todense(b0))[None], dtype=F64)


def test_union_capacity_is_never_silent():
  A, x = random_sparse(4, (4, 5), "csr", padding=0, dtype=F64)
  B, y = random_sparse(5, (4, 5), "csr", padding=0, dtype=F64)
  out = Layout(js.CSR, (4, 5), 3)
  needed = union.union_size([(A.layout, A.indices), (B.layout, B.indices)])
  with pytest.raises(SparseCapacityError, match=rf"add: the result needs {needed} .*nse=3"):
    union.union(out, parts_of(A, B), func="add")              # concrete pattern: raises
  f = jax.jit(lambda A, B: union.union(out, parts_of(A, B), func="add")[0])
  assert np.isnan(np.asarray(f(A, B))).all()                  # traced pattern: poisoned


def test_union_gradient_reaches_both_operands():
  A, x = random_sparse(6, (4, 5), "dcsr", padding=2, dtype=F64)
  B, y = random_sparse(7, (4, 5), "csr", padding=1, dtype=F64)
  out = Layout(js.DCSR, (4, 5), A.nse + B.nse)

  def f(a, b):
    parts = [(A.layout, a, A.indices), (B.layout, b, B.indices)]
    return union.union(out, parts, func="add")[0]

  w = jnp.asarray(util.random_values(8, (out.nse,), F64))
  ga, gb = jax.grad(lambda a, b: (f(a, b) * w).sum(), argnums=(0, 1))(A.data, B.data)
  C = js.SparseArray._make(f(A.data, B.data), union.union(out, parts_of(A, B), func="a")[1],
                           js.DCSR, (4, 5))
  W = np.asarray(todense(C.with_data(w)))   # the weight each output coordinate got
  for g, X in ((ga, A), (gb, B)):
    expected = np.asarray(from_dense(W * (np.asarray(todense(X)) != 0), format=X.format,
                                     nse=X.nse).data)
    util.assert_allclose(g, expected, dtype=F64)


def test_concatenation_offsets():
  A, x = random_sparse(9, (4, 5), "csr", padding=2, dtype=F64)
  B, y = random_sparse(10, (3, 5), "coo", padding=1, dtype=F64)
  offsets = [None, (4, 0)]
  n = union.union_size([(A.layout, A.indices), (B.layout, B.indices)], offsets)
  assert n == int((x != 0).sum() + (y != 0).sum())
  out = Layout(js.CSR, (7, 5), n)
  data, indices = union.union(out, parts_of(A, B), func="concatenate", offsets=offsets)
  C = js.SparseArray.from_buffers(data, indices, shape=(7, 5), format="csr")
  util.assert_allclose(todense(C), np.concatenate([x, y]), dtype=F64)
