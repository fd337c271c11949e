"""Tests of primitives/planner.py: join order, loop order, the output kind, caching.

Plans are checked for the specs ``js.einsum`` actually binds (read back from the
jaxpr), so the tests follow the public API's index numbering: index ``c`` of the
subscripts has id ``string.ascii_letters.index(c)``. The derived einsums of the
rules (tangents, transposes) must join their sparse sources in the forward's
order, which is what lets one ``work`` capacity serve forward and gradients.
"""
from __future__ import annotations

import dataclasses
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util

import jscorch as js
from jscorch.primitives import einsum_portable
from jscorch.primitives.einsum_spec import EinsumSpec, Operand
from jscorch.primitives.layout import Layout
from jscorch.primitives.planner import PATTERN, Plan, make_plan

F64 = np.float64
ID = {c: string.ascii_letters.index(c) for c in string.ascii_letters}


def ids(letters: str) -> tuple[int, ...]:
  return tuple(ID[c] for c in letters)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def einsum_specs(fun, *args) -> list[EinsumSpec]:
  """Every ``jscorch_einsum`` spec in the jaxpr of ``fun`` (recursing into sub-jaxprs)."""
  return [eqn.params["spec"] for eqn in util.einsum_eqns(fun, *args)]


def spec_of(subscripts, *operands, **kwargs) -> EinsumSpec:
  (spec,) = einsum_specs(lambda *ops: js.einsum(subscripts, *ops, **kwargs), *operands)
  return spec


def sp(shape, fmt, seed=0, **kw):
  return util.random_sparse(seed, shape, fmt, dtype=F64, **kw)[0]


def dn(*shape):
  return jnp.asarray(util.random_values(1, shape, F64))


# -- plans of the examples --------------------------------------------------------------------
A45 = (4, 5)
EXAMPLES = [
    # id, subscripts, operands, kwargs, expected steps, expected loop order, assembly
    ("spmv_csr", "ij,j->i", lambda: (sp(A45, "csr"), dn(5)), {},
     (("scan", 0),), "ij", "dense"),
    ("spmm_csr", "ij,jk->ik", lambda: (sp(A45, "csr"), dn(5, 3)), {},
     (("scan", 0),), "ijk", "dense"),
    ("spmm_csc", "ij,jk->ik", lambda: (sp(A45, "csc"), dn(5, 3)), {},
     (("scan", 0),), "jik", "dense"),
    ("spmm_dcsc", "ij,jk->ik", lambda: (sp(A45, util.DCSC), dn(5, 3)), {},
     (("scan", 0),), "jik", "dense"),
    ("spmm_coo", "ij,jk->ik", lambda: (sp(A45, "coo"), dn(5, 3)), {},
     (("scan", 0),), "ijk", "dense"),
    ("dense_left_csc", "ki,ij->kj", lambda: (dn(2, 4), sp(A45, "csc")), {},
     (("scan", 1),), "jik", "dense"),
    ("transposed_csr", "ji,jk->ik", lambda: (sp(A45, "csr"), dn(4, 3)), {},
     (("scan", 0),), "jik", "dense"),
    ("sddmm_csr", "ij,ik,jk->ij", lambda: (sp(A45, "csr"), dn(4, 3), dn(5, 3)), {},
     (("scan", 0), ("lookup", PATTERN)), "ijk", "sampled"),
    ("sddmm_csc", "ij,ik,jk->ij", lambda: (sp(A45, "csc"), dn(4, 3), dn(5, 3)), {},
     (("scan", 0), ("lookup", PATTERN)), "jik", "sampled"),
    ("mul_csr_coo", "ij,ij->ij", lambda: (sp(A45, "csr"), sp(A45, "coo", 1)), {},
     (("scan", 0), ("lookup", 1), ("lookup", PATTERN)), "ij", "sampled"),
    ("mul_csr_unordered_coo", "ij,ij->ij",
     lambda: (sp(A45, "csr"), sp(A45, util.UNORDERED_COO, 1)), dict(work=200),
     (("scan", 0), ("lookup", PATTERN), ("expand", 1)), "ij", "sampled"),
    ("mttkrp_csf", "ijk,jr,kr->ir", lambda: (sp((2, 3, 4), "csf"), dn(3, 2), dn(4, 2)), {},
     (("scan", 0),), "ijkr", "dense"),
    ("mttkrp_dense_dcsr3", "ijk,jr,kr->ir",
     lambda: (sp((2, 3, 4), util.DENSE_DCSR3), dn(3, 2), dn(4, 2)), {},
     (("scan", 0),), "kijr", "dense"),
    ("ttm_coo3", "ijk,kl->ijl", lambda: (sp((2, 3, 4), "coo"), dn(4, 3)), {},
     (("scan", 0),), "ijkl", "dense"),
    ("batched_csr", "bij,bjk->bik",
     lambda: (sp((2, 4, 5), "csr", n_batch=1), dn(2, 5, 3)), {},
     (("scan", 0),), "bijk", "dense"),
    ("moe_gates", "bd,bn,ndh->bh", lambda: (dn(4, 3), sp(A45, "csr"), dn(5, 3, 2)), {},
     (("scan", 1),), "bndh", "dense"),
    ("block_csr", "ijd,jk->ikd", lambda: (sp((4, 5, 3), "csr", n_dense=1), dn(5, 2)), {},
     (("scan", 0),), "ijdk", "dense"),
    ("sparse_diagonal", "ii->i", lambda: (sp((4, 4), "csr"),), {},
     (("scan", 0),), "i", "dense"),
    ("spgemm_csr", "ij,jk->ik", lambda: (sp(A45, "csr"), sp((5, 6), "csr", 1)),
     dict(nse=24, work=100), (("scan", 0), ("expand", 1)), "ijk", "sparse"),
    ("spgemm_csc_csr", "ij,jk->ik", lambda: (sp(A45, "csc"), sp((5, 6), "csr", 1)),
     dict(nse=24, work=100), (("scan", 0), ("expand", 1)), "jik", "sparse"),
    ("spgemm_dense_out", "ij,jk->ik", lambda: (sp(A45, "coo"), sp((5, 6), "csc", 1)),
     dict(work=100, out_format="dense"), (("scan", 0), ("expand", 1)), "ijk", "dense"),
    ("chain_three_sparse", "ij,jk,kl->il",
     lambda: (sp(A45, "csr"), sp((5, 6), "dcsr", 1), sp((6, 3), "coo", 2)),
     dict(nse=12, work=300), (("scan", 0), ("expand", 1), ("expand", 2)), "ijkl", "sparse"),
]


@pytest.mark.parametrize("subscripts, operands, kwargs, steps, loop_order, assembly",
                         [pytest.param(*e[1:], id=e[0]) for e in EXAMPLES])
def test_plan_of_example(subscripts, operands, kwargs, steps, loop_order, assembly):
  spec = spec_of(subscripts, *operands(), **kwargs)
  plan = make_plan(spec)
  assert plan.steps == steps
  assert plan.loop_order == ids(loop_order)
  assert assembly == spec.out_kind
  assert plan.expands == any(mode == "expand" for mode, _ in steps)
  # The loop order visits every index exactly once.
  every = {i for op in spec.operands for i in op.indices} | set(spec.out)
  assert sorted(plan.loop_order) == sorted(every)


@pytest.mark.parametrize("fmt, first", [("csr", "i"), ("csc", "j"), ("coo", "i"),
                                        ("dcsr", "i"), (util.DCSC, "j")],
                         ids=["csr", "csc", "coo", "dcsr", "dcsc"])
def test_loop_order_follows_driver_storage_order(fmt, first):
  """Scorch: sparse loops outer, concordant with the driver's level order."""
  plan = make_plan(spec_of("ij,jk->ik", sp(A45, fmt), dn(5, 3)))
  assert plan.loop_order[0] == ID[first]
  assert plan.loop_order[2] == ID["k"]          # dense index after the sparse levels


def test_driver_is_the_source_binding_most_indices():
  """The 3-D operand (binding i, j, k) drives before a 2-D one listed first."""
  B = sp((5, 6), "csr", 1)
  T = sp((4, 5, 6), "csf", 2)
  spec = spec_of("jk,ijk->i", B, T, out_format="dense")
  plan = make_plan(spec)
  assert plan.steps == (("scan", 1), ("lookup", 0))
  assert plan.loop_order == ids("ijk")


def test_expand_joins_the_source_sharing_most_bound_indices():
  spec = spec_of("ij,kl,jk->il", sp(A45, "csr"), sp((6, 3), "csr", 1), sp((5, 6), "csr", 2),
                 out_format="dense", work=500)
  plan = make_plan(spec)
  # After A (i, j), the j-k operand shares j; the k-l operand shares nothing yet.
  assert plan.steps == (("scan", 0), ("expand", 2), ("expand", 1))
  assert plan.loop_order == ids("ijkl")


# -- hashing and caching --------------------------------------------------------------------------
def _manual_spec(nse=5):
  return EinsumSpec((Operand((0, 1), Layout(js.CSR, (3, 4), nse)), Operand((1, 2))),
                    out=(0, 2), sizes=((0, 3), (1, 4), (2, 6)))


def test_plan_is_hashable_frozen_and_cached():
  spec = _manual_spec()
  plan = make_plan(spec)
  assert plan == Plan((("scan", 0),), (0, 1, 2))
  assert hash(plan) == hash(Plan((("scan", 0),), (0, 1, 2)))
  assert {plan: 1}[Plan((("scan", 0),), (0, 1, 2))] == 1
  with pytest.raises(dataclasses.FrozenInstanceError):
    plan.loop_order = (2, 1, 0)
  # Equal specs (built independently) share one cached plan object.
  again = _manual_spec()
  assert again is not spec and again == spec and hash(again) == hash(spec)
  before = make_plan.cache_info().hits
  assert make_plan(again) is plan
  assert make_plan.cache_info().hits == before + 1
  # A different capacity is a different spec (but the same plan).
  assert _manual_spec(nse=6) != spec
  assert make_plan(_manual_spec(nse=6)) == plan


def test_spec_is_hashable_through_js_einsum():
  A = sp(A45, "csr")
  s1 = spec_of("ij,jk->ik", A, dn(5, 3))
  s2 = spec_of("ij,jk->ik", sp(A45, "csr", seed=5), dn(5, 3))
  assert s1 == s2 and hash(s1) == hash(s2)
  assert make_plan(s1) is make_plan(s2)
  assert spec_of("ij,jk->ik", sp(A45, "csc"), dn(5, 3)) != s1


def test_ranks_break_ties_between_equal_sources():
  """Two equal CSR operands: the lower rank scans; swapping the ranks swaps the roles."""
  lay = Layout(js.CSR, (4, 5), 10)
  base = EinsumSpec((Operand((0, 1), lay), Operand((0, 1), lay)), out=(0,),
                    sizes=((0, 4), (1, 5)))
  assert make_plan(base).steps == (("scan", 0), ("lookup", 1))
  swapped = base.replace(ranks=(1, 0, 2))
  assert make_plan(swapped).steps == (("scan", 1), ("lookup", 0))


# -- derived einsums keep the forward's join order ----------------------------------------------
def _join_ranks(spec: EinsumSpec) -> list[tuple[str, int]]:
  """The plan's steps with each source named by its forward rank."""
  return [(mode, spec.source_ranks[s]) for mode, s in make_plan(spec).steps]


def _expanding_prefix(spec):
  steps = _join_ranks(spec)
  last = max(n for n, (mode, _) in enumerate(steps) if mode in ("scan", "expand"))
  return steps[:last + 1]


DERIVED = [
    pytest.param("ij,jk->ik", (A45, (5, 6)), ("coo", "csc"), {}, id="spgemm_coo_csc"),
    pytest.param("ij,jk->ik", (A45, (5, 6)), ("csr", "csr"), {}, id="spgemm_csr_csr"),
    pytest.param("ij,jk->ik", (A45, (5, 6)), ("csr", "dcsr"), dict(out_format="dense"),
                 id="spgemm_dense_out"),
    pytest.param("ij,jk,kl->il", (A45, (5, 6), (6, 3)), ("csr", "dcsr", "coo"), {},
                 id="chain_three_sparse"),
    pytest.param("ij,ij->ij", (A45, A45), ("csr", util.UNORDERED_COO), {},
                 id="mul_csr_unordered_coo"),
]


def _operands(shapes, fmts, seed=0):
  rng = np.random.default_rng(seed)
  pairs = [util.random_sparse(rng, s, f, density=0.4, dtype=F64) for s, f in zip(shapes, fmts)]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def _exact_work(subscripts, refs) -> int:
  """The largest intermediate join, counted from the dense patterns with numpy: the
  number of index tuples where the first 1, 2, ... sparse operands are all nonzero."""
  terms = subscripts.split("->")[0].split(",")
  masks = [(r != 0).astype(np.int64) for r in refs]
  best = 0
  for n in range(2, len(terms) + 1):
    letters = "".join(dict.fromkeys("".join(terms[:n])))
    best = max(best, int(np.einsum(",".join(terms[:n]) + "->" + letters, *masks[:n]).sum()))
  return best


def _capacities(subscripts, ops, refs, kwargs):
  """``kwargs`` plus the exact ``work`` and, for a new sparse pattern, the eager ``nse``."""
  caps = dict(kwargs, work=_exact_work(subscripts, refs))
  out = js.einsum(subscripts, *ops, **kwargs)
  if js.is_sparse(out) and subscripts != "ij,ij->ij":      # not sampled: a new pattern
    caps["nse"] = out.nse
  return caps


@pytest.mark.parametrize("subscripts, shapes, fmts, kwargs", DERIVED)
def test_derived_specs_join_in_forward_order(subscripts, shapes, fmts, kwargs):
  ops, refs = _operands(shapes, fmts)
  caps = _capacities(subscripts, ops, refs, kwargs)

  def loss(ds, As):        # patterns traced too, as in a jitted training step
    r = js.einsum(subscripts, *[A.with_data(d) for A, d in zip(As, ds)], **caps)
    return jnp.sum(r.data if js.is_sparse(r) else r)

  datas = [A.data for A in ops]
  forward = einsum_specs(loss, datas, ops)
  assert len(forward) == 1
  want = _expanding_prefix(forward[0])
  derived = einsum_specs(jax.grad(loss), datas, ops)
  derived += einsum_specs(lambda ds, As: jax.jvp(lambda ds: loss(ds, As), (ds,), (ds,)),
                          datas, ops)
  assert len(derived) >= 1 + len(ops)          # forward, jvp terms and one transpose each
  for spec in derived:
    assert _expanding_prefix(spec) == want, str(spec)
    assert spec.work == forward[0].work


@pytest.mark.parametrize("subscripts, shapes, fmts, kwargs",
                         [p for p in DERIVED if p.id in ("spgemm_coo_csc", "chain_three_sparse",
                                                         "mul_csr_unordered_coo")])
def test_forward_work_suffices_for_gradients_under_jit(subscripts, shapes, fmts, kwargs):
  """Patterns traced (jit arguments): with the forward's exact ``work`` the gradients are
  right; with one less, the forward and the gradients are poisoned (NaN)."""
  ops, refs = _operands(shapes, fmts, seed=1)
  caps = _capacities(subscripts, ops, refs, kwargs)
  work = caps["work"]
  W = jnp.asarray(util.random_values(2, np.einsum(subscripts, *refs).shape, F64))

  def make(caps):
    def loss(ds, As):
      r = js.einsum(subscripts, *[A.with_data(d) for A, d in zip(As, ds)], **caps)
      return jnp.sum((r.todense() if js.is_sparse(r) else r) * W)
    return jax.jit(jax.value_and_grad(loss))

  def dense_loss(ds):
    mats = [A.with_data(d).todense() for A, d in zip(ops, ds)]
    return jnp.sum(jnp.einsum(subscripts, *mats) * W)

  datas = [A.data for A in ops]
  val, grads = make(caps)(datas, ops)
  want_val, want_grads = jax.value_and_grad(dense_loss)(datas)
  np.testing.assert_allclose(val, want_val, rtol=1e-12)
  for g, w in zip(grads, want_grads):
    util.assert_allclose(g, w, F64)
  assert make_plan(spec_of(subscripts, *ops, **caps)).expands
  with util.use_lowering("portable"):      # work bounds the portable join
    val, grads = make(dict(caps, work=work - 1))(datas, ops)
  spec = spec_of(subscripts, *ops, **caps)
  if einsum_portable.csr_equivalent(spec) is None:    # (a 2-D sparse product other than
    assert np.isnan(val)                               # CSR x CSR runs without work)
  for g in grads:
    assert np.isnan(np.asarray(g)).all()
  # kernels join in loops, with no buffer that work bounds: exact, or poisoned where a
  # portable join ran
  _, grads = make(dict(caps, work=work - 1))(datas, ops)
  for g, w in zip(grads, want_grads):
    if not np.isnan(np.asarray(g)).any():
      util.assert_allclose(g, w, F64)
