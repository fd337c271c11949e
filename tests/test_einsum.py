"""Tests of ``js.einsum`` (jscorch/einsum.py) and, through it, the sparse einsum primitive.

Every example of the issue runs on fresh random nonzero data stored *with padding*
(``nse`` > stored entries) and is compared with ``np.einsum`` on float64 dense
references: eagerly, under ``jit``, ``vmap`` (against a stacked loop),
``eval_shape``, ``grad`` / ``check_grads`` (second order, both modes) with respect
to the dense operands and to the stored values of the sparse ones, ``jacfwd`` /
``jacrev`` and compositions. Sparse × sparse products are checked against scipy,
and the structural guarantees (sampled outputs keep the pattern, gradients never
densify a sparse operand, capacity overflow is never silent) are checked directly.

All tests run with ``jax_enable_x64`` (the autouse fixture below), so references
are float64 and tolerances are those of ``util.TOLERANCES[float64]``. ``conftest.py``
runs the module twice, with the generated kernels and with the portable lowering.
Known bugs are kept as ``xfail(strict=True)`` tests that state the diagnosis.
"""
from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps
import util
from jax.experimental import checkify

import jscorch as js
from jscorch.primitives.formats import resolve_format

F64 = np.float64


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


# -- the examples ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Sp:
  """A sparse operand: full shape ``(*batch, *sparse, *block)`` and its format."""
  shape: tuple
  format: object = "csr"
  n_batch: int = 0
  n_dense: int = 0
  density: float = 0.4


@dataclasses.dataclass(frozen=True)
class Dn:
  """A dense operand."""
  shape: tuple


@dataclasses.dataclass(frozen=True)
class Case:
  """One example: subscripts, operands, and the kind of result js.einsum must return.

  ``out`` is ``"dense"``, ``"sampled"`` (a SparseArray with the pattern of operand
  ``pattern_of``) or ``"sparse"`` (a new pattern: sparse × sparse).
  """
  subscripts: str
  operands: tuple
  out: str = "dense"
  pattern_of: int | None = None

  @property
  def sparse_args(self) -> list[int]:
    return [k for k, o in enumerate(self.operands) if isinstance(o, Sp)]

  @property
  def dense_args(self) -> list[int]:
    return [k for k, o in enumerate(self.operands) if isinstance(o, Dn)]


A45 = (4, 5)
CASES: dict[str, Case] = {
    "spmv_csr": Case("ij,j->i", (Sp(A45), Dn((5,)))),
    **{f"spmm_{fid}": Case("ij,jk->ik", (Sp(A45, fmt), Dn((5, 3))))
       for fid, fmt in util.FORMATS_2D},
    "spmm_dense_left_csc": Case("ki,ij->kj", (Dn((2, 4)), Sp(A45, "csc"))),
    "spmm_transposed_coo": Case("ji,jk->ik", (Sp(A45, "coo"), Dn((4, 3)))),
    "sddmm_csr": Case("ij,ik,jk->ij", (Sp(A45), Dn((4, 3)), Dn((5, 3))), "sampled", 0),
    "sddmm_transposed_out_dcsc": Case("ji,ik,jk->ij", (Sp(A45, util.DCSC), Dn((5, 3)),
                                                       Dn((4, 3))), "sampled", 0),
    "mul_dense_dcsr": Case("ij,ij->ij", (Sp(A45, "dcsr"), Dn(A45)), "sampled", 0),
    "mul_dense_first_coo": Case("ij,ij->ij", (Dn(A45), Sp(A45, "coo")), "sampled", 1),
    "mul_sparse_csr_coo": Case("ij,ij->ij", (Sp(A45, "csr", density=0.6),
                                             Sp(A45, "coo", density=0.6)), "sampled", 0),
    "mul_sparse_csc_unordered": Case("ij,ij->ij", (Sp(A45, "csc", density=0.6),
                                                   Sp(A45, util.UNORDERED_COO, density=0.6)),
                                     "sampled", 0),
    **{f"mttkrp_{fid}": Case("ijk,jr,kr->ir", (Sp((2, 3, 4), fmt), Dn((3, 2)), Dn((4, 2))))
       for fid, fmt in util.FORMATS_3D},
    "ttm_csf": Case("ijk,kl->ijl", (Sp((2, 3, 4), "csf"), Dn((4, 3)))),
    "batched_bmm_csr": Case("bij,bjk->bik", (Sp((2, 4, 5), "csr", n_batch=1),
                                             Dn((2, 5, 3)))),
    "batched_shared_dense_dcsr": Case("bij,jk->bik", (Sp((2, 4, 5), "dcsr", n_batch=1),
                                                      Dn((5, 3)))),
    "batched_sddmm_csr": Case("bij,bik,bjk->bij", (Sp((2, 4, 5), "csr", n_batch=1),
                                                   Dn((2, 4, 3)), Dn((2, 5, 3))), "sampled", 0),
    "reduce_rows_csc": Case("ij->i", (Sp(A45, "csc"),)),
    "reduce_cols_coo": Case("ij->j", (Sp(A45, "coo"),)),
    "reduce_all_dcsr": Case("ij->", (Sp(A45, "dcsr"),)),
    "moe_gates_csr": Case("bd,bn,ndh->bh", (Dn((4, 3)), Sp(A45, "csr"), Dn((5, 3, 2)))),
    "spgemm_csr_csr": Case("ij,jk->ik", (Sp(A45), Sp((5, 6))), "sparse"),
    "implicit_spmm": Case("ij,jk", (Sp(A45), Dn((5, 3)))),
    "implicit_inner": Case("ij,ij", (Sp(A45, "coo"), Dn(A45))),
    "ellipsis_dense": Case("ij,...j->...i", (Sp(A45), Dn((2, 3, 5)))),
    "ellipsis_sparse": Case("...j,jk->...k", (Sp(A45, "dcsr"), Dn((5, 3)))),
    "chain_shared_indices": Case("ij,jk,kl,i->lj", (Sp(A45, "csc"), Dn((5, 3)), Dn((3, 2)),
                                                    Dn((4,)))),
    "dense_diagonal_ii_i": Case("ii,i->i", (Dn((4, 4)), Sp((4,), "coo", density=0.5)),
                                "sampled", 1),
    "dense_diagonal_sampled": Case("ij,jj->ij", (Sp(A45), Dn((5, 5))), "sampled", 0),
    "sparse_diagonal": Case("ii->i", (Sp((4, 4), "csr", density=0.5),)),
    "sparse_trace": Case("ii->", (Sp((4, 4), "coo", density=0.5),)),
    "broadcast_dense_size1": Case("ij,jk->ik", (Sp(A45, "csc"), Dn((1, 3)))),
    "broadcast_dense_size1_sampled": Case("ij,ij->ij", (Sp(A45), Dn((1, 5))), "sampled", 0),
    "block_spmm_csr": Case("ijd,jk->ikd", (Sp((4, 5, 3), "csr", n_dense=1), Dn((5, 2)))),
    "block_contract_coo": Case("ijd,jd->i", (Sp((4, 5, 3), "coo", n_dense=1), Dn((5, 3)))),
    "block_sampled_dcsr": Case("ijd,ijd->ijd", (Sp((4, 5, 3), "dcsr", n_dense=1),
                                                Dn((4, 5, 3))), "sampled", 0),
}
CASE_PARAMS = [pytest.param(c, id=i) for i, c in CASES.items()]


def case_params(*ids):
  return [pytest.param(CASES[i], id=i) for i in ids]


def build(case: Case, seed: int = 0):
  """Fresh operands for ``case`` (float64, padding 2) and their dense numpy references."""
  rng = np.random.default_rng(seed)
  ops, refs = [], []
  for o in case.operands:
    if isinstance(o, Sp):
      A, x = util.random_sparse(rng, o.shape, o.format, n_batch=o.n_batch, n_dense=o.n_dense,
                                density=o.density, padding=2, dtype=F64)
      assert A.nse > util.stored_count(x, o.n_batch, o.n_dense)      # padding is present
      ops.append(A)
      refs.append(x)
    else:
      x = util.random_values(rng, o.shape, F64)
      ops.append(jnp.asarray(x))
      refs.append(x)
  return ops, refs


def fn(case: Case, **kwargs):
  return lambda *ops: js.einsum(case.subscripts, *ops, **kwargs)


def jit_capacities(case: Case, ops) -> dict:
  """Static capacities that suffice under jit: ``work`` = product of the sparse
  capacities (every pair of entries), ``nse`` = the dense size of the output."""
  sparse = [ops[k] for k in case.sparse_args]
  kw = {}
  if len(sparse) >= 2:
    kw["work"] = math.prod(A.nse for A in sparse)
  if case.out == "sparse":
    kw["nse"] = math.prod(np.einsum(case.subscripts, *[np.zeros(o.shape) for o in ops]).shape)
  return kw


def values(result):
  """The array a test differentiates: the result, or the stored values of a SparseArray."""
  return result.data if js.is_sparse(result) else result


def dense(result):
  return result.todense() if js.is_sparse(result) else result


def pattern_view(case: Case, ops):
  """Operand ``pattern_of`` permuted to the output's index order."""
  terms, out = case.subscripts.split("->")
  term = terms.split(",")[case.pattern_of]
  P = ops[case.pattern_of]
  perm = [term.index(c) for c in out]
  return P if perm == sorted(perm) else P.transpose(perm)


def check_result(case: Case, ops, refs, result, err_msg=""):
  expected = np.einsum(case.subscripts, *refs)
  if case.out == "dense":
    assert not js.is_sparse(result), err_msg
    util.assert_allclose(result, expected, F64, err_msg)
    return
  assert js.is_sparse(result), err_msg
  assert result.dtype == F64
  if case.out == "sampled":
    P = pattern_view(case, ops)
    assert result.format == P.format and result.shape == P.shape, (result, P)
    assert result.nse == P.nse
    for got, want in zip(util.buffers(result), util.buffers(P)):
      np.testing.assert_array_equal(got, want, err_msg="sampled result must keep the pattern")
  util.assert_allclose(result.todense(), expected, F64, err_msg)


def padding_mask(A) -> np.ndarray:
  """True at the padding slots of ``A.data`` (leading axes: batch, then nse)."""
  lay = A.layout
  used = np.asarray(A.nnz).reshape(lay.batch_shape + (1,))
  return np.arange(A.nse) >= used


# -- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_eager_matches_numpy(case):
  ops, refs = build(case)
  check_result(case, ops, refs, fn(case)(*ops))


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_jit_and_eval_shape(case):
  ops, refs = build(case, seed=1)
  caps = jit_capacities(case, ops)
  f = fn(case, **caps)
  jf = jax.jit(f)
  result = jf(*ops)
  if case.out == "sparse":     # a bigger capacity than needed: padding, value 0
    assert js.is_sparse(result) and result.nse == caps["nse"]
    assert int(result.nnz) < result.nse
    np.testing.assert_array_equal(np.asarray(result.data)[padding_mask(result)], 0)
    util.assert_allclose(result.todense(), np.einsum(case.subscripts, *refs), F64)
  else:
    check_result(case, ops, refs, result)
  # eval_shape gives the same pytree of shapes and dtypes, without computing.
  shapes = jax.eval_shape(f, *ops)
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(result)
  for s, a in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(result)):
    assert (s.shape, s.dtype) == (a.shape, a.dtype)
  # The compiled function is reused for fresh data with the same static structure.
  ops2, refs2 = build(case, seed=2)
  util.assert_allclose(dense(jf(*ops2)), np.einsum(case.subscripts, *refs2), F64)


def test_float32_stays_float32():
  A, a = util.random_sparse(3, A45, "csr", dtype=np.float32)
  x = util.random_values(4, (5, 3), np.float32)
  out = js.einsum("ij,jk->ik", A, x)
  util.assert_allclose(out, a.astype(F64) @ x.astype(F64), np.float32)
  S = js.einsum("ij,ij->ij", A, jnp.asarray(a))
  assert S.dtype == np.float32
  util.assert_allclose(S.todense(), a.astype(F64) ** 2, np.float32)


def test_mixed_dtypes_promote():
  A, a = util.random_sparse(5, A45, "coo", dtype=np.float32)
  x = util.random_values(6, (5,), F64)
  out = js.einsum("ij,j->i", A, x)           # float32 values are exact in float64
  util.assert_allclose(out, a.astype(F64) @ x, F64)


@pytest.mark.parametrize("fmt", ["csr", "coo", util.DCSC, util.UNORDERED_COO],
                         ids=["csr", "coo", "dcsc", "coo_unordered_nonunique"])
def test_padding_values_are_ignored(fmt):
  """Padding slots holding nonzero garbage (e.g. after ``A.with_data(A.data + 1)``) do not
  contribute: their coordinates are out of range."""
  A, a = util.random_sparse(50, A45, fmt, dtype=F64)
  pad = padding_mask(A)
  assert pad.any()
  garbage = A.with_data(jnp.where(pad, 7.0, A.data))
  x = util.random_values(51, (5, 3), F64)
  u, v = util.random_values(52, (4, 3), F64), util.random_values(53, (5, 3), F64)
  work = A.nse * A.nse      # a non-unique pattern is joined with its operand by coordinates
  f = jax.jit(lambda A: (js.einsum("ij,jk->ik", A, x),
                         js.einsum("ij,ik,jk->ij", A, u, v, work=work), js.einsum("ij->", A)))
  y, S, t = f(garbage)
  util.assert_allclose(y, a @ x, F64)
  util.assert_allclose(S.todense(), a * (u @ v.T), F64)
  util.assert_allclose(t, a.sum(), F64)


def _with_duplicates(seed):
  """A non-unique COO array that stores two duplicate coordinates (and padding)."""
  idx, vals, x = util.random_coo(seed, A45, 8, duplicates=2, dtype=F64)
  A = js.from_coo(idx, vals, A45, format=util.UNORDERED_COO, nse=10)
  assert len(np.unique(util.stored_coordinates(A), axis=0)) < int(A.nnz)   # duplicates kept
  return A, x


def test_duplicates_are_summed_in_dense_results():
  A, a = _with_duplicates(56)
  x = util.random_values(57, (5, 3), F64)
  util.assert_allclose(js.einsum("ij,jk->ik", A, x), a @ x, F64)
  B, b = util.random_sparse(58, A45, "csr", dtype=F64)
  f = jax.jit(lambda B, A: js.einsum("ij,ij->ij", B, A, work=B.nse * A.nse).todense())
  util.assert_allclose(f(B, A), a * b, F64)                 # sampled at B's (unique) pattern


@pytest.mark.parametrize("subscripts", ["ij,ik,jk->ij", "ij,ij->ij sparse"],
                         ids=["sddmm", "mul_sparse"])
def test_sampled_output_at_pattern_with_duplicates(subscripts):
  A, a = _with_duplicates(59)
  if subscripts == "ij,ik,jk->ij":
    u, v = util.random_values(60, (4, 3), F64), util.random_values(61, (5, 3), F64)
    got, want = js.einsum(subscripts, A, u, v), a * (u @ v.T)
  else:
    B, b = util.random_sparse(63, A45, "csr", dtype=F64)
    got, want = js.einsum("ij,ij->ij", A, B), a * b
  util.assert_allclose(got.todense(), want, F64)


def test_output_permuting_dimension_groups():
  A, a = util.random_sparse(64, (4, 5, 3), "csr", n_dense=1, dtype=F64)
  util.assert_allclose(dense(js.einsum("ijd->idj", A)), a.transpose(0, 2, 1), F64)


@pytest.mark.parametrize("subscripts", ["ijd->", "ijd->i"], ids=["all", "rows"])
def test_grad_of_block_reduction(subscripts):
  A, a = util.random_sparse(65, (4, 5, 3), "csr", n_dense=1, dtype=F64)
  g = jax.grad(lambda d: jnp.sum(js.einsum(subscripts, A.with_data(d))))(A.data)
  util.assert_allclose(A.with_data(g).todense(), np.ones_like(a) * (a != 0).any(-1,
                                                                                keepdims=True),
                       F64)


def test_index_block_in_one_operand_sparse_in_another():
  A, a = util.random_sparse(66, (4, 3), "coo", n_dense=1, dtype=F64)     # i sparse, c block
  s, sv = util.random_sparse(67, (3,), "coo", dtype=F64)                 # c sparse
  util.assert_allclose(dense(js.einsum("ic,c->i", A, s, out_format="dense")), a @ sv, F64)


@pytest.mark.parametrize("fmt", ["csr", "coo", util.DCSC], ids=["csr", "coo", "dcsc"])
@pytest.mark.parametrize("shape", [(0, 3), (3, 0)], ids=["no_rows", "no_cols"])
def test_zero_size_dimensions(fmt, shape):
  """Every sum over an empty dimension is 0; results keep their shapes and formats."""
  A = js.from_dense(np.zeros(shape), format=fmt, nse=1)
  B = js.from_dense(np.zeros((shape[1], 2)), format="csr", nse=1)
  assert A.todense().shape == shape and A.asformat("coo").todense().shape == shape
  np.testing.assert_array_equal(js.einsum("ij,jk->ik", A, jnp.ones((shape[1], 2))),
                                np.zeros((shape[0], 2)))
  C = js.einsum("ij,jk->ik", A, B)
  assert js.is_sparse(C) and int(C.nnz) == 0 and C.todense().shape == (shape[0], 2)
  S = js.einsum("ij,ij->ij", A, jnp.ones(shape))
  assert S.nse == A.nse and S.todense().shape == shape
  g = jax.grad(lambda d: js.einsum("ij,jk->", A.with_data(d), jnp.ones((shape[1], 2))))(A.data)
  np.testing.assert_array_equal(g, np.zeros(A.nse))


def test_integer_values_are_exact():
  A, a = util.random_sparse(54, A45, "csr", dtype=np.int32)
  x = util.random_values(55, (5, 3), np.int32)
  out = js.einsum("ij,jk->ik", A, x)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, a.astype(np.int64) @ x.astype(np.int64))
  S = js.einsum("ij,ij->ij", A, jnp.asarray(a))
  np.testing.assert_array_equal(S.todense(), a.astype(np.int64) ** 2)


# -- vmap ----------------------------------------------------------------------------------------
N_MAP = 3


VMAP_PARAMS = [pytest.param(c, id=i) for i, c in CASES.items() if i != "mul_sparse_csc_unordered"]


@pytest.mark.parametrize("case", VMAP_PARAMS)
def test_vmap_matches_loop(case):
  """vmap over the first dense operand (in_axes None elsewhere), or over the stored
  values of the first sparse operand when there is no dense one."""
  ops, refs = build(case)
  f = fn(case, **jit_capacities(case, ops))
  rng = np.random.default_rng(7)
  if case.dense_args:
    k = case.dense_args[0]
    mapped = jnp.asarray(util.random_values(rng, (N_MAP,) + ops[k].shape, F64))
    g = lambda m, *rest: f(*rest[:k], m, *rest[k:])
    ref_of = lambda m: np.asarray(m)
  else:
    k = case.sparse_args[0]
    mapped = jnp.asarray(util.random_values(rng, (N_MAP,) + ops[k].data.shape, F64))
    g = lambda m, *rest: f(*rest[:k], ops[k].with_data(m), *rest[k:])
    ref_of = lambda m: np.asarray(ops[k].with_data(m).todense())
  rest = ops[:k] + ops[k + 1:]
  got = jax.jit(jax.vmap(g, in_axes=(0,) + (None,) * len(rest)))(mapped, *rest)
  for n in range(N_MAP):
    want = np.einsum(case.subscripts, *refs[:k], ref_of(mapped[n]), *refs[k + 1:])
    item = util.element(got, n) if js.is_sparse(got) else got[n]
    util.assert_allclose(dense(item), want, F64, err_msg=f"vmap element {n}")


def test_vmap_dense_operand_of_sparse_result():
  """``ij,jk,k->ik`` with A, B sparse: a new sparse pattern scaled by a dense vector."""
  A, a, B, b = _spgemm_operands(26, "dcsr", "dcsr")     # no dense level: a sparse result
  V = util.random_values(27, (N_MAP, 6), F64)
  f = lambda v: js.einsum("ij,jk,k->ik", A, B, v).todense()
  util.assert_allclose(f(V[0]), a @ b * V[0], F64)
  got = jax.vmap(f)(jnp.asarray(V))
  util.assert_allclose(got, np.einsum("ij,jk,nk->nik", a, b, V), F64)


def _batched_sparse(o: Sp, seed, n=N_MAP):
  """``n`` sparse operands like ``o`` and the SparseArray stacking them (n_batch + 1)."""
  rng = np.random.default_rng(seed)
  xs = np.stack([util.random_dense(rng, o.shape, n_batch=o.n_batch, n_dense=o.n_dense,
                                   density=o.density, dtype=F64) for _ in range(n)])
  nse = util.stored_count(xs, o.n_batch + 1, o.n_dense) + 2
  stacked = js.from_dense(xs, o.format, nse=nse, n_batch=o.n_batch + 1, n_dense=o.n_dense)
  return stacked, xs


@pytest.mark.parametrize("case", case_params(
    "spmm_csc", "sddmm_csr", "mttkrp_csf3", "batched_bmm_csr", "mul_sparse_csr_coo",
    "spgemm_csr_csr", "dense_diagonal_ii_i"))
def test_vmap_over_batched_sparse_operand(case):
  """A SparseArray with one more batch dimension, mapped with in_axes=0 (its own
  pattern per element); the other operands are shared (in_axes None)."""
  ops, refs = build(case)
  k = case.sparse_args[0]
  stacked, xs = _batched_sparse(case.operands[k], seed=11)
  assert stacked.n_batch == case.operands[k].n_batch + 1
  f = fn(case, **jit_capacities(case, ops))
  g = lambda A, *rest: f(*rest[:k], A, *rest[k:])
  rest = ops[:k] + ops[k + 1:]
  got = jax.jit(jax.vmap(g, in_axes=(0,) + (None,) * len(rest)))(stacked, *rest)
  for n in range(N_MAP):
    want = np.einsum(case.subscripts, *refs[:k], xs[n], *refs[k + 1:])
    item = util.element(got, n) if js.is_sparse(got) else got[n]
    util.assert_allclose(dense(item), want, F64, err_msg=f"vmap element {n}")
    if case.out == "sampled":      # the n-th result has the n-th operand's pattern
      for a, b in zip(util.buffers(item), util.buffers(util.element(stacked, n))):
        np.testing.assert_array_equal(a, b)


def test_vmap_all_operands_and_in_axes_variants():
  """Batched sparse and dense operands together, a non-leading in_axes and out_axes."""
  o = Sp(A45, "csr")
  As, xs = _batched_sparse(o, seed=12)
  X = util.random_values(13, (5, N_MAP, 3), F64)          # mapped along axis 1
  f = lambda A, x: js.einsum("ij,jk->ik", A, x)
  got = jax.vmap(f, in_axes=(0, 1), out_axes=2)(As, jnp.asarray(X))
  assert got.shape == (4, 3, N_MAP)
  for n in range(N_MAP):
    util.assert_allclose(got[:, :, n], xs[n] @ X[:, n], F64)
  # Only the stored values vary (one shared pattern): a dense block dimension inside.
  A, a = util.random_sparse(14, A45, "dcsr", dtype=F64)
  D = util.random_values(15, (N_MAP, A.nse), F64)
  Y = util.random_values(16, (N_MAP, 5, 3), F64)
  got = jax.vmap(lambda d, y: js.einsum("ij,jk->ik", A.with_data(d), y))(D, Y)
  for n in range(N_MAP):
    util.assert_allclose(got[n], A.with_data(D[n]).todense() @ Y[n], F64)


def test_vmap_two_batched_sparse_patterns():
  """Both sparse operands carry their own pattern per element (sparse x sparse, dense out
  and sampled out)."""
  As, xs = _batched_sparse(Sp(A45, "csr"), seed=27)
  Bs, ys = _batched_sparse(Sp(A45, "dcsr"), seed=28)
  work = As.nse * Bs.nse
  got = jax.vmap(lambda A, B: js.einsum("ij,kj->ik", A, B, work=work, out_format="dense"))(
      As, Bs)
  util.assert_allclose(got, np.einsum("nij,nkj->nik", xs, ys), F64)
  got = jax.vmap(lambda A, B: js.einsum("ij,ij->ij", A, B).todense())(As, Bs)
  util.assert_allclose(got, xs * ys, F64)


@pytest.mark.parametrize("subscripts", ["ij,jk->ik"], ids=["dense_out"])
def test_vmap_batched_pattern_with_values_only_batched_sparse(subscripts):
  As, xs = _batched_sparse(Sp(A45, "csr"), seed=29)
  B, b = util.random_sparse(30, (5, 6) if subscripts == "ij,jk->ik" else A45, "dcsr",
                            dtype=F64)
  D = util.random_values(31, (N_MAP, B.nse), F64)
  kw = dict(work=As.nse * B.nse, out_format="dense") if subscripts == "ij,jk->ik" else {}
  got = jax.vmap(lambda A, d: dense(js.einsum(subscripts, A, B.with_data(d), **kw)))(As, D)
  for n in range(N_MAP):
    want = np.einsum(subscripts, xs[n], np.asarray(B.with_data(D[n]).todense()))
    util.assert_allclose(got[n], want, F64, err_msg=f"vmap element {n}")


def test_vmap_nested():
  A, a = util.random_sparse(17, A45, "csc", dtype=F64)
  X = util.random_values(18, (2, N_MAP, 5), F64)
  f = lambda x: js.einsum("ij,j->i", A, x)
  got = jax.vmap(jax.vmap(f))(X)
  np.testing.assert_allclose(got, np.einsum("ij,abj->abi", a, X), rtol=1e-12)


# -- derivatives -------------------------------------------------------------------------------
def _with(ops, ks, new):
  ops = list(ops)
  for k, v in zip(ks, new):
    ops[k] = ops[k].with_data(v) if js.is_sparse(ops[k]) else v
  return ops


def _primal_fn(case, ops, ks):
  """``f(*values of operands ks) -> array`` with the other operands fixed."""
  f = fn(case)
  return lambda *vs: values(f(*_with(ops, ks, vs)))


def _primals(ops, ks):
  return [ops[k].data if js.is_sparse(ops[k]) else ops[k] for k in ks]


# Second-order numerical checks of the heaviest portable joins are left to the first-order
# tests below (test_grad_matches_dense_autodiff, and the planner's jit gradient tests).
HEAVY = {"mul_sparse_csc_unordered", "sddmm_transposed_out_dcsc"}


@pytest.mark.parametrize("case", [p for p in CASE_PARAMS if p.id not in HEAVY])
def test_check_grads(case):
  """check_grads (order 2, fwd and rev) w.r.t. every dense operand and the stored values of
  every sparse operand, jointly."""
  ops, _ = build(case, seed=3)
  ks = list(range(len(ops)))
  util.check_grads_both(_primal_fn(case, ops, ks), _primals(ops, ks))


def _dense_loss(case, refs_or_dense, weight):
  return jnp.sum(jnp.einsum(case.subscripts, *refs_or_dense) * weight)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_grad_matches_dense_autodiff(case):
  """jax.grad of a weighted sum w.r.t. every operand's values vs the same loss on dense
  arrays; sparse gradients are data-shaped and zero at the padding slots."""
  ops, refs = build(case, seed=5)
  out_shape = np.einsum(case.subscripts, *refs).shape
  weight = jnp.asarray(util.random_values(6, out_shape, F64))
  ks = list(range(len(ops)))
  f = fn(case, **jit_capacities(case, ops))

  @jax.jit          # one compilation; the operands (patterns included) are arguments
  def both(vs, ops):
    loss = lambda vs: jnp.sum(dense(f(*_with(ops, ks, vs))) * weight)
    mats = lambda vs: [ops[k].with_data(v).todense() if js.is_sparse(ops[k]) else v
                       for k, v in zip(ks, vs)]
    return jax.grad(loss)(vs), jax.grad(lambda vs: _dense_loss(case, mats(vs), weight))(vs)

  grads, expected = both(_primals(ops, ks), ops)
  for k, g, e in zip(ks, grads, expected):
    assert g.shape == _primals(ops, [k])[0].shape, k
    util.assert_allclose(g, e, F64, err_msg=f"gradient of operand {k}")
    if js.is_sparse(ops[k]):
      np.testing.assert_array_equal(np.asarray(g)[padding_mask(ops[k])], 0)


JAC_CASES = case_params("spmv_csr", "sddmm_csr", "batched_bmm_csr", "mttkrp_csf3")


@pytest.mark.parametrize("case", JAC_CASES)
def test_jacfwd_jacrev(case):
  """Jacobians w.r.t. the first sparse operand's values and every dense operand, against
  the dense computation (for sampled / sparse outputs: the Jacobian of the stored values
  equals the dense Jacobian gathered at the output pattern)."""
  ops, refs = build(case, seed=8)
  ks = [case.sparse_args[0]] + case.dense_args
  f = _primal_fn(case, ops, ks)
  primals = _primals(ops, ks)
  fwd = jax.jacfwd(f, argnums=tuple(range(len(ks))))(*primals)
  rev = jax.jacrev(f, argnums=tuple(range(len(ks))))(*primals)

  def dense_f(*vs):
    mats = [ops[k].with_data(v).todense() if js.is_sparse(ops[k]) else v
            for k, v in zip(ks, vs)]
    full = list(ops)
    for k, m in zip(ks, mats):
      full[k] = m
    full = [o.todense() if js.is_sparse(o) else o for o in full]
    return jnp.einsum(case.subscripts, *full)

  expected = jax.jacfwd(dense_f, argnums=tuple(range(len(ks))))(*primals)
  result = fn(case)(*ops)
  if js.is_sparse(result):
    # Map stored-value rows of the Jacobian to dense output positions.
    coords = _stored_positions(result)
    expected = [e.reshape((-1,) + e.shape[len(dense(result).shape):])[coords]
                for e in expected]
    valid = coords < math.prod(dense(result).shape)
  for j, (a, b, e) in enumerate(zip(fwd, rev, expected)):
    if js.is_sparse(result):
      e = jnp.where(valid.reshape((-1,) + (1,) * (e.ndim - 1)), e, 0)
      a, b = a.reshape(e.shape), b.reshape(e.shape)
    util.assert_allclose(a, e, F64, err_msg=f"jacfwd, argument {j}")
    util.assert_allclose(b, e, F64, err_msg=f"jacrev, argument {j}")


def _stored_positions(S):
  """Flat dense position of every slot of ``S.data`` (rows of its Jacobian), padding ->
  the dense size. Found by differentiating ``todense`` (a one-hot per stored slot)."""
  size = math.prod(S.shape)
  onehot = jax.jacfwd(lambda d: S.with_data(d).todense().reshape(-1))(S.data)
  onehot = np.asarray(onehot).reshape(size, -1)          # [dense size, slots]
  pos = np.full(onehot.shape[1], size)                   # each (entry, block element) slot
  rows, cols = np.nonzero(onehot)
  pos[cols] = rows
  return pos


COMPOSE_CASES = case_params("spmm_csr", "sddmm_transposed_out_dcsc", "moe_gates_csr",
                            "mul_sparse_csr_coo")


@pytest.mark.parametrize("case", COMPOSE_CASES)
def test_jit_grad_vmap_composition(case):
  """jit(grad(loss of vmap(f))) w.r.t. the sparse values and a stack of values of another
  operand (dense, or the second sparse operand's values); then jit(vmap(grad(f)))."""
  ops, refs = build(case, seed=9)
  ksp = case.sparse_args[0]
  kd = case.dense_args[0] if case.dense_args else case.sparse_args[1]   # mapped operand
  xshape = ops[kd].data.shape if js.is_sparse(ops[kd]) else ops[kd].shape
  X = jnp.asarray(util.random_values(10, (N_MAP,) + xshape, F64))
  out_shape = np.einsum(case.subscripts, *refs).shape
  weight = jnp.asarray(util.random_values(20, (N_MAP,) + out_shape, F64))
  kw = jit_capacities(case, ops)

  def loss(d, Xs, make):
    def one(x):
      full = _with(ops, [ksp, kd], [d, x])
      return make(full)
    return jnp.sum(jax.vmap(one)(Xs) * weight)

  sparse_make = lambda full: dense(js.einsum(case.subscripts, *full, **kw))
  dense_make = lambda full: jnp.einsum(case.subscripts,
                                       *[o.todense() if js.is_sparse(o) else o for o in full])
  got = jax.jit(jax.grad(lambda d, X: loss(d, X, sparse_make), argnums=(0, 1)))(
      ops[ksp].data, X)
  want = jax.grad(lambda d, X: loss(d, X, dense_make), argnums=(0, 1))(ops[ksp].data, X)
  for g, w in zip(got, want):
    util.assert_allclose(g, w, F64)
  # ... and the other nesting orders agree.
  per = jax.jit(jax.vmap(jax.grad(lambda d, x, w: jnp.sum(
      sparse_make(_with(ops, [ksp, kd], [d, x])) * w), argnums=1), in_axes=(None, 0, 0)))(
          ops[ksp].data, X, weight)
  util.assert_allclose(per, want[1], F64)


def test_second_order_hessian_vector_product():
  """forward-over-reverse: Hessian of a quadratic in the sparse values, vs dense."""
  A, a = util.random_sparse(21, A45, "csr", dtype=F64)
  x = jnp.asarray(util.random_values(22, (5,), F64))

  def loss(d):
    y = js.einsum("ij,j->i", A.with_data(d), x)
    return jnp.sum(y ** 2) + jnp.sum(js.einsum("ij,ij->ij", A.with_data(d), A.with_data(d)).data)

  def dense_loss(d):
    m = A.with_data(d).todense()
    return jnp.sum((m @ x) ** 2) + jnp.sum(m * m)

  v = jnp.asarray(util.random_values(23, A.data.shape, F64))
  hvp = jax.jvp(jax.grad(loss), (A.data,), (v,))[1]
  want = jax.jvp(jax.grad(dense_loss), (A.data,), (v,))[1]
  util.assert_allclose(hvp, want, F64)


def test_js_grad_returns_sparse_with_pattern():
  A, a = util.random_sparse(24, A45, "coo", dtype=F64)
  X = jnp.asarray(util.random_values(25, (5, 3), F64))
  W = util.random_values(26, (4, 3), F64)
  g = js.grad(lambda A: jnp.sum(js.einsum("ij,jk->ik", A, X) * W))(A)
  assert js.is_sparse(g) and g.format == A.format and g.nse == A.nse
  for got, want in zip(util.buffers(g), util.buffers(A)):
    np.testing.assert_array_equal(got, want)
  util.assert_allclose(g.todense(), (W @ np.asarray(X).T) * (a != 0), F64)


# -- sparse × sparse -----------------------------------------------------------------------------
def _spgemm_operands(seed, fa="csr", fb="csr"):
  """A `[4, 5]` and B `[5, 6]` (the example shapes, so compiled pieces are shared)."""
  rng = np.random.default_rng(seed)
  A, a = util.random_sparse(rng, A45, fa, density=0.4, dtype=F64)
  B, b = util.random_sparse(rng, (5, 6), fb, density=0.4, dtype=F64)
  return A, a, B, b


def _join_size(a, b):
  """Number of matching entry pairs of ``ij,jk``: sum over j of nnz(A[:, j]) nnz(B[j, :])."""
  return int(((a != 0).sum(0) * (b != 0).sum(1)).sum())


def _scipy_product(a, b):
  ref = (sps.csr_matrix(a) @ sps.csr_matrix(b)).tocsr()
  ref.sort_indices()
  return ref


@pytest.mark.parametrize("fa, fb", [("csr", "csr"), ("coo", "csc")], ids=["csr_csr", "coo_csc"])
def test_spgemm_eager_exact_capacity_matches_scipy(fa, fb):
  A, a, B, b = _spgemm_operands(30, fa, fb)
  C = js.einsum("ij,jk->ik", A, B)
  ref = _scipy_product(a, b)
  assert js.is_sparse(C) and C.format == js.CSR and C.shape == (4, 6)
  assert C.nse == ref.nnz == int(C.nnz)                    # exact: no padding
  np.testing.assert_array_equal(np.asarray(C.pos(1)), ref.indptr)
  np.testing.assert_array_equal(np.asarray(C.crd(1)), ref.indices)
  np.testing.assert_allclose(np.asarray(C.data), ref.data, rtol=1e-12)
  util.assert_allclose(C.todense(), ref.toarray(), F64)


@pytest.mark.parametrize("out_format", ["coo", util.DCSC], ids=["coo", "dcsc"])
def test_spgemm_out_format(out_format):
  A, a, B, b = _spgemm_operands(31, "csc", "dcsr")
  C = js.einsum("ij,jk->ik", A, B, out_format=out_format)
  assert C.format == resolve_format(out_format, 2)
  ref = _scipy_product(a, b)
  assert C.nse == ref.nnz
  util.assert_allclose(C.todense(), ref.toarray(), F64)


def test_spgemm_out_format_dense():
  A, a, B, b = _spgemm_operands(32, "coo", "csr")
  C = js.einsum("ij,jk->ik", A, B, out_format="dense")
  assert not js.is_sparse(C)
  util.assert_allclose(C, _scipy_product(a, b).toarray(), F64)


@pytest.mark.parametrize("fa, fb", [("csr", "csr"), ("coo", "csc")], ids=["csr_csr", "coo_csc"])
def test_spgemm_under_jit_with_capacities(fa, fb):
  A, a, B, b = _spgemm_operands(33, fa, fb)
  ref = _scipy_product(a, b)
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=ref.nnz + 3,
                                     work=_join_size(a, b)))
  C = f(A, B)
  assert C.nse == ref.nnz + 3 and int(C.nnz) == ref.nnz
  util.assert_allclose(C.todense(), ref.toarray(), F64)
  # Padding slots: value 0 and coordinate == the dimension size.
  np.testing.assert_array_equal(np.asarray(C.data)[ref.nnz:], 0)
  np.testing.assert_array_equal(np.asarray(C.crd(1))[ref.nnz:], 6)


def test_spgemm_batched():
  """Sparse × sparse with a batch dimension in both: ``bij,bjk->bik`` (under jit). The join
  runs over all batch elements at once: ``work`` is the total of matching pairs."""
  rng = np.random.default_rng(34)
  A, a = util.random_sparse(rng, (2, 4, 5), "csr", n_batch=1, dtype=F64)
  B, b = util.random_sparse(rng, (2, 5, 6), "dcsr", n_batch=1, dtype=F64)
  nnz = [_scipy_product(a[n], b[n]).nnz for n in range(2)]
  work = sum(_join_size(a[n], b[n]) for n in range(2))
  C = jax.jit(lambda A, B: js.einsum("bij,bjk->bik", A, B, nse=max(nnz) + 1, work=work))(A, B)
  assert js.is_sparse(C) and C.n_batch == 1 and C.nse == max(nnz) + 1
  np.testing.assert_array_equal(np.asarray(C.pos(1))[:, -1], nnz)
  util.assert_allclose(C.todense(), np.einsum("bij,bjk->bik", a, b), F64)


def test_spgemm_vmap_with_per_element_work():
  rng = np.random.default_rng(49)
  A, a = util.random_sparse(rng, (2, 4, 5), "coo", n_batch=1, dtype=F64)
  B, b = util.random_sparse(rng, (2, 5, 6), "csc", n_batch=1, dtype=F64)
  nse = max(_scipy_product(a[n], b[n]).nnz for n in range(2))
  work = max(_join_size(a[n], b[n]) for n in range(2))
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=nse, work=work).todense())
  for n in range(2):          # enough for every element on its own ...
    util.assert_allclose(f(util.element(A, n), util.element(B, n)), a[n] @ b[n], F64)
  util.assert_allclose(jax.jit(jax.vmap(f))(A, B), np.einsum("bij,bjk->bik", a, b), F64)


def test_spgemm_grads_both_values_sampled_at_patterns():
  A, a, B, b = _spgemm_operands(35)
  W = jnp.asarray(util.random_values(36, (4, 6), F64))

  def loss(d, e):
    return jnp.sum(js.einsum("ij,jk->ik", A.with_data(d), B.with_data(e)).todense() * W)

  ga, gb = jax.grad(loss, argnums=(0, 1))(A.data, B.data)
  assert ga.shape == A.data.shape and gb.shape == B.data.shape
  Wn = np.asarray(W)
  util.assert_allclose(A.with_data(ga).todense(), (Wn @ b.T) * (a != 0), F64)
  util.assert_allclose(B.with_data(gb).todense(), (a.T @ Wn) * (b != 0), F64)
  np.testing.assert_array_equal(np.asarray(ga)[padding_mask(A)], 0)
  np.testing.assert_array_equal(np.asarray(gb)[padding_mask(B)], 0)


def test_closed_over_csr_patterns_under_jit():
  """Patterns closed over (concrete) while the values are traced: exact capacities are
  computed at trace time (CSR x CSR uses the generated counting kernel)."""
  A, a, B, b = _spgemm_operands(40)
  f = jax.jit(lambda d, e: js.einsum("ij,jk->ik", A.with_data(d), B.with_data(e)).todense())
  util.assert_allclose(f(A.data, B.data), a @ b, F64)


def test_closed_over_portable_patterns_under_jit_spgemm():
  A, a, B, b = _spgemm_operands(41, "coo", "csc")
  f = jax.jit(lambda d, e: js.einsum("ij,jk->ik", A.with_data(d), B.with_data(e)).todense())
  util.assert_allclose(f(A.data, B.data), a @ b, F64)


def test_closed_over_portable_patterns_under_jit_intersection():
  """``A * C`` with C in a non-unique format (a join that expands) and C closed over."""
  A, a = util.random_sparse(42, A45, "csr", dtype=F64)
  C, c = util.random_sparse(43, A45, util.UNORDERED_COO, dtype=F64)
  f = jax.jit(lambda d: js.einsum("ij,ij->ij", A.with_data(d), C, work=A.nse * C.nse).todense())
  util.assert_allclose(f(A.data), a * c, F64)


# -- gradients never densify a sparse operand --------------------------------------------------
BIG = 3000
DENSE_SIZE = BIG * BIG


def _big_sparse(seed):
  m = sps.random(BIG, BIG, density=0.001, format="csr", random_state=seed, dtype=np.float32)
  return js.from_scipy(m)


def _avals_in(jaxpr):
  """All avals of all variables of a (closed) jaxpr, recursing into sub-jaxprs in params."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  out = [v.aval for v in list(jaxpr.invars) + list(jaxpr.constvars) + list(jaxpr.outvars)
         if hasattr(v, "aval")]
  for eqn in jaxpr.eqns:
    out += [v.aval for v in list(eqn.invars) + list(eqn.outvars) if hasattr(v, "aval")]
    for p in eqn.params.values():
      for sub in (p if isinstance(p, (list, tuple)) else [p]):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          out += _avals_in(sub)
  return out


def _largest_jaxpr_value(fun, *args) -> int:
  return max(math.prod(getattr(a, "shape", ())) for a in _avals_in(jax.make_jaxpr(fun)(*args)))


_TENSOR = re.compile(r"tensor<((?:\d+x)+)[a-z]")


def _largest_hlo_value(fun, *args) -> int:
  """Largest tensor in the lowered StableHLO (the portable lowering included)."""
  text = jax.jit(fun).lower(*args).as_text()
  sizes = [math.prod(int(d) for d in m.group(1).rstrip("x").split("x"))
           for m in _TENSOR.finditer(text)]
  return max(sizes)


def test_densification_detector_detects_todense():
  """The checks below can fail: ``todense`` in the graph is caught by both detectors."""
  A = _big_sparse(0)
  f = lambda d: jnp.sum(A.with_data(d).todense())
  assert _largest_jaxpr_value(jax.grad(f), A.data) >= DENSE_SIZE
  assert _largest_hlo_value(jax.grad(f), A.data) >= DENSE_SIZE


def test_grad_spmm_never_densifies():
  A = _big_sparse(1)
  X = jnp.asarray(np.random.default_rng(2).normal(size=(BIG, 4)).astype(np.float32))
  W = jnp.asarray(np.random.default_rng(3).normal(size=(BIG, 4)).astype(np.float32))
  loss = lambda d, x: jnp.sum(js.einsum("ij,jk->ik", A.with_data(d), x) * W)
  g = jax.grad(loss, argnums=(0, 1))
  assert _largest_jaxpr_value(g, A.data, X) < DENSE_SIZE
  assert _largest_hlo_value(g, A.data, X) < DENSE_SIZE
  ga, gx = jax.jit(g)(A.data, X)
  assert ga.shape == A.data.shape and gx.shape == X.shape
  # spot-check a few entries against the dense formula dL/dA_ij = (W X^T)_ij.
  coords = util.stored_coordinates(A)[:50]
  want = np.einsum("nk,nk->n", np.asarray(W)[coords[:, 0]], np.asarray(X)[coords[:, 1]])
  np.testing.assert_allclose(np.asarray(ga)[:50], want, rtol=1e-4, atol=1e-4)


def test_grad_spgemm_never_densifies():
  A, B = _big_sparse(4), _big_sparse(5)
  a_nz = (A.to_scipy() != 0).astype(np.int64)
  b_nz = (B.to_scipy() != 0).astype(np.int64)
  nse = (a_nz @ b_nz).nnz
  work = int(np.asarray(a_nz.sum(0)).ravel() @ np.asarray(b_nz.sum(1)).ravel())
  loss = lambda d, e: jnp.sum(js.einsum("ij,jk->ik", A.with_data(d), B.with_data(e),
                                        nse=nse, work=work).data ** 2)
  g = jax.grad(loss, argnums=(0, 1))
  assert _largest_jaxpr_value(g, A.data, B.data) < DENSE_SIZE
  assert _largest_hlo_value(g, A.data, B.data) < DENSE_SIZE
  ga, gb = jax.eval_shape(g, A.data, B.data)
  assert ga.shape == A.data.shape and gb.shape == B.data.shape


def test_grad_sddmm_never_densifies():
  A = _big_sparse(6)
  U = jnp.ones((BIG, 8), jnp.float32)
  loss = lambda d, u: jnp.sum(js.einsum("ij,ik,jk->ij", A.with_data(d), u, u).data)
  g = jax.grad(loss, argnums=(0, 1))
  assert _largest_jaxpr_value(g, A.data, U) < DENSE_SIZE
  assert _largest_hlo_value(g, A.data, U) < DENSE_SIZE


# -- errors --------------------------------------------------------------------------------------
def _A():
  return util.random_sparse(40, A45, "csr", dtype=F64)[0]


@pytest.mark.parametrize("subscripts, operands, match", [
    pytest.param("ij,jk->ik", lambda A: (A,), r"name 2 operand\(s\) but 1 were given",
                 id="too_few_operands"),
    pytest.param("ij->i", lambda A: (A, jnp.ones(5)), r"name 1 operand\(s\) but 2 were given",
                 id="too_many_operands"),
    pytest.param("ijk,jk->i", lambda A: (A, jnp.ones((5, 3))),
                 r"operand 0 has rank 2 \(shape \(4, 5\)\) but term 'ijk' .* names 3 dimensions",
                 id="rank_mismatch_sparse"),
    pytest.param("ij,j->i", lambda A: (A, jnp.ones((5, 2))),
                 r"operand 1 has rank 2 .* but term 'j' .* names 1 dimensions",
                 id="rank_mismatch_dense"),
    pytest.param("ij,jk->ik", lambda A: (A, jnp.ones((4, 3))),
                 r"index 'j' of 'ij,jk->ik' has size 5 in operand 0 \(axis 1\) but 4 in "
                 r"operand 1 \(axis 0\)", id="size_mismatch"),
    pytest.param("ij,ij->ij", lambda A: (A, A.T),
                 r"index 'i' .* has size 4 in operand 0 .* but 5 in operand 1",
                 id="size_mismatch_two_sparse"),
    pytest.param("ij,j1->i", lambda A: (A, jnp.ones((5, 3))), r"invalid character\(s\) \['1'\]",
                 id="invalid_digit"),
    pytest.param("i.j,j->i", lambda A: (A, jnp.ones(5)), r"invalid character",
                 id="invalid_dot"),
    pytest.param("ij,j->k", lambda A: (A, jnp.ones(5)),
                 r"output index \['k'\] of 'ij,j->k' appears in no input", id="output_absent"),
    pytest.param("ij,j->ii", lambda A: (A, jnp.ones(5)), r"repeat an index",
                 id="repeated_output"),
    pytest.param("ij->...i", lambda A: (A,), r"uses '...' but no input does",
                 id="ellipsis_output_only"),
])
def test_bad_subscripts(subscripts, operands, match):
  with pytest.raises(ValueError, match=match):
    js.einsum(subscripts, *operands(_A()))


@pytest.mark.parametrize("bad, name", [("x", "str"), ([1.0] * 5, "list"), (None, "NoneType")],
                         ids=["str", "list", "none"])
def test_non_array_operand(bad, name):
  with pytest.raises(TypeError, match=rf"einsum: operand 1 must be an array or a SparseArray; "
                     rf"got {name}"):
    js.einsum("ij,j->i", _A(), bad)


def test_subscripts_not_a_string():
  with pytest.raises(TypeError, match=r"subscripts must be a string"):
    js.einsum(["ij"], _A())


def test_errors_are_raised_at_trace_time():
  A = _A()
  with pytest.raises(ValueError, match=r"has size 5 in operand 0"):
    jax.eval_shape(lambda A, x: js.einsum("ij,jk->ik", A, x), A, jnp.ones((4, 3)))


def test_spgemm_under_jit_without_capacities():
  """A product of any 2-D formats (batched alike) needs nse= only (it runs as the CSR
  product between conversions), and into a dense result nothing; a longer chain of sparse
  operands needs work= (the portable join's capacity)."""
  A, a, B, b = _spgemm_operands(44, "coo", "csc")
  with pytest.raises(ValueError, match=r"under jit pass nse= \(capacity of the sparse result\) "
                     r"as static ints"):
    jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B))(A, B)
  C = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=24))(A, B)
  util.assert_allclose(C.todense(), a @ b, F64)
  rng = np.random.default_rng(44)
  Ab, ab = util.random_sparse(rng, (2, 4, 5), "coo", n_batch=1, density=0.4, dtype=F64)
  Bb, bb = util.random_sparse(rng, (2, 5, 6), "coo", n_batch=1, density=0.4, dtype=F64)
  with pytest.raises(ValueError, match=r"under jit pass nse= \(capacity of the sparse result\) "
                     r"as static ints"):
    jax.jit(lambda A, B: js.einsum("bij,bjk->bik", A, B))(Ab, Bb)
  C = jax.jit(lambda A, B: js.einsum("bij,bjk->bik", A, B, nse=24))(Ab, Bb)
  util.assert_allclose(C.todense(), np.einsum("bij,bjk->bik", ab, bb), F64)
  D = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, out_format="dense"))(A, B)
  util.assert_allclose(D, a @ b, F64)
  with pytest.raises(ValueError, match=r"under jit pass work= \(capacity of the join"):
    jax.jit(lambda A, B: js.einsum("ij,jk,kl->il", A, B, B.T, out_format="dense"))(A, B)


def test_traced_capacity_is_a_type_error():
  A, a, B, b = _spgemm_operands(45)
  with pytest.raises(TypeError, match=r"nse must be a static Python int"):
    jax.jit(lambda A, B, n: js.einsum("ij,jk->ik", A, B, nse=n, work=400))(A, B, 30)


@pytest.mark.parametrize("fa, fb, name", [("csr", "csr", "nse"), ("coo", "csc", "nse"),
                                          ("coo", "csc", "work")],
                         ids=["csr_csr_nse", "coo_csc_nse", "coo_csc_work"])
def test_capacity_overflow_eager_raises(fa, fb, name):
  A, a, B, b = _spgemm_operands(46, fa, fb)
  exact = dict(nse=_scipy_product(a, b).nnz, work=_join_size(a, b))[name]
  with pytest.raises(js.SparseCapacityError,
                     match=rf"needs {name}={exact} but {name}={exact - 1} was given\. Pass "
                     rf"{name}={exact} \(or larger\)"):
    js.einsum("ij,jk->ik", A, B, **{name: exact - 1})
  js.einsum("ij,jk->ik", A, B, **{name: exact})          # exactly enough is fine


@pytest.mark.parametrize("fa, fb, name", [("csr", "csr", "nse"), ("coo", "csc", "nse"),
                                          ("coo", "csc", "work")],
                         ids=["csr_csr_nse", "coo_csc_nse", "coo_csc_work"])
def test_capacity_overflow_under_jit_poisons(fa, fb, name):
  """Under jit (patterns traced) an overflow poisons every stored value with NaN: the nse
  of a sparse result, and the work of the portable join (a contraction into a dense
  result; its kernel joins in loops, with no buffer that work bounds, so it is exact)."""
  A, a, B, b = _spgemm_operands(47, fa, fb)
  caps = dict(nse=_scipy_product(a, b).nnz, work=_join_size(a, b))
  if name == "work":
    del caps["nse"]
    caps["out_format"] = "dense"
  f = lambda caps: jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, **caps))(A, B)
  C = f(caps)
  util.assert_allclose(C.todense() if isinstance(C, js.SparseArray) else C, a @ b, F64)
  caps[name] -= 1
  over = f(caps)
  if name == "work" and js.config.lowering != "portable":
    util.assert_allclose(over, a @ b, F64)
    return
  assert np.isnan(np.asarray(over.data if isinstance(over, js.SparseArray) else over)).all()


@pytest.fixture
def checkify_capacity():
  js.config.checkify_capacity = True
  try:
    yield
  finally:
    js.config.checkify_capacity = False


@pytest.mark.parametrize("fa, fb", [("csr", "csr"), ("coo", "csc")], ids=["csr_csr", "coo_csc"])
def test_capacity_overflow_checkify(checkify_capacity, fa, fb):
  A, a, B, b = _spgemm_operands(48, fa, fb)
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=_scipy_product(a, b).nnz - 1,
                                     work=_join_size(a, b)))
  err, C = checkify.checkify(f)(A, B)
  with pytest.raises(checkify.JaxRuntimeError, match=r"needs \d+ stored entries"):
    err.throw()
  assert np.isnan(np.asarray(C.data)).all()


def test_work_overflow_checkify(checkify_capacity):
  A, a, B, b = _spgemm_operands(48, "coo", "csc")
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=_scipy_product(a, b).nnz,
                                     work=_join_size(a, b) - 1))
  err, _ = checkify.checkify(f)(A, B)
  with pytest.raises(checkify.JaxRuntimeError,
                     match=rf"needs {_join_size(a, b)} entries but its capacity is work="):
    err.throw()


def test_capacities_that_fit_pass_checkify(checkify_capacity):
  A, a, B, b = _spgemm_operands(48, "csr", "csr")
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=_scipy_product(a, b).nnz,
                                     work=_join_size(a, b)).todense())
  err, C = checkify.checkify(f)(A, B)
  err.throw()
  util.assert_allclose(C, a @ b, F64)
  with pytest.raises(js.CapacityRequiredError, match="work="):
    checkify.checkify(jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=4)))(A, B)


def test_checkify_capacity_flag_is_reset():
  assert js.config.checkify_capacity is False
