"""Sparse x sparse einsums that were fallbacks: joins, conversions, derivatives without work.

* **Joins** (``KernelPlan.joins``): a sparse source that is not merged with the driver
  is joined inside its loops — levels whose index is bound are located, the rest
  iterated (``out[i,k] += A[i,j] B[j,k]`` into a dense result, ``A^T B``), or
  intersected with an earlier joined loop (the sampled product ``sum_j A[i,j] B[j,k]``
  at ``C``'s entries: the derivatives of a sparse product).
* **Conversions** (``einsum_kernel.converted``): COO mixed with other levels, unordered
  COO with duplicates, other mode orderings (``ij,ji->i``), a joined level that cannot
  be located: the operands are converted first, then the kernel runs.
* **Batched products** of non-CSR formats: the batched CSR product between conversions.
* **Derivatives of an nse=-sized product**, and 2-D products into a dense result, need no
  ``work=`` under ``jit``, in either lowering (``einsum_portable.sampled_product`` and
  ``dense_product``).

Each case runs under ``jit`` with the kernel lowering (the recorded decision is
``"kernel"``) and the portable one, against float64 numpy, every sparse operand stored
with padding (``nse`` above its stored count).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jscorch as js
from jscorch.primitives import einsum_kernel
from jscorch.primitives import loopnest as ir
from jscorch.primitives.interpret import interpret

import util

F64 = np.float64
TOL = dict(rtol=1e-12, atol=1e-12)
lowering = util.use_lowering


def unordered_coo(rng, shape, n, *, duplicates=2, padding=2):
  """An unordered COO with ``duplicates`` repeated coordinates and ``padding`` entries;
  and the float64 array it stores (duplicates summed)."""
  idx, vals, x = util.random_coo(rng, shape, n, duplicates=duplicates, dtype=F64)
  nse = n + padding
  crds = [np.full(nse, s, np.int32) for s in shape]
  for d, crd in enumerate(crds):
    crd[:n] = idx[:, d]
  data = np.zeros(nse, F64)
  data[:n] = vals
  A = js.SparseArray.from_buffers(jnp.asarray(data), [jnp.asarray(np.array([0, n], np.int32))]
                                  + [jnp.asarray(c) for c in crds], shape=shape,
                                  format=util.UNORDERED_COO)
  return A, x


def operand(spec, rng):
  """``(operand, float64 array)`` for ``spec``: a format name (with padding), "ucoo", or
  ``("dense", shape)``."""
  kind, shape = spec
  if kind == "dense":
    x = util.random_values(rng, shape, F64)
    return jnp.asarray(x), x
  if kind == "ucoo":
    return unordered_coo(rng, shape, 8)
  n_batch = 1 if len(shape) == 3 else 0
  A, x = util.random_sparse(rng, shape, kind, n_batch=n_batch, density=0.5, dtype=F64)
  assert A.nse > util.stored_count(x, n_batch)          # padding present
  return A, x


A45, B56, A46 = (4, 5), (5, 6), (4, 6)
DENSE = dict(out_format="dense", work=64)
# name: (subscripts, operands, kwargs)
CASES = {
    # joins: a located level, then an iterated one
    "spgemm_dense_csr": ("ij,jk->ik", [("csr", A45), ("csr", B56)], DENSE),
    "spgemm_dense_csc": ("ij,jk->ik", [("csc", A45), ("csc", B56)], DENSE),
    "spgemm_dense_coo_csr": ("ij,jk->ik", [("coo", A45), ("csr", B56)], DENSE),
    "atb_csr": ("ij,ik->jk", [("csr", A45), ("csr", A46)], DENSE),
    "spgemm_dense_batched": ("bij,bjk->bik", [("csr", (2, 4, 5)), ("csr", (2, 5, 6))],
                             dict(out_format="dense", work=128)),
    "outer_coo_coo": ("i,j->ij", [("coo", (4,)), ("coo", (5,))], DENSE),
    "chain_with_dense": ("ij,jk,kr->ir", [("csr", A45), ("csr", B56), ("dense", (6, 3))],
                         dict(work=64)),
    # conversions, then a join or a merge
    "spgemm_dense_csr_dcsr": ("ij,jk->ik", [("csr", A45), ("dcsr", B56)], DENSE),
    "spgemm_dense_csr_ucoo": ("ij,jk->ik", [("csr", A45), ("ucoo", B56)], DENSE),
    "inner_csr_dcsr": ("ij,ij->", [("csr", A45), ("dcsr", A45)], dict(work=64)),
    "rows_csr_ucoo": ("ij,ij->i", [("csr", A45), ("ucoo", A45)], DENSE),
    "trace_csr_csr": ("ij,ji->i", [("csr", A45), ("csr", (5, 4))], dict(work=64)),
    "triangle": ("ij,jk,ki->", [("csr", A45), ("csr", B56), ("dcsr", (6, 4))],
                 dict(work=512)),
    "mul_csr_coo": ("ij,ij->ij", [("csr", A45), ("coo", A45)], {}),
    "mul_coo_csr": ("ij,ij->ij", [("coo", A45), ("csr", A45)], {}),
    # batched products of other formats: the batched CSR product between conversions
    "spgemm_batched_coo": ("bij,bjk->bik", [("coo", (2, 4, 5)), ("coo", (2, 5, 6))],
                           dict(nse=24)),
    "spgemm_batched_dcsr_csc": ("bij,bjk->bik", [("dcsr", (2, 4, 5)), ("csc", (2, 5, 6))],
                                dict(nse=24, out_format="coo")),
}


def run(subscripts, ops, mode, **kw):
  with lowering(mode):
    einsum_kernel.last_decisions.clear()
    fun = jax.jit(lambda *o: js.einsum(subscripts, *o, **kw))
    hlo = fun.lower(*ops).as_text()
    out = fun(*ops)
    decisions = [d for _, d in einsum_kernel.last_decisions]
  return out, hlo, decisions


def dense_of(out):
  return np.asarray(out.todense() if isinstance(out, js.SparseArray) else out, F64)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_path_and_values(name):
  subscripts, specs, kw = CASES[name]
  rng = np.random.default_rng(len(name))
  with util.dtype_context(F64):
    ops, refs = zip(*[operand(s, rng) for s in specs])
    got, hlo, decisions = run(subscripts, ops, "auto", **kw)
    assert decisions == ["kernel"], decisions
    assert "custom_call @jscorch_k_" in hlo or "custom_call @jscorch_spgemm_" in hlo
    port, _, port_decisions = run(subscripts, ops, "portable", **kw)
    assert set(port_decisions) == {"portable"}
    want = np.einsum(subscripts, *refs)
    np.testing.assert_allclose(dense_of(got), want, err_msg="kernel vs numpy", **TOL)
    np.testing.assert_allclose(dense_of(port), want, err_msg="portable vs numpy", **TOL)


def _plan(subscripts, *ops, **kw):
  """The planned kernel of the (one) einsum of ``subscripts`` and the flat inputs."""
  with lowering("auto"):
    einsum_kernel.last_decisions.clear()
    jax.jit(lambda *o: js.einsum(subscripts, *o, **kw)).lower(*ops)
    spec, decision = einsum_kernel.last_decisions[-1]
  assert decision == "kernel"
  flat = []
  for o in ops:
    flat += [np.asarray(o.data)] + [np.asarray(b) for b in o.indices] \
        if isinstance(o, js.SparseArray) else [np.asarray(o)]
  kernel, reason = einsum_kernel.kernel_plan(spec, flat, F64)
  assert reason == "kernel"
  return kernel, flat


def test_join_ir_and_interpreter():
  """``ij,jk->ik`` (dense result): ``B``'s row is located at ``j`` (``Locate``), then
  iterated; units over ``i`` own their output rows (parallel). ``ij,ik->jk`` joins the
  same way but its units share outputs (serial). The interpreter agrees with numpy."""
  rng = np.random.default_rng(3)
  with util.dtype_context(F64):
    (A, a), (B, b), (C, c) = (operand(("csr", s), rng) for s in (A45, B56, A46))
    for subscripts, ops, refs, parallel in (("ij,jk->ik", (A, B), (a, b), ir.Parallel.OUTER),
                                            ("ij,ik->jk", (A, C), (a, c), ir.Parallel.NONE)):
      kernel, flat = _plan(subscripts, *ops, **DENSE)
      stmts = list(ir.walk(kernel.body))
      assert any(isinstance(s, ir.Locate) and s.src == 1 and s.level == 0 for s in stmts)
      assert len(ir.loops(kernel.body)) == 4 and kernel.body.parallel is parallel
      want = np.einsum(subscripts, *refs)
      np.testing.assert_allclose(interpret(kernel, flat).reshape(want.shape), want, **TOL)


def test_sampled_product_ir_and_interpreter():
  """The tangent of a sparse product, ``sum_j A[i,j] B[j,k]`` at ``C``'s entries: ``C``
  drives, ``A``'s row ``i`` and ``B^T``'s row ``k`` (``B`` converted to CSC) are located
  and intersected over ``j``."""
  rng = np.random.default_rng(4)
  with util.dtype_context(F64):
    (A, a), (B, b) = operand(("csr", A45), rng), operand(("csr", B56), rng)
    with lowering("auto"):
      einsum_kernel.last_decisions.clear()
      jax.jit(lambda t: jax.jvp(lambda d: js.einsum("ij,jk->ik", A.with_data(d), B,
                                                    nse=24).data, (A.data,), (t,))[1]
              ).lower(A.data)
    specs = [s for s, d in einsum_kernel.last_decisions if d == "kernel"]
    sampled = [s for s in specs if s.out_kind == "sampled"]
    assert len(sampled) == 1
    spec = sampled[0]
    assert spec.operands[1].layout.format == js.CSC          # converted to be located
    C = js.einsum("ij,jk->ik", A, B, nse=24)
    Bt = B.asformat(js.CSC)
    flat = [np.asarray(A.data)] + [np.asarray(x) for x in A.indices] + \
        [np.asarray(Bt.data)] + [np.asarray(x) for x in Bt.indices] + \
        [np.asarray(x) for x in C.indices]
    kernel, reason = einsum_kernel.kernel_plan(spec, flat, F64)
    assert reason == "kernel"
    assert any(isinstance(l.over, ir.Intersect) for l in ir.loops(kernel.body))
    assert kernel.body.parallel is ir.Parallel.OUTER
    got = interpret(kernel, flat)
    want = C.with_data(jnp.zeros_like(C.data))
    dense = np.einsum("ij,jk->ik", a, b)
    rows, cols = (np.asarray(x) for x in util.stored_coordinates(C).T)
    live = rows < 4
    np.testing.assert_allclose(got[:live.sum()], dense[rows[live], cols[live]], **TOL)
    assert want.nse == got.shape[0]


@pytest.mark.parametrize("fa,fb,mode", [
    ("csr", "csr", "auto"), ("dcsr", "coo", "auto"),
    pytest.param("csr", "csr", "portable", marks=pytest.mark.slow)],
    ids=["auto-csr_csr", "auto-dcsr_coo", "portable-csr_csr"])
def test_grads_of_a_product_sized_without_work(fa, fb, mode):
  """``jit(grad)`` and ``check_grads`` (order 2, fwd and rev) through an ``nse=``-sized
  sparse product, no ``work=``: its tangent and cotangents (sampled products) run kernels
  (``auto``) or the portable sampled product, against float64 dense autodiff."""
  rng = np.random.default_rng(5)
  with util.dtype_context(F64):
    (A, a), (B, b) = operand((fa, A45), rng), operand((fb, B56), rng)
    W = jnp.asarray(util.random_values(rng, A46, F64))

    def loss(ad, bd):
      C = js.einsum("ij,jk->ik", A.with_data(ad), B.with_data(bd), nse=24)
      return (C.todense() * W).sum()

    with lowering(mode):
      einsum_kernel.last_decisions.clear()
      ga, gb = jax.jit(jax.grad(loss, (0, 1)))(A.data, B.data)
      decisions = {d for _, d in einsum_kernel.last_decisions}
      assert decisions == ({"kernel"} if mode == "auto" else {"portable"}), decisions
      check_grads(jax.jit(loss), (A.data, B.data), order=2, modes=("fwd", "rev"))
    want = jax.grad(lambda x, y: (jnp.einsum("ij,jk->ik", x, y) * W).sum(), (0, 1))(a, b)
    np.testing.assert_allclose(dense_of(A.with_data(ga)), np.asarray(want[0]) * (a != 0),
                               **TOL)
    np.testing.assert_allclose(dense_of(B.with_data(gb)), np.asarray(want[1]) * (b != 0),
                               **TOL)


def test_grads_through_a_dense_result_join():
  """``check_grads`` through the joined kernel of ``ij,jk->ik`` into a dense result."""
  rng = np.random.default_rng(6)
  with util.dtype_context(F64):
    (A, _), (B, _) = operand(("csr", A45), rng), operand(("coo", B56), rng)
    f = jax.jit(lambda ad, bd: js.einsum("ij,jk->ik", A.with_data(ad), B.with_data(bd),
                                         **DENSE))
    with lowering("auto"):
      check_grads(f, (A.data, B.data), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("mode", ["auto", "portable"])
def test_vmap_grads_without_work(mode):
  """``jit(vmap(grad))`` of an ``nse=``-sized product, no ``work=``: over ``A``'s values
  (a shared pattern) and over ``A`` itself (batched patterns, ``B`` broadcast), against a
  loop of single gradients."""
  rng = np.random.default_rng(7)
  with util.dtype_context(F64):
    B, _ = operand(("csr", B56), rng)
    As, _ = operand(("csr", (2, 4, 5)), rng)
    W = jnp.asarray(util.random_values(rng, A46, F64))

    def loss(ad, A):
      return (js.einsum("ij,jk->ik", A.with_data(ad), B, nse=24).todense() * W).sum()

    grad = jax.grad(loss)
    A0 = util.element(As, 0)
    values = jnp.asarray(util.random_values(rng, (3,) + A0.data.shape, F64))
    with lowering(mode):
      over_values = jax.jit(jax.vmap(grad, in_axes=(0, None)))(values, A0)
      over_patterns = jax.jit(jax.vmap(grad))(As.data, As)
      for n in range(3):
        np.testing.assert_allclose(over_values[n], grad(values[n], A0), **TOL)
      for n in range(2):
        An = util.element(As, n)
        np.testing.assert_allclose(over_patterns[n], grad(An.data, An), **TOL)


# name: (subscripts, operands, lowering): each case in one lowering, both covered
NO_WORK = {
    "csr_coo": ("ij,jk->ik", [("csr", A45), ("coo", B56)], "portable"),
    "atb_csr_dcsr": ("ij,ik->jk", [("csr", A45), ("dcsr", A46)], "auto"),
    "swapped_out": ("ij,jk->ki", [("csc", A45), ("csr", B56)], "portable"),
    "batched": ("bij,bjk->bik", [("csr", (2, 4, 5)), ("coo", (2, 5, 6))], "auto"),
}


@pytest.mark.parametrize("name", list(NO_WORK))
def test_dense_result_product_sized_without_work(name):
  """A 2-D product of two sparse operands into a dense result needs no ``work=`` under
  ``jit`` (``einsum_portable.dense_product`` in the portable lowering, the join kernel
  otherwise), against float64 numpy, with padding; and its gradients (order 2, fwd and
  rev) through the portable rule."""
  subscripts, specs, mode = NO_WORK[name]
  rng = np.random.default_rng(len(name))
  with util.dtype_context(F64):
    (A, a), (B, b) = [operand(s, rng) for s in specs]
    f = jax.jit(lambda ad, bd: js.einsum(subscripts, A.with_data(ad), B.with_data(bd),
                                         out_format="dense"))
    with lowering(mode):
      einsum_kernel.last_decisions.clear()
      got = f(A.data, B.data)
      assert {d for _, d in einsum_kernel.last_decisions} == \
          ({"kernel"} if mode == "auto" else {"portable"})
      np.testing.assert_allclose(np.asarray(got, F64), np.einsum(subscripts, a, b), **TOL)
      if name == "csr_coo":
        check_grads(f, (A.data, B.data), order=2, modes=("fwd", "rev"))


def test_three_operand_contraction_still_needs_work_under_jit():
  """The capacity rule comes from the spec alone: a chain of two sparse operands and a
  dense one joins in the portable lowering, so ``work=`` is required under ``jit``
  whatever the backend."""
  rng = np.random.default_rng(8)
  with util.dtype_context(F64):
    (A, _), (B, _), (X, _) = [operand(s, rng) for s in CASES["chain_with_dense"][1]]
    with pytest.raises(js.CapacityRequiredError, match=r"under jit pass work="):
      jax.jit(lambda A, B, X: js.einsum("ij,jk,kr->ir", A, B, X))(A, B, X)
