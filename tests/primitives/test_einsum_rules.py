"""Tests of the rules of the ``jscorch_einsum`` primitive (primitives/einsum.py).

Abstract evaluation, JVP, transpose and batching are checked in two ways: by the
einsums they bind (read back from the jaxpr: a tangent is a sum of einsums with
one operand replaced, a transpose w.r.t. a sparse operand is *sampled at its
pattern*, a batched sparse operand gains a batch or block dimension) and by their
values against float64 dense references.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.interpreters import ad

import jscorch as js
from jscorch.primitives import einsum_kernel
from jscorch.primitives.einsum import einsum_bind, einsum_p
from jscorch.primitives.einsum_spec import (DENSE_OUT, PATTERN, SAMPLED_OUT, SPARSE_OUT,
                                            EinsumSpec, Operand, with_shared_patterns)
from jscorch.primitives.layout import Layout

import util

F64 = np.float64
I, J, K = 0, 1, 2
A45 = (4, 5)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def spmm_spec(A) -> EinsumSpec:
  """``ij,jk->ik`` with sparse A `[4, 5]` and dense X `[5, 3]`."""
  return EinsumSpec((Operand((I, J), A.layout), Operand((J, K))), out=(I, K),
                    sizes=((I, 4), (J, 5), (K, 3)))


def sddmm_spec(A) -> EinsumSpec:
  """``ij,ik,jk->ij`` sampled at A's pattern (its index buffers are passed again)."""
  return EinsumSpec((Operand((I, J), A.layout), Operand((I, K)), Operand((J, K))),
                    out=(I, J), sizes=((I, 4), (J, 5), (K, 3)), out_kind=SAMPLED_OUT,
                    out_layout=A.layout)


def spgemm_spec(A, B, nse, work) -> EinsumSpec:
  out = Layout(js.CSR, (4, 6), nse)
  return EinsumSpec((Operand((I, J), A.layout), Operand((J, K), B.layout)), out=(I, K),
                    sizes=((I, 4), (J, 5), (K, 6)), out_kind=SPARSE_OUT, out_layout=out,
                    work=work)


@pytest.fixture
def data():
  rng = np.random.default_rng(0)
  A, a = util.random_sparse(rng, A45, "csr", dtype=F64)
  B, b = util.random_sparse(rng, (5, 6), "csr", dtype=F64)
  x = jnp.asarray(util.random_values(rng, (5, 3), F64))
  u = jnp.asarray(util.random_values(rng, (4, 3), F64))
  v = jnp.asarray(util.random_values(rng, (5, 3), F64))
  return dict(A=A, a=a, B=B, b=b, x=x, u=u, v=v, rng=rng)


def spmm(A, d, x):
  return einsum_bind(spmm_spec(A), d, *A.indices, x)[0]


def sddmm(A, d, u, v):
  return einsum_bind(sddmm_spec(A), d, *A.indices, u, v, *A.indices)[0]


# -- abstract evaluation ------------------------------------------------------------------------
def test_abstract_eval_dense_sampled_sparse(data):
  A, B, x, u, v = data["A"], data["B"], data["x"], data["u"], data["v"]
  out = jax.eval_shape(lambda d: spmm(A, d, x), A.data)
  assert (out.shape, out.dtype) == ((4, 3), F64)
  out = jax.eval_shape(lambda d: sddmm(A, d, u, v), A.data)
  assert (out.shape, out.dtype) == (A.data.shape, F64)
  spec = spgemm_spec(A, B, nse=9, work=50)
  outs = jax.eval_shape(lambda d, e: einsum_bind(spec, d, *A.indices, e, *B.indices),
                        A.data, B.data)
  assert [(o.shape, o.dtype) for o in outs] == [((9,), F64), ((5,), np.int32),
                                                  ((9,), np.int32)]


def test_primitive_values_against_numpy(data):
  A, a, x, u, v = data["A"], data["a"], data["x"], data["u"], data["v"]
  util.assert_allclose(spmm(A, A.data, x), a @ np.asarray(x), F64)
  got = A.with_data(sddmm(A, A.data, u, v)).todense()
  util.assert_allclose(got, a * (np.asarray(u) @ np.asarray(v).T), F64)


# -- JVP --------------------------------------------------------------------------------------------
def test_jvp_is_a_sum_of_einsums_with_one_operand_replaced(data):
  A, a, x, rng = data["A"], data["a"], data["x"], data["rng"]
  td = jnp.asarray(util.random_values(rng, A.data.shape, F64))
  tx = jnp.asarray(util.random_values(rng, x.shape, F64))
  f = lambda d, x: spmm(A, d, x)
  primal, tangent = jax.jvp(f, (A.data, x), (td, tx))
  eqns = util.einsum_eqns(lambda d, x, td, tx: jax.jvp(f, (d, x), (td, tx)), A.data, x, td, tx)
  assert len(eqns) == 3 and all(e.params["spec"] == spmm_spec(A) for e in eqns)
  want = A.with_data(td).todense() @ x + a @ tx
  util.assert_allclose(tangent, want, F64)
  util.assert_allclose(primal, a @ np.asarray(x), F64)


def test_jvp_skips_symbolic_zero_tangents(data):
  A, x = data["A"], data["x"]
  eqns = util.einsum_eqns(lambda d, td: jax.jvp(lambda d: spmm(A, d, x), (d,), (td,)), A.data,
                     A.data)
  assert len(eqns) == 2                  # the primal and one tangent term


def test_jvp_of_sparse_result_is_sampled_at_the_output_pattern(data):
  A, a, B, b = data["A"], data["a"], data["B"], data["b"]
  nnz = int(((np.abs(a) @ np.abs(b)) != 0).sum())
  spec = spgemm_spec(A, B, nse=nnz + 2, work=A.nse * B.nse)
  f = lambda d, e: einsum_bind(spec, d, *A.indices, e, *B.indices)
  td, te = A.data * 0.5 + 1.0, B.data - 2.0
  eqns = util.einsum_eqns(lambda d, e: jax.jvp(f, (d, e), (td, te)), A.data, B.data)
  primal = [e for e in eqns if e.params["spec"].out_kind == SPARSE_OUT]
  tangents = [e for e in eqns if e.params["spec"].out_kind == SAMPLED_OUT]
  assert len(primal) == 1 and len(tangents) == 2
  for e in tangents:
    assert e.params["spec"].out_layout == spec.out_layout
    # The pattern inputs of the tangent are the primal result's index buffers.
    assert list(e.invars[-2:]) == list(primal[0].outvars[1:])
  outs, touts = jax.jvp(f, (A.data, B.data), (td, te))
  assert len(touts) == 3
  assert all(t.dtype == jax.dtypes.float0 or not np.asarray(t).any() for t in touts[1:])
  C = js.SparseArray._make(outs[0], outs[1:], js.CSR, (4, 6))
  util.assert_allclose(C.todense(), a @ b, F64)
  want = A.with_data(td).todense() @ b + a @ B.with_data(te).todense()
  util.assert_allclose(C.with_data(touts[0]).todense(), want, F64)


# -- transpose ----------------------------------------------------------------------------------
def test_transpose_wrt_dense_operand(data):
  A, a, x, rng = data["A"], data["a"], data["x"], data["rng"]
  ct = jnp.asarray(util.random_values(rng, (4, 3), F64))
  _, vjp = jax.vjp(lambda x: spmm(A, A.data, x), x)
  (gx,) = vjp(ct)
  util.assert_allclose(gx, a.T @ np.asarray(ct), F64)
  specs = [e.params["spec"] for e in util.einsum_eqns(lambda c: vjp(c), ct)]
  assert len(specs) == 1
  (spec,) = specs
  assert spec.out_kind == DENSE_OUT and spec.out == (J, K)


def test_transpose_wrt_sparse_values_is_sampled_at_its_pattern(data):
  A, a, x, rng = data["A"], data["a"], data["x"], data["rng"]
  ct = jnp.asarray(util.random_values(rng, (4, 3), F64))
  _, vjp = jax.vjp(lambda d: spmm(A, d, x), A.data)
  (gd,) = vjp(ct)
  assert gd.shape == A.data.shape
  util.assert_allclose(A.with_data(gd).todense(), (np.asarray(ct) @ np.asarray(x).T) * (a != 0),
                       F64)
  (eqn,) = util.einsum_eqns(lambda c: vjp(c), ct)
  spec = eqn.params["spec"]
  assert spec.out_kind == SAMPLED_OUT and spec.out_layout == A.layout and spec.out == (I, J)
  assert all(not op.sparse for op in spec.operands)      # x and the cotangent, both dense


def test_transpose_of_sampled_output(data):
  """SDDMM's cotangent is itself a sparse operand (the output pattern) in the transposes."""
  A, a, u, v, rng = data["A"], data["a"], data["u"], data["v"], data["rng"]
  ct = jnp.asarray(util.random_values(rng, A.data.shape, F64))
  _, vjp = jax.vjp(lambda d, u, v: sddmm(A, d, u, v), A.data, u, v)
  gd, gu, gv = vjp(ct)
  C = np.asarray(A.with_data(ct).todense())
  un, vn = np.asarray(u), np.asarray(v)
  util.assert_allclose(A.with_data(gd).todense(), C * (un @ vn.T) * (a != 0), F64)
  util.assert_allclose(gu, (C * a) @ vn, F64)
  util.assert_allclose(gv, (C * a).T @ un, F64)
  specs = [e.params["spec"] for e in util.einsum_eqns(lambda c: vjp(c), ct)]
  assert sorted(s.out_kind for s in specs) == [DENSE_OUT, DENSE_OUT, SAMPLED_OUT]
  for s in specs:
    assert any(op.sparse and op.layout == A.layout for op in s.operands)


def test_transpose_broadcasts_dimensions_the_cotangent_lacks(data):
  """``ij,jk->i``: the gradient w.r.t. X does not depend on k (broadcast afterwards)."""
  A, a, x, rng = data["A"], data["a"], data["x"], data["rng"]
  w = util.random_values(rng, (4,), F64)
  g = jax.grad(lambda x: jnp.sum(js.einsum("ij,jk->i", A, x) * w))(x)
  want = np.broadcast_to((w @ a)[:, None], (5, 3))
  util.assert_allclose(g, want, F64)
  gv = jax.grad(lambda v: jnp.sum(js.einsum("ij,k->i", A, v) * w))(jnp.ones(7))
  util.assert_allclose(gv, np.full(7, w @ a.sum(1)), F64)


def test_transpose_wrt_index_buffers_is_an_error(data):
  A, x = data["A"], data["x"]
  spec = spmm_spec(A)
  rule = ad.primitive_transposes[einsum_p]
  idx = [ad.UndefinedPrimal(jax.typeof(i)) for i in A.indices]
  with pytest.raises(TypeError, match=r"cannot transpose with respect to integer index buffers"):
    rule([jnp.ones((4, 3))], A.data, *idx, x, spec=spec)


def test_transpose_of_zero_cotangent(data):
  A, x = data["A"], data["x"]
  rule = ad.primitive_transposes[einsum_p]
  zero = ad.Zero(jax.typeof(jnp.ones((4, 3), F64)))
  out = rule([zero], ad.UndefinedPrimal(jax.typeof(A.data)), *A.indices, x, spec=spmm_spec(A))
  assert out == [None] * (2 + len(A.indices))


# -- batching -------------------------------------------------------------------------------------
N = 3


def _stack_sparse(fmt, seed, shape=A45):
  rng = np.random.default_rng(seed)
  xs = np.stack([util.random_dense(rng, shape, density=0.4, dtype=F64) for _ in range(N)])
  return js.from_dense(xs, fmt, nse=util.stored_count(xs, 1) + 2, n_batch=1), xs


def test_batching_dense_operand_gains_an_index(data):
  A, a, rng = data["A"], data["a"], data["rng"]
  X = jnp.asarray(util.random_values(rng, (5, N, 3), F64))
  f = lambda x: spmm(A, A.data, x)
  got = jax.vmap(f, in_axes=1)(X)
  util.assert_allclose(got, np.einsum("ij,jnk->nik", a, X), F64)
  (eqn,) = util.einsum_eqns(jax.vmap(f, in_axes=1), X)
  spec = eqn.params["spec"]
  new = spec.fresh_index() - 1
  assert spec.operands[1].indices == (new, J, K) and spec.out == (new, I, K)
  assert spec.operands[0] == spmm_spec(A).operands[0]


def test_batching_values_only_gain_a_block_dimension(data):
  A, x, rng = data["A"], data["x"], data["rng"]
  D = jnp.asarray(util.random_values(rng, (N,) + A.data.shape, F64))
  f = lambda d: spmm(A, d, x)
  got = jax.vmap(f)(D)
  for n in range(N):
    util.assert_allclose(got[n], A.with_data(D[n]).todense() @ x, F64)
  (eqn,) = util.einsum_eqns(jax.vmap(f), D)
  op = eqn.params["spec"].operands[0]
  assert op.layout.n_dense == 1 and op.layout.n_batch == 0 and op.layout.shape == A45 + (N,)


def test_batching_patterns_gain_a_batch_dimension(data):
  x = data["x"]
  As, xs = _stack_sparse("csr", 1)
  f = lambda A: spmm(A, A.data, x)
  got = jax.vmap(f)(As)
  util.assert_allclose(got, np.einsum("nij,jk->nik", xs, x), F64)
  (eqn,) = util.einsum_eqns(jax.vmap(f), As)
  op = eqn.params["spec"].operands[0]
  assert op.layout.n_batch == 1 and op.layout.shape == (N,) + A45


def test_batching_index_buffers_only_broadcasts_values(data):
  """in_axes batching a pattern but not its values (the values are broadcast)."""
  x, rng = data["x"], data["rng"]
  As, xs = _stack_sparse("coo", 2)
  vals = jnp.asarray(util.random_values(rng, (As.nse,), F64))
  axes = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(As),
                                      [None] + [0] * len(As.indices))
  shared = js.SparseArray._make(vals, As.indices, As.format, As.shape)
  got = jax.vmap(lambda A: spmm(A, A.data, x), in_axes=(axes,))(shared)
  for n in range(N):
    want = util.element(As, n).with_data(vals).todense() @ x
    util.assert_allclose(got[n], want, F64)


def test_batching_sampled_output(data):
  A, a, u, v, rng = data["A"], data["a"], data["u"], data["v"], data["rng"]
  # Pattern shared, dense operand batched: the output gains a block dimension.
  U = jnp.asarray(util.random_values(rng, (N, 4, 3), F64))
  f = lambda u: sddmm(A, A.data, u, v)
  got = jax.vmap(f)(U)
  assert got.shape == (N,) + A.data.shape
  for n in range(N):
    util.assert_allclose(A.with_data(got[n]).todense(), a * (U[n] @ np.asarray(v).T), F64)
  (eqn,) = util.einsum_eqns(jax.vmap(f), U)
  assert eqn.params["spec"].out_layout.n_dense == 1
  # Pattern batched: the output gains a batch dimension (each element its own pattern).
  As, xs = _stack_sparse("dcsr", 3)
  g = lambda A: sddmm(A, A.data, u, v)
  got = jax.vmap(g)(As)
  for n in range(N):
    util.assert_allclose(util.element(As, n).with_data(got[n]).todense(),
                         xs[n] * (np.asarray(u) @ np.asarray(v).T), F64)
  (eqn,) = util.einsum_eqns(jax.vmap(g), As)
  assert eqn.params["spec"].out_layout.n_batch == 1


def test_batching_sparse_result(data):
  A, B, b = data["A"], data["B"], data["b"]
  As, xs = _stack_sparse("csr", 4)
  spec = lambda lay: spgemm_spec(A, B, nse=24, work=As.nse * B.nse).replace(
      operands=(Operand((I, J), lay), Operand((J, K), B.layout)))
  f = lambda A: einsum_bind(spec(A.layout), A.data, *A.indices, B.data, *B.indices)
  outs = jax.vmap(f)(As)
  C = js.SparseArray._make(outs[0], outs[1:], js.CSR.replace(n_batch=1), (N, 4, 6))
  util.assert_allclose(C.todense(), np.einsum("nij,jk->nik", xs, b), F64)
  (eqn,) = util.einsum_eqns(jax.vmap(f), As)
  assert eqn.params["spec"].out_layout.n_batch == 1


def test_rules_compose_second_order(data):
  """Forward over reverse through the rules: the Hessian-vector product of a quadratic."""
  A, a, x, rng = data["A"], data["a"], data["x"], data["rng"]
  loss = lambda d: jnp.sum(spmm(A, d, x) ** 2)
  dense_loss = lambda d: jnp.sum((A.with_data(d).todense() @ x) ** 2)
  t = jnp.asarray(util.random_values(rng, A.data.shape, F64))
  got = jax.jvp(jax.grad(loss), (A.data,), (t,))[1]
  want = jax.jvp(jax.grad(dense_loss), (A.data,), (t,))[1]
  util.assert_allclose(got, want, F64)


# -- shared patterns: facts recorded in the spec at bind time ----------------------------------
def test_shared_patterns_are_recorded_at_bind_and_kept_by_the_rules(data):
  """``same_pattern`` comes from buffer identity at bind time (never from values), and the
  transpose and batching rules carry it to the einsums they derive."""
  A, u, v, rng = data["A"], data["u"], data["v"], data["rng"]
  spec_of = lambda f, *args: [e.params["spec"] for e in util.einsum_eqns(f, *args)]
  (s,) = spec_of(lambda d: sddmm(A, d, u, v), A.data)
  assert s.same_pattern == ((PATTERN, 0),) and s.shares_pattern(0, PATTERN)
  copies = [jnp.array(i, copy=True) for i in A.indices]    # equal values, other buffers
  (s,) = spec_of(lambda d: einsum_bind(sddmm_spec(A), d, *A.indices, u, v, *copies)[0],
                 A.data)
  assert s.same_pattern == () and not s.shares_pattern(0, PATTERN)
  # transpose w.r.t. the sparse values: (u, v, cotangent at the pattern) -> sampled at A
  ct = jnp.asarray(util.random_values(rng, A.data.shape, F64))
  _, vjp = jax.vjp(lambda d: sddmm(A, d, u, v), A.data)
  (s,) = spec_of(lambda c: vjp(c), ct)
  assert s.out_kind == SAMPLED_OUT and s.same_pattern == ((PATTERN, 2),)
  # batching: a pattern batched for both the operand and the output stays shared...
  As, _ = _stack_sparse("csr", 5)
  (s,) = spec_of(jax.vmap(lambda A: sddmm(A, A.data, u, v)), As)
  assert s.out_layout.n_batch == 1 and s.same_pattern == ((PATTERN, 0),)
  # ... and so does one batched nowhere (values only)
  (s,) = spec_of(jax.vmap(lambda d: sddmm(A, d, u, v)), jnp.stack([A.data] * N))
  assert s.out_layout.n_dense == 1 and s.same_pattern == ((PATTERN, 0),)


def test_kernel_plan_reads_shared_patterns_from_the_spec(data):
  """The lowering is cacheable: grouping sources is the spec's decision, so the plan is the
  same whether the lowering-time inputs are the same objects or not."""
  A, u, v = data["A"], data["u"], data["v"]
  spec = with_shared_patterns(sddmm_spec(A), [A.data, *A.indices, u, v, *A.indices])
  flat = [A.data, *A.indices, u, v, *A.indices]
  distinct = [A.data, *A.indices, u, v, *[jnp.array(i, copy=True) for i in A.indices]]
  one, reason = einsum_kernel.kernel_plan(spec, flat, F64)
  assert reason == "kernel" and one == einsum_kernel.kernel_plan(spec, distinct, F64)[0]
  two, reason = einsum_kernel.kernel_plan(spec.replace(same_pattern=()), flat, F64)
  assert reason == "kernel" and two != one        # two co-iterated structures
