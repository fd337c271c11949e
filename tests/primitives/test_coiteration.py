"""COO co-iteration kernels: ordered COO sources with different patterns, merged over
whole coordinate tuples (``loopnest.TupleIntersect``).

Every source stores *duplicates* (an ordered, non-unique COO) and padding (random
non-zero garbage values after the used entries). Each case is lowered under ``jit``
with the kernel lowering and the portable one: the decision is ``"kernel"`` (one
``jscorch_k_`` call), and the kernel result equals the portable lowering and the
float64 numpy einsum of the dense arrays the sources store (every matching pair of
duplicates contributes, so the dense product of the summed arrays is the reference).
The IR interpreter runs the same plans on the host buffers and agrees; unordered COO
runs the kernel after a conversion to an ordered unique format.
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
# ordered COO that keeps duplicates (js.COO's last level is unique)
NU_COO = js.Format(js.compressed(unique=False), js.singleton(unique=False))
NU_COO3 = js.Format(js.compressed(unique=False), js.singleton(unique=False),
                    js.singleton(unique=False))


lowering = util.use_lowering


def ordered_coo(rng, shape, n, *, n_batch=0, duplicates=2, padding=2, format=NU_COO):
  """An ordered non-unique COO storing ``n`` entries per batch element, ``duplicates`` of
  them repeated coordinates, then ``padding`` garbage entries; and its dense float64 image."""
  idx, vals, x = util.random_coo(rng, shape, n, n_batch=n_batch, duplicates=duplicates,
                                 dtype=F64)
  batch, sparse = shape[:n_batch], shape[n_batch:]
  nse = n + padding
  crds = [np.full(batch + (nse,), s, np.int32) for s in sparse]
  data = util.random_values(rng, batch + (nse,), F64)        # garbage at the padding
  for b in np.ndindex(*batch):
    order = np.lexsort(idx[b].T[::-1])
    for d, crd in enumerate(crds):
      crd[b][:n] = idx[b][order, d]
    data[b][:n] = vals[b][order]
  pos = np.broadcast_to(np.array([0, n], np.int32), batch + (2,)).copy()
  A = js.SparseArray.from_buffers(jnp.asarray(data), [jnp.asarray(pos)] + [
      jnp.asarray(c) for c in crds], shape=shape,
      format=format.replace(n_batch=n_batch) if n_batch else format)
  stored = np.stack([c.reshape(-1, nse)[0, :n] for c in crds], -1)
  assert len(np.unique(stored, axis=0)) == n - duplicates      # duplicates kept
  return A, x


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


# (subscripts, shapes of the sources (None: a dense (5, 3) operand), n_batch, kwargs)
CASES = {
    "sampled": ("ij,ij->ij", [(4, 5), (4, 5)], 0, {}),
    "rows": ("ij,ij->i", [(4, 5), (4, 5)], 0, {"out_format": "dense"}),
    "all": ("ij,ij->", [(4, 5), (4, 5)], 0, {"out_format": "dense"}),
    "three": ("ij,ij,jk->ik", [(4, 5), (4, 5), None], 0, {}),
    "batched": ("bij,bij->bi", [(2, 4, 5), (2, 4, 5)], 1, {"out_format": "dense"}),
    "coo3": ("ijk,ijk->ik", [(3, 4, 5), (3, 4, 5)], 0, {"out_format": "dense"}),
    "unique": ("ij,ij->ij", [(4, 5), (4, 5)], 0, {}),        # js.COO, no duplicates
}


def build(name, seed):
  subscripts, shapes, n_batch, kw = CASES[name]
  rng = np.random.default_rng(seed)
  ops, refs = [], []
  for shape in shapes:
    if shape is None:
      x = util.random_values(rng, (5, 3), F64)
      ops.append(jnp.asarray(x))
      refs.append(x)
    else:
      fmt = NU_COO3 if len(shape) - n_batch == 3 else NU_COO
      A, x = ordered_coo(rng, shape, 12, n_batch=n_batch, duplicates=0 if name == "unique"
                         else 2, format=js.COO if name == "unique" else fmt)
      ops.append(A)
      refs.append(x)
  return subscripts, ops, refs, dict(kw, work=14 * 14)      # every pair may match


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_portable_and_numpy(name):
  with util.dtype_context(F64):
    subscripts, ops, refs, kw = build(name, seed=len(name))
    got, hlo, decisions = run(subscripts, ops, "kernel", **kw)
    assert decisions == ["kernel"], decisions
    assert hlo.count("custom_call @jscorch_k_") == 1
    port, _, port_decisions = run(subscripts, ops, "portable", **kw)
    assert port_decisions == ["portable"]
    want = np.einsum(subscripts, *refs)
    np.testing.assert_allclose(dense_of(got), want, err_msg="kernel vs numpy", **TOL)
    np.testing.assert_allclose(dense_of(port), want, err_msg="portable vs numpy", **TOL)
    if isinstance(got, js.SparseArray):      # the same values at the same (pattern) entries
      np.testing.assert_allclose(np.asarray(got.data), np.asarray(port.data), **TOL)


@pytest.mark.parametrize("name", ["rows", "three", "batched", "coo3"])
def test_interpreter_agrees(name):
  """The planned loop nest, run by the IR interpreter on the host buffers."""
  with util.dtype_context(F64):
    subscripts, ops, refs, kw = build(name, seed=len(name) + 1)
    _, _, decisions = run(subscripts, ops, "kernel", **kw)
    spec = einsum_kernel.last_decisions[-1][0]
    flat = []
    for o in ops:
      flat += [np.asarray(o.data)] + [np.asarray(b) for b in o.indices] \
          if isinstance(o, js.SparseArray) else [np.asarray(o)]
    kernel, reason = einsum_kernel.kernel_plan(spec, flat, F64)
    assert reason == "kernel" and any(isinstance(l.over, ir.TupleIntersect)
                                      for l in ir.loops(kernel.body))
    want = np.einsum(subscripts, *refs)
    np.testing.assert_allclose(interpret(kernel, flat).reshape(want.shape), want, **TOL)


def test_vmap_and_grads_through_the_kernel():
  """vmap over the values of both sources, and second-order gradients (fwd and rev)
  w.r.t. both sources' values and the dense factor, through the kernel lowering."""
  with util.dtype_context(F64):
    subscripts, (A, B, X), refs, kw = build("three", seed=7)
    f = lambda a, b, x: js.einsum(subscripts, A.with_data(a), B.with_data(b), x, **kw)
    with lowering("kernel"):
      check_grads(f, (A.data, B.data, X), order=2, modes=("fwd", "rev"))
      einsum_kernel.last_decisions.clear()
      rng = np.random.default_rng(8)
      a2 = jnp.asarray(util.random_values(rng, (3,) + A.data.shape, F64))
      got = jax.jit(jax.vmap(f, in_axes=(0, None, None)))(a2, B.data, X)
      assert "kernel" in [d for _, d in einsum_kernel.last_decisions]
    with lowering("portable"):
      want = jax.vmap(f, in_axes=(0, None, None))(a2, B.data, X)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def test_unordered_coo_is_converted_then_merged():
  """Unordered COO has no merge as stored ("co-iteration" for its own spec); the rule
  converts both sources to an ordered unique format (duplicates summed: exact, the einsum
  is linear in each) and runs the kernel of the converted spec."""
  with util.dtype_context(F64):
    rng = np.random.default_rng(9)
    A, a = ordered_coo(rng, (4, 5), 10, format=util.UNORDERED_COO)
    B, b = ordered_coo(rng, (4, 5), 10, format=util.UNORDERED_COO)
    got, hlo, decisions = run("ij,ij->i", [A, B], "auto", out_format="dense", work=144)
    assert decisions == ["kernel"] and hlo.count("custom_call @jscorch_k_") == 1
    spec = einsum_kernel.last_decisions[-1][0]
    assert all(op.layout.format.ordered and op.layout.format.unique for op in spec.operands)
    np.testing.assert_allclose(dense_of(got), np.einsum("ij,ij->i", a, b), **TOL)
