"""Tests of primitives/segment.py: segment ids of stored entries and segment reductions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import segment

import util

F64 = np.float64

# One compile per layout instead of op-by-op dispatch (tests/util.py).
todense = util.jit_todense
from_dense = util.jit_from_dense
random_sparse = util.random_sparse_jit


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def test_segment_ids_exact_contiguous():
  x = np.array([[1., 0., 2.], [0., 0., 0.], [0., 3., 0.]])
  A = from_dense(x, format="csr", nse=5)
  ids, n = segment.segment_ids(A.layout, A.indices, axis=1)
  assert n == 5
  np.testing.assert_array_equal(np.asarray(ids), [0, 0, 1, 5, 5])


@pytest.mark.parametrize("fmt, axis", [("csr", 0), ("csc", 1), ("dcsr", 0),
                                       (util.UNORDERED_COO, 1)],
                         ids=["csr-0", "csc-1", "dcsr-0", "coo_unordered-1"])
def test_segment_ids_group_equal_coordinates(fmt, axis):
  A, x = random_sparse(3, (4, 5), fmt, padding=2, dtype=F64)
  ids, n = segment.segment_ids(A.layout, A.indices, axis=axis)
  ids = np.asarray(ids)
  coords = util.stored_coordinates(A)         # in-use entries, storage order
  valid = np.asarray(segment.valid_leaves(A.layout, A.indices))
  assert valid.sum() == len(coords) and (ids[~valid] == n).all()
  used = ids[valid]
  assert (used < n).all()
  key = coords[:, 1 - axis]
  for i in range(len(coords)):
    for j in range(len(coords)):
      assert (used[i] == used[j]) == (key[i] == key[j])


def test_segment_ids_3d_and_batched():
  A, x = random_sparse(4, (2, 3, 4), "csf", padding=2, dtype=F64)
  ids, _ = segment.segment_ids(A.layout, A.indices, axis=1)
  coords = util.stored_coordinates(A)
  used = np.asarray(ids)[:len(coords)]
  key = coords[:, [0, 2]]
  same_key = (key[:, None] == key[None]).all(-1)
  np.testing.assert_array_equal(used[:, None] == used[None], same_key)
  B, _ = random_sparse(5, (2, 4, 5), "csr", n_batch=1, padding=2, dtype=F64)
  ids, n = segment.segment_ids(B.layout, B.indices, axis=1)
  assert ids.shape == (2, B.nse) and n == B.nse


def test_segment_reductions_and_softmax():
  data = jnp.array([1., 3., -2., 5., 0., 7.])
  ids = jnp.array([0, 0, 2, 2, 2, 4])        # segment 1 is empty, the last leaf is padding
  n = 4
  np.testing.assert_array_equal(np.asarray(segment.segment_sum(data, ids, n)), [4., 0., 3., 0.])
  mx = np.asarray(segment.segment_max(data, ids, n))
  assert mx[0] == 3. and mx[2] == 5.
  got = np.asarray(segment.segment_softmax(data, ids, n))
  e0 = np.exp([1., 3.]) / np.exp([1., 3.]).sum()
  e2 = np.exp([-2., 5., 0.]) / np.exp([-2., 5., 0.]).sum()
  np.testing.assert_allclose(got, np.concatenate([e0, e2, [0.]]), rtol=1e-12)
  blocks = jnp.stack([data, 2 * data], axis=-1)          # block elements are independent
  got = np.asarray(segment.segment_softmax(blocks, ids, n))
  np.testing.assert_allclose(got[:, 0], np.concatenate([e0, e2, [0.]]), rtol=1e-12)
  util.check_grads_both(jax.jit(lambda d: segment.segment_softmax(d, ids, n)), (blocks,))


def test_layout_softmax_batched():
  A, x = random_sparse(6, (2, 4, 5), "dcsr", n_batch=1, density=0.3, padding=2, dtype=F64)
  out = segment.softmax(A.layout, A.data, A.indices, axis=1)
  S = A.with_data(out)
  mask = x != 0
  e = np.where(mask, np.exp(np.where(mask, x, 0)), 0)
  s = e.sum(-1, keepdims=True)
  util.assert_allclose(todense(S), e / np.where(s == 0, 1, s), dtype=F64)
