"""Tests of coalescing (jscorch/ops/coalesce.py): ``sum_duplicates``, ``sort_indices``,
``eliminate_zeros``, and the ``nnz`` (entries in use) / ``nse`` (capacity) distinction.

Inputs carry duplicates (one pair cancelling to an explicit zero), explicitly
stored zeros and padding, in every format of ``util.FORMATS`` (named and custom,
2-D and 3-D, unordered non-unique COO built from raw buffers), with batch and
block dims. References: the float64 dense array, ``scipy.sparse`` for 2-D
(``tocsr()`` sums duplicates, ``eliminate_zeros()``), and the level buffers
decoded independently by ``util.stored_coordinates``.

:func:`entries_case` is shared with tests/test_reduce.py and tests/test_triangular.py.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps

import jscorch as js
from jscorch.primitives import union
from jscorch.primitives._errors import SparseFormatError

import util

F64 = np.float64


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


# -- shared inputs ------------------------------------------------------------------------------
def entries(seed, shape, *, n_batch=0, n_dense=0, zeros=True, full_rows=False,
            density=0.4):
  """Random coordinate entries with duplicates, explicit zeros and padding rows.

  Returns:
    ``(idx, values, x, stored)``: ``idx`` `[*batch, n, n_sparse]` int32 (unsorted;
    padding rows hold the sizes), ``values`` `[*batch, n, *block]` float64, the
    dense float64 array ``x`` they sum to, and ``stored`` `[*batch, *sparse]`
    bool, the coordinates with at least one entry. Every batch element has: its
    nonzeros of ``x``, one of them split into two duplicates; with ``zeros``,
    one explicit zero and a cancelling pair (``v``, ``-v``) at zero coordinates.
    ``full_rows``: the first row (first sparse coordinate 0) is completely
    stored with negative values, the second with positive ones.
  """
  rng = np.random.default_rng(seed)
  x = util.random_dense(rng, shape, n_batch=n_batch, n_dense=n_dense, density=density,
                        dtype=F64)
  nb, nd = n_batch, n_dense
  ns = len(shape) - nb - nd
  sparse = shape[nb:nb + ns]
  block = shape[nb + ns:]
  if full_rows:
    sl = (slice(None),) * nb
    x[sl + (0,)] = -rng.uniform(0.5, 2, x[sl + (0,)].shape)
    x[sl + (1,)] = rng.uniform(0.5, 2, x[sl + (1,)].shape)
  rows, vals = [], []
  for b in np.ndindex(*shape[:nb]):
    xb = x[b]
    nz = xb != 0
    if nd:
      nz = nz.any(axis=tuple(range(ns, ns + nd)))
    coords = [tuple(c) for c in np.argwhere(nz)]
    v = [xb[c] for c in coords]
    c0 = coords[0]        # split into two duplicates
    coords.append(c0)
    v[0], v_dup = 0.25 * v[0], 0.75 * v[0]
    v.append(v_dup)
    empty = [tuple(c) for c in np.argwhere(~nz)]
    if zeros and len(empty) >= 2:
      coords.append(empty[0])
      v.append(np.zeros(block))
      w = rng.uniform(0.5, 2, block)
      coords += [empty[1], empty[1]]
      v += [w, -w]
    order = rng.permutation(len(coords))
    rows.append(np.asarray(coords, np.int32)[order])
    vals.append(np.asarray(v, F64).reshape((len(coords),) + block)[order])
  n = max(len(r) for r in rows)
  pad_rows = lambda r: np.concatenate([r, np.broadcast_to(np.asarray(sparse, np.int32),
                                                          (n - len(r), ns))])
  pad_vals = lambda v: np.concatenate([v, np.zeros((n - len(v),) + block)])
  idx = np.stack([pad_rows(r) for r in rows]).reshape(shape[:nb] + (n, ns))
  values = np.stack([pad_vals(v) for v in vals]).reshape(shape[:nb] + (n,) + block)
  stored = np.zeros(shape[:nb] + sparse, bool)
  for b, r in zip(np.ndindex(*shape[:nb]), rows):
    stored[b][tuple(r.T)] = True
  return idx, values, x, stored


_from_coo = jax.jit(js.from_coo, static_argnames=("shape", "format", "nse", "check"))


def from_entries(idx, values, shape, fmt, padding=2):
  """A SparseArray of ``fmt`` holding the entries (raw buffers for an unordered COO)."""
  nse = idx.shape[-2] + padding
  if fmt == util.UNORDERED_COO:
    return unordered_coo(idx, values, shape, nse)
  return _from_coo(jnp.asarray(idx), jnp.asarray(values), tuple(shape), format=fmt, nse=nse,
                   check=False)


def unordered_coo(idx, values, shape, nse):
  """An unordered, non-unique COO storing the rows as given (no sorting, no merging)."""
  nb = idx.ndim - 2
  n, ns = idx.shape[-2:]
  sizes = np.asarray(shape[nb:nb + ns], np.int32)
  idx = np.concatenate([idx, np.broadcast_to(sizes, idx.shape[:-2] + (nse - n, ns))], -2)
  values = np.concatenate([values, np.zeros(values.shape[:nb] + (nse - n,)
                                            + values.shape[nb + 1:])], nb)
  valid = np.all(idx < sizes, -1).sum(-1)
  pos = np.stack([np.zeros_like(valid), valid], -1).astype(np.int32)
  fmt = util.UNORDERED_COO.replace(n_batch=nb, n_dense=values.ndim - nb - 1)
  return js.SparseArray.from_buffers(values, [pos, idx[..., 0], idx[..., 1]], shape=shape,
                                     format=fmt)


@functools.lru_cache(maxsize=None)
def entries_case(fmt_id: str, n_batch: int = 0, n_dense: int = 0, zeros: bool = True,
                 full_rows: bool = False, seed: int = 0):
  """``(A, x, stored)`` for the format of ``util.FORMATS`` named ``fmt_id`` (see :func:`entries`)."""
  fmt = dict(util.FORMATS)[fmt_id]
  shape = util.default_shape(fmt, n_batch, n_dense)
  idx, values, x, stored = entries(seed + len(fmt_id) + 7 * n_batch + 3 * n_dense, shape,
                                   n_batch=n_batch, n_dense=n_dense, zeros=zeros,
                                   full_rows=full_rows)
  return from_entries(idx, values, shape, fmt), x, stored


def dense(A):
  return np.asarray(_todense(A))


_todense = jax.jit(lambda A: A.todense())
_nnz = jax.jit(lambda A: A.nnz)


def check_stored(A, x, *, unique: bool, ordered: bool):
  """``A`` stores ``x`` (float64) with the claimed order / uniqueness, padding last."""
  util.assert_allclose(dense(A), x, F64)
  for b in np.ndindex(*A.shape[:A.n_batch]):
    Ab = util.element(A, b[0]) if b else A          # at most one batch dim here
    coords = util.stored_coordinates(Ab)          # logical, in storage order
    storage = coords[:, list(Ab.format.mode_ordering)]
    n = len(coords)
    assert int(_nnz(Ab)) == n
    if ordered:
      keys = [tuple(c) for c in storage]
      assert keys == sorted(keys), keys
    if unique:
      assert len({tuple(c) for c in coords}) == n, coords


# -- sum_duplicates ------------------------------------------------------------------------------
CASES = [
    # (format id, n_batch, n_dense)
    ("csr", 0, 0), ("csc", 0, 1), ("coo", 0, 0), ("coo", 1, 1), ("dcsr", 1, 0),
    ("dcsc", 0, 0), ("coo_unordered_nonunique", 0, 0), ("coo_unordered_nonunique", 1, 0),
    ("csf3", 0, 0), ("coo3", 0, 1), ("dense_dcsr3", 0, 0),
]
CASE_IDS = [f"{f}-b{b}-d{d}" for f, b, d in CASES]


@pytest.mark.parametrize("fmt_id,n_batch,n_dense", CASES, ids=CASE_IDS)
def test_sum_duplicates(fmt_id, n_batch, n_dense):
  A, x, stored = entries_case(fmt_id, n_batch, n_dense)
  B = A.sum_duplicates()
  assert B.format == union.canonical_format(A.format)
  assert B.format.ordered and B.format.unique
  assert (B.shape, B.nse, B.dtype) == (A.shape, A.nse, A.dtype)
  check_stored(B, x, unique=True, ordered=True)
  # nnz counts the distinct coordinates (explicit zeros included); nse is the capacity.
  per_batch = stored.reshape(stored.shape[:n_batch] + (-1,)).sum(-1)
  np.testing.assert_array_equal(np.asarray(_nnz(B)), per_batch)
  assert B.nse > per_batch.max()
  # Idempotent: a second pass changes no buffer.
  C = js.sum_duplicates(B)
  for b, c in zip(util.buffers(B), util.buffers(C)):
    np.testing.assert_array_equal(b, c)
  np.testing.assert_array_equal(np.asarray(B.data), np.asarray(C.data))


def test_nnz_counts_entries_in_use_nse_counts_capacity():
  A, x, stored = entries_case("coo_unordered_nonunique")
  n_entries = len(util.stored_coordinates(A))
  assert A.nse == n_entries + 2                    # two padding slots
  assert int(A.nnz) == n_entries                  # duplicates counted separately
  B = A.sum_duplicates()
  assert int(B.nnz) == int(stored.sum()) == n_entries - 2   # two duplicate pairs merged
  assert B.nse == A.nse
  exact = A.sum_duplicates(nse=int(B.nnz))
  assert exact.nse == int(exact.nnz) == int(stored.sum())
  util.assert_allclose(dense(exact), x, F64)


def test_sum_duplicates_matches_scipy():
  A, x, _ = entries_case("coo_unordered_nonunique")
  coords = util.stored_coordinates(A)
  data = np.asarray(A.data)[:len(coords)]
  ref = sps.coo_matrix((data, tuple(coords.T)), shape=A.shape).tocsr()   # sums duplicates
  B = A.sum_duplicates(nse=ref.nnz).asformat("csr")
  np.testing.assert_array_equal(np.asarray(B.pos(1)), ref.indptr)
  np.testing.assert_array_equal(np.asarray(B.crd(1)), ref.indices)
  util.assert_allclose(B.data, ref.data, F64)
  assert (ref.data == 0).sum() == 2                # the explicit zero and the cancelled pair


def test_sum_duplicates_unique_format_is_identity_without_nse():
  A, _, _ = entries_case("csr")
  assert A.sum_duplicates() is A
  B = A.sum_duplicates(nse=A.nse + 3)
  assert B.nse == A.nse + 3 and B.format == A.format


def test_sum_duplicates_transformations():
  A, x, _ = entries_case("coo", 1, 1)
  n = A.nse
  f = jax.jit(lambda A: js.sum_duplicates(A, nse=n - 1))
  util.assert_allclose(dense(f(A)), x, F64)
  # vmap over the batch dim, against a loop over batch elements.
  V = jax.vmap(lambda A: A.sum_duplicates())(A)
  for b in range(A.shape[0]):
    util.assert_allclose(dense(util.element(V, b)), x[b], F64)
  out = jax.eval_shape(lambda A: A.sum_duplicates(nse=5), A)
  assert (out.shape, out.nse, out.format) == (A.shape, 5, union.canonical_format(A.format))
  util.check_grads_both(lambda d: js.sum_duplicates(A.with_data(d)).data, [A.data])


def test_sum_duplicates_capacity():
  A, _, stored = entries_case("coo")
  needed = int(stored.sum())
  with pytest.raises(js.SparseCapacityError, match=(
      rf"^sum_duplicates: the result needs {needed} stored entries but its capacity is "
      rf"nse={needed - 1}; got nse={needed - 1}, expected nse >= {needed}\. Pass "
      rf"nse={needed} \(or larger\)\.$")):
    A.sum_duplicates(nse=needed - 1)
  poisoned = jax.jit(lambda A: A.sum_duplicates(nse=needed - 1))(A)
  assert np.isnan(np.asarray(poisoned.data)).all()
  with pytest.raises(TypeError, match=r"^sum_duplicates: nse must be a static Python int"):
    jax.jit(lambda A, k: A.sum_duplicates(nse=k))(A, 3)
  with pytest.raises(SparseFormatError, match=(
      r"^sum_duplicates: nse must be a non-negative int; got nse=-1\.$")):
    A.sum_duplicates(nse=-1)
  with pytest.raises(TypeError, match=r"^sum_duplicates: expects a SparseArray; got ndarray\. "):
    js.sum_duplicates(np.ones((2, 2)))


# -- sort_indices ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n_batch,n_dense", [(0, 0), (1, 1)], ids=["plain", "batch-block"])
def test_sort_indices_keeps_duplicates(n_batch, n_dense):
  A, x, _ = entries_case("coo_unordered_nonunique", n_batch, n_dense)
  before = int(np.max(np.asarray(_nnz(A))))
  B = jax.jit(js.sort_indices)(A)
  assert B.format.ordered and not B.format.unique
  assert B.nse == A.nse
  assert int(np.max(np.asarray(_nnz(B)))) == before        # duplicates kept
  check_stored(B, x, unique=False, ordered=True)
  # Same multiset of (coordinate, value) pairs, per batch element.
  for b in np.ndindex(*A.shape[:n_batch]):
    Ab, Bb = (util.element(A, b[0]), util.element(B, b[0])) if b else (A, B)
    pairs = lambda M: sorted((tuple(c), tuple(np.ravel(v))) for c, v in zip(
        util.stored_coordinates(M), np.asarray(M.data)))
    assert pairs(Ab) == pairs(Bb)


def test_sort_indices_ordered_format_is_identity():
  A, _, _ = entries_case("coo")
  assert A.sort_indices() is A
  U, x, _ = entries_case("coo_unordered_nonunique")
  util.check_grads_both(lambda d: U.with_data(d).sort_indices().data, [U.data])
  V = jax.vmap(js.sort_indices)(entries_case("coo_unordered_nonunique", 1)[0])
  assert V.format.ordered and V.n_batch == 1


# -- eliminate_zeros -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt_id,n_batch,n_dense", CASES, ids=CASE_IDS)
def test_eliminate_zeros(fmt_id, n_batch, n_dense):
  A, x, _ = entries_case(fmt_id, n_batch, n_dense)
  B = A.eliminate_zeros()
  assert (B.format, B.shape, B.nse) == (A.format, A.shape, A.nse)
  check_stored(B, x, unique=A.format.unique, ordered=A.format.ordered)
  values = np.asarray(B.data)
  for b in np.ndindex(*A.shape[:n_batch]):
    Bb = util.element(B, b[0]) if b else B
    n = len(util.stored_coordinates(Bb))
    kept = values[b][:n]
    assert np.all(kept.reshape(n, -1).any(-1)), kept          # no stored zero left
  # The stored zeros (one explicit, two from the cancelling pair in unique formats) left.
  assert np.all(np.asarray(_nnz(B)) < np.asarray(_nnz(A)))


def test_eliminate_zeros_matches_scipy():
  A, _, _ = entries_case("csr")
  ref = A.to_scipy().copy()
  assert (ref.data == 0).any()
  ref.eliminate_zeros()
  B = js.eliminate_zeros(A, nse=ref.nnz)
  np.testing.assert_array_equal(np.asarray(B.pos(1)), ref.indptr)
  np.testing.assert_array_equal(np.asarray(B.crd(1)), ref.indices)
  util.assert_allclose(B.data, ref.data, F64)
  # Duplicates are judged one by one, as in scipy: a cancelling pair stays until summed.
  U, _, _ = entries_case("coo_unordered_nonunique")
  assert int(U.eliminate_zeros().nnz) == int(U.nnz) - 1
  assert int(U.sum_duplicates().eliminate_zeros().nnz) == int(U.sum_duplicates().nnz) - 2


def test_eliminate_zeros_transformations():
  A, x, _ = entries_case("dcsr", 1, 0)
  needed = int(np.max(np.asarray(_nnz(A.eliminate_zeros()))))
  f = jax.jit(lambda A: A.eliminate_zeros(nse=needed))
  out = f(A)
  assert out.nse == needed
  util.assert_allclose(dense(out), x, F64)
  V = jax.vmap(js.eliminate_zeros)(A)
  for b in range(A.shape[0]):
    ref = util.element(A, b).eliminate_zeros()
    for v, r in zip(util.buffers(util.element(V, b)), util.buffers(ref)):
      np.testing.assert_array_equal(v, r)
  shape = jax.eval_shape(lambda A: A.eliminate_zeros(nse=4), A)
  assert (shape.nse, shape.format) == (4, A.format)
  # Gradient: entries whose value is exactly zero (kept zero under perturbation by the
  # mask) are dropped and get none; the others pass their cotangent through.
  keep = jnp.asarray(np.asarray(A.data) != 0, A.dtype)
  f = lambda d: js.eliminate_zeros(A.with_data(d * keep)).todense()
  util.check_grads_both(f, [A.data])
  g = jax.grad(lambda d: f(d).sum())(A.data)
  in_use = np.arange(A.nse) < np.asarray(_nnz(A))[:, None]     # DCSR: padding last
  np.testing.assert_array_equal(np.asarray(g), np.asarray(keep) * in_use)


def test_eliminate_zeros_capacity():
  A, _, _ = entries_case("coo", 0, 1)
  needed = int(A.eliminate_zeros().nnz)
  with pytest.raises(js.SparseCapacityError, match=(
      rf"^eliminate_zeros: the result needs {needed} stored entries but its capacity is "
      rf"nse={needed - 1}; got nse={needed - 1}, expected nse >= {needed}\. Pass "
      rf"nse={needed} \(or larger\)\.$")):
    A.eliminate_zeros(nse=needed - 1)
  poisoned = jax.jit(lambda A: A.eliminate_zeros(nse=needed - 1))(A)
  assert np.isnan(np.asarray(poisoned.data)).all()
  assert js.eliminate_zeros(A, nse=needed).nse == needed


def test_casts_of_repeated_coordinates_follow_the_arrays_own_sum():
  """A non-unique array holds the sum of its repeated coordinates in its own dtype (bool: a
  logical or; int8: wrapping), as ``todense`` says. Casts, sums, products and scalar
  scaling used to promote each duplicate first (bool True, True counted 2; int8 100 + 100
  gave 200 instead of -56), and bool unions raised JAX's "add does not accept bool"."""
  NU = js.Format(js.compressed(unique=False), js.singleton(unique=False))
  rng = np.random.default_rng(63)
  idx = np.concatenate([rng.integers(0, 3, (7, 2)), [[0, 0], [0, 0]]])   # (0, 0) repeated
  x = rng.standard_normal(3).astype(np.float32)
  for values in (rng.random(9) < 0.7, np.full(9, 100, np.int8), rng.standard_normal(9).astype(
      jnp.float16) * 4e4):
    A = js.from_coo(idx, jnp.asarray(values), (3, 3), format=NU, nse=11)    # padding
    d = A.todense()
    cases = [(A.astype(jnp.float32).todense(), d.astype(jnp.float32)),
             (A.sum(), jnp.sum(d)), (A.sum(axis=0), jnp.sum(d, axis=0)),
             (A.mean(axis=1), jnp.mean(d, axis=1)), (A @ x, d @ x),
             (jax.jit(lambda A, x: A @ x)(A, x), d @ x),
             ((2.5 * A).todense(), 2.5 * d), ((A / 4).todense(), d / 4)]
    rtol = 2 ** -10 if values.dtype == np.float16 else 1e-6    # f16: one rounding apart
    for got, want in cases:
      assert got.dtype == want.dtype, (values.dtype, got.dtype, want.dtype)
      np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                 rtol=rtol, err_msg=str(values.dtype))
  A = js.from_coo(idx, jnp.ones(9, bool), (3, 3), format=NU)
  for got in (A + A, js.maximum(A, A), jax.jit(lambda A: A + A)(A)):
    np.testing.assert_array_equal(got.todense(), A.todense())
