"""The union kernel (primitives/structure/union_kernel.py: the loop nest of union_loops.py,
printed by backends/c/assembly.py) against its portable rule and numpy.

Random cases over ops (add, subtract, maximum, minimum, concatenate), formats, shapes,
padding, batch and block dims and empty rows, sampled deterministically (one case per
row of :data:`CASES`, few compiles). Each case checks, for the ``jscorch_union_pattern``
primitive, that the generated kernel returns the portable rule's buffers bit for bit
(``dest`` and capacity overflow included), and for the public op, which lowering ran
and its values against a float64 numpy / scipy reference.
"""
from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jscorch as js
from jscorch.primitives import kernel_build, union
from jscorch.primitives import loopnest as ir
from jscorch.primitives.layout import Layout
from jscorch.primitives.structure import union_kernel as uk

import util

pytestmark = pytest.mark.skipif(kernel_build.compiler() is None, reason="no C compiler")

F32 = np.float32


def random_sparse(seed, shape, fmt, **kw):
  """A random float32 sparse array with padding (compiled from_dense; tests/util.py)."""
  return util.random_sparse_jit(seed, shape, fmt, dtype=kw.pop("dtype", F32), **kw)


@dataclasses.dataclass(frozen=True)
class Case:
  op: str
  formats: tuple            # one per part
  shape: tuple              # (*batch, *sparse, *block) of the first part
  n_batch: int = 0
  n_dense: int = 0
  density: float = 0.4
  padding: int = 3
  axis: int = 0             # concatenate
  expected: str = "kernel"  # or a key of uk.FALLBACKS

  @property
  def id(self):
    fmts = "+".join(f if isinstance(f, str) else "dcsc" for f in self.formats)
    return f"{self.op}-{fmts}-{'x'.join(map(str, self.shape))}-b{self.n_batch}d{self.n_dense}"


CASES = [
    Case("add", ("csr", "csr"), (6, 7)),
    Case("subtract", ("csc", "csc"), (5, 8), padding=1),
    Case("add", ("csr", "csr"), (9, 4), density=0.1, padding=5),       # mostly empty rows
    Case("maximum", ("csr", "csr"), (2, 4, 5), n_batch=1),
    Case("minimum", ("csr", "csr"), (5, 6, 3), n_dense=1),
    Case("add", ("csr", "csc"), (4, 5), expected="order"),
    Case("maximum", ("dcsr", "csr"), (4, 5), expected="format"),
    Case("add", ("coo", "coo"), (4, 5), expected="format"),
    Case("concatenate", ("csr", "csr", "csr"), (3, 5), axis=0),
    Case("concatenate", ("csr", "csr"), (4, 3), axis=1, density=0.6),
    Case("concatenate", ("csc", "csc"), (2, 3, 4), n_batch=1, axis=2),
]


def _parts(case: Case):
  arrays, dense = [], []
  for k, fmt in enumerate(case.formats):
    shape = list(case.shape)
    if case.op == "concatenate":
      shape[case.axis] += k          # parts of different sizes along the axis
    A, x = util.random_sparse_jit(100 * len(arrays) + len(case.id), tuple(shape), fmt,
                                  n_batch=case.n_batch, n_dense=case.n_dense,
                                  density=case.density, padding=case.padding + k, dtype=F32)
    arrays.append(A)
    dense.append(x.astype(np.float64))
  return arrays, dense


def _op(case: Case):
  if case.op == "concatenate":
    return lambda *xs: js.concatenate(xs, axis=case.axis)
  return getattr(js, case.op)


def _numpy(case: Case, dense):
  if case.op == "concatenate":
    return np.concatenate(dense, axis=case.axis)
  return getattr(np, case.op)(*dense)


def _bound(case: Case, arrays):
  jaxpr = jax.make_jaxpr(_op(case))(*arrays)
  found = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive in (uk.union_pattern_p, uk.union_sum_p):
        found.append((eqn, eqn.params))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  return found


def _bitwise(plan, flat, dest=True):
  """The kernel and the portable rule of ``plan`` agree bit for bit (``dest`` included
  unless ``dest=False``: the op's own plan, whose kernel is already built)."""
  plan = dataclasses.replace(plan, dest=dest)
  parts = uk._split(plan, flat)
  uk.last_decisions.clear()
  kernel = jax.jit(lambda p: uk.union_pattern(plan, p))(parts)
  assert [d for _, d in uk.last_decisions] == ["kernel"]
  portable = jax.jit(uk._portable(plan))(*[b.astype(plan.out.index_dtype) for b in flat])
  assert len(kernel) == len(portable)
  for k, (g, w) in enumerate(zip(kernel, portable)):
    assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"output {k}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_kernel_portable_numpy(case):
  arrays, dense = _parts(case)
  uk.last_decisions.clear()
  got = jax.jit(_op(case))(*arrays)
  decisions = {d for _, d in uk.last_decisions}
  assert decisions == {case.expected}, decisions
  util.assert_allclose(util.jit_todense(got), _numpy(case, dense), dtype=F32)
  if case.expected != "kernel":
    return
  bound = _bound(case, arrays)
  assert bound
  for eqn, params in bound[:1]:
    flat = [b for A in arrays for b in A.indices]
    if eqn.primitive is uk.union_sum_p:
      _bitwise_sum(params["plan"], flat, [A.data for A in arrays])
    else:
      _bitwise(params["plan"], flat, dest=False)


def _bitwise_sum(plan, flat, datas):
  """The fused sum kernel equals its composition (pattern + gathers + sum) bit for bit."""
  def run(flat, datas):
    return uk.union_sum_p.bind(*flat, *datas, plan=plan)
  uk.last_decisions.clear()
  kernel = jax.jit(run)(flat, datas)
  assert [d for _, d in uk.last_decisions] == ["kernel"]
  previous = js.config.lowering
  try:
    js.config.lowering = "portable"
    uk.last_decisions.clear()
    portable = jax.jit(lambda f, d: run(f, d))(flat, datas)
    assert [d for _, d in uk.last_decisions] == ["portable"]
  finally:
    js.config.lowering = previous
  for k, (g, w) in enumerate(zip(kernel, portable)):
    assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"output {k}")


def test_scipy_reference_large_parallel():
  """Rows with thousands of entries in total: the parallel passes (work split over threads)."""
  A = sp.random(700, 900, density=0.03, random_state=1, format="csr", dtype=F32)
  B = sp.random(700, 900, density=0.03, random_state=2, format="csr", dtype=F32)
  A.data += 0.5
  B.data -= 2.0
  a, b = js.from_scipy(A), js.from_scipy(B)
  uk.last_decisions.clear()
  add = jax.jit(lambda a, b: a + b)(a, b)
  assert [d for _, d in uk.last_decisions] == ["kernel"]
  util.assert_allclose(util.jit_todense(add), (A.astype(np.float64) + B).toarray(), dtype=F32)
  assert int(np.asarray(add.indices[0])[-1]) == (A + B).nnz
  plan = uk.UnionPlan(Layout(js.CSR, A.shape, a.nse + b.nse), (a.layout, b.layout),
                      (None, None), "add")
  _bitwise(plan, [*a.indices, *b.indices])


def test_overflow_bitwise_and_poisoned():
  """A capacity below the union size: buffers still equal the portable ones (dest past nse)."""
  A, _ = random_sparse(3, (5, 6), "csr", density=0.5, padding=2)
  B, _ = random_sparse(4, (5, 6), "csr", density=0.5, padding=0)
  n = union.union_size([(A.layout, A.indices), (B.layout, B.indices)])
  plan = uk.UnionPlan(Layout(js.CSR, (5, 6), n - 3), (A.layout, B.layout), (None, None), "add")
  _bitwise(plan, [*A.indices, *B.indices])
  C = jax.jit(lambda a, b: js.add(a, b, nse=n - 3))(A, B)
  assert np.isnan(np.asarray(C.data)).all()


def test_empty_and_all_padding_parts():
  """An operand that stores nothing (every position padding), three parts (the general
  merge), and a 0-row matrix into a capacity of 0."""
  A = util.jit_from_dense(np.zeros((4, 5), F32), nse=3)
  B, y = random_sparse(5, (4, 5), "csr", padding=2)
  plan = uk.UnionPlan(Layout(js.CSR, (4, 5), 4), (A.layout, B.layout, A.layout),
                      (None, None, None), "add")
  _bitwise(plan, [*A.indices, *B.indices, *A.indices])
  util.assert_allclose(util.jit_todense(jax.jit(js.add)(A, B)), y.astype(np.float64), dtype=F32)
  E = util.jit_from_dense(np.zeros((0, 5), F32), nse=2)
  plan = uk.UnionPlan(Layout(js.CSR, (0, 5), 0), (E.layout, E.layout), (None, None), "add")
  _bitwise(plan, [*E.indices, *E.indices])


@pytest.mark.parametrize("formats", [("dcsr", "dcsr"), ("coo", "dcsr"), ("csr", "csr")])
def test_an_operand_with_no_capacity(formats):
  """``nse=0`` (an all-zero array stored without padding) on either side of a union, eager,
  under jit and differentiated (a gather from its empty values raised JAX's "slice size
  ... out of range" for DCSR and mixed COO/DCSR)."""
  B, y = random_sparse(7, (4, 5), formats[0], padding=1)
  Z = js.from_dense(np.zeros((4, 5), F32), format=formats[1])
  assert Z.nse == 0
  want = y.astype(np.float64)
  for got in (js.add(B, Z), js.add(Z, B), jax.jit(js.subtract)(B, Z), js.maximum(Z, B) +
              js.minimum(B, Z)):
    util.assert_allclose(got.todense(), want, dtype=F32)
  g = jax.grad(lambda d: js.add(Z, B.with_data(d)).todense().sum())(B.data)
  np.testing.assert_array_equal(g[:int(B.nnz)], 1.0)


def test_int64_indices():
  with util.dtype_context(np.float64):
    A, x = random_sparse(6, (5, 4), "csr", dtype=np.float64)
    B, y = random_sparse(7, (5, 4), "csr", dtype=np.float64)
    plan = uk.UnionPlan(Layout(js.CSR, (5, 4), A.nse + B.nse), (A.layout, B.layout),
                        (None, None), "add")
    flat = [b.astype(jnp.int64) for b in (*A.indices, *B.indices)]
    uk.last_decisions.clear()
    jax.jit(lambda *f: uk.union_pattern_p.bind(*f, plan=plan))(*flat)    # bound directly
    assert [d for _, d in uk.last_decisions] == ["index dtype"]
    _bitwise(plan, flat)
    util.assert_allclose(util.jit_todense(jax.jit(js.subtract)(A, B)), x - y, dtype=np.float64)


def test_grad_vmap_eval_shape():
  A, x = random_sparse(8, (4, 6), "csr", padding=2)
  B, y = random_sparse(9, (4, 6), "csr", padding=1)

  def f(da, db):
    return (A.with_data(da) + B.with_data(db)).data

  uk.last_decisions.clear()
  util.check_grads_both(f, (A.data, B.data), atol=1e-2, rtol=1e-2)
  assert "kernel" in {d for _, d in uk.last_decisions}
  # vmap over values (one pattern) and over whole arrays (batched index buffers)
  scale = jnp.asarray([1.0, -2.0, 0.5], F32)
  many = jax.jit(jax.vmap(lambda s: (A + B.with_data(B.data * s)).todense()))(scale)
  for k, s in enumerate(np.asarray(scale)):
    util.assert_allclose(many[k], x.astype(np.float64) + s * y, dtype=F32)
  C, z = random_sparse(10, (3, 4, 6), "csr", n_batch=1, padding=2)
  uk.last_decisions.clear()
  mapped = jax.jit(jax.vmap(lambda c, b: js.maximum(c, b).todense(), in_axes=(0, None)))(C, B)
  assert "kernel" in {d for _, d in uk.last_decisions}
  for k in range(3):
    util.assert_allclose(mapped[k], np.maximum(z[k], y).astype(np.float64), dtype=F32)
  shape = jax.eval_shape(lambda a, b: a + b, A, B)
  assert shape.shape == (4, 6) and shape.nse == A.nse + B.nse


def test_portable_setting_and_missing_compiler(monkeypatch):
  A, x = random_sparse(12, (3, 7), "csr", padding=1)
  B, y = random_sparse(13, (3, 7), "csr", padding=2)
  previous = js.config.lowering
  try:
    js.config.lowering = "portable"
    uk.last_decisions.clear()
    got = util.jit_todense(jax.jit(js.add)(A, B))
    util.assert_allclose(got, x.astype(np.float64) + y, dtype=F32)
    assert [d for _, d in uk.last_decisions] == ["portable"]
  finally:
    js.config.lowering = previous
  monkeypatch.setattr(kernel_build, "compiler", lambda: None)
  A, x = random_sparse(15, (2, 9), "csr", padding=1)     # shapes of this test only: no
  B, y = random_sparse(16, (2, 9), "csr", padding=2)     # cached lowering of them exists
  uk.last_decisions.clear()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", js.SparseEfficiencyWarning)
    got = jax.jit(js.subtract)(A, B)
  assert [d for _, d in uk.last_decisions] == ["no compiler"]
  util.assert_allclose(util.jit_todense(got), x.astype(np.float64) - y, dtype=F32)


def test_kernel_loop_nest_source_and_fallback_reasons():
  """The kernel is a loop nest of the IR (two passes over rows, each a union of the parts'
  segments), printed; its name hashes the nest, which holds no size."""
  A, _ = random_sparse(14, (3, 4), "csr")
  plan = uk.UnionPlan(Layout(js.CSR, (3, 4), 8), (A.layout,) * 3, (None, (0, 0), None), "add")
  kernel = uk.lower(plan, np.int32)
  name, source = uk.generate(plan, np.int32)
  assert name == kernel.name and f"XLA_FFI_Error* {name}(" in source
  assert "3 parts" in source
  passes = [s for s in kernel.body if isinstance(s, ir.Loop)]
  assert [p.parallel for p in passes] == [ir.Parallel.OUTER] * 2
  unions = [p.body[0].over for p in passes]
  assert all(isinstance(u, ir.Union) and len(u.parts) == 3 for u in unions)
  assert isinstance(passes[0].body[0].body[0], ir.Count)
  assert [type(s) for s in passes[1].body[0].body] == [ir.Append] + [ir.Link] * 3
  other = uk.UnionPlan(Layout(js.CSR, (9, 2), 5), (Layout(js.CSR, (9, 2), 4),) * 3,
                       (None,) * 3, "maximum")
  assert uk.lower(other, np.int32) == kernel
  assert uk.kernel_reason(plan) == "kernel"
  assert uk.kernel_reason(dataclasses.replace(plan, parts=(A.layout,))) == "parts"
  for reason in ("format", "order", "parts", "no compiler"):
    assert reason in uk.FALLBACKS


def test_one_build_serves_every_shape(monkeypatch):
  """Sizes, capacities and offsets are read at run time: once a variant (parts, dtypes) is
  built, new shapes, capacities and concatenation offsets run it without building again."""
  builds = []
  real = kernel_build.build
  monkeypatch.setattr(kernel_build, "build",
                      lambda *args, **kw: builds.append(1) or real(*args, **kw))
  add = jax.jit(js.add)
  A, x = random_sparse(20, (5, 9), "csr", padding=2)
  B, y = random_sparse(21, (5, 9), "csr", padding=1)
  add(A, B)                                # builds the variant unless an earlier test did
  first = len(builds)
  uk.last_decisions.clear()
  C, z = random_sparse(22, (13, 4), "csr", padding=4, density=0.6)
  D, w = random_sparse(23, (13, 4), "csr", padding=0, density=0.2)
  util.assert_allclose(util.jit_todense(add(C, D)), z.astype(np.float64) + w, dtype=F32)
  util.assert_allclose(util.jit_todense(jax.jit(lambda c, d: js.add(c, d, nse=40))(C, D)),
                       z.astype(np.float64) + w, dtype=F32)
  E, e = random_sparse(24, (5, 3), "csr")
  cat = jax.jit(lambda a, e: js.concatenate([a, e], axis=1))(A, E)      # a column offset
  util.assert_allclose(util.jit_todense(cat), np.concatenate([x, e], 1).astype(np.float64),
                       dtype=F32)
  assert [d for _, d in uk.last_decisions] == ["kernel"] * 3
  assert len(builds) == first, "a new shape built a new kernel"
  plans = [p for p, _ in uk.last_decisions]
  assert len({uk.generate(p, np.int32)[0] for p in plans}) == 1


def test_many_columns_two_parts():
  """Two parts with more columns than the bitmap count takes: the merge count (run-time
  choice), against scipy and the portable rule."""
  n = uk.BITMAP_COLS + 5
  A = sp.random(3, n, density=4e-6, random_state=3, format="csr", dtype=F32)
  B = sp.random(3, n, density=4e-6, random_state=4, format="csr", dtype=F32)
  B = B + sp.csr_matrix((np.ones(2, F32), ([0, 2], [n - 1, 7])), shape=(3, n))
  a, b = js.from_scipy(A), js.from_scipy(B)
  uk.last_decisions.clear()
  got = jax.jit(js.add)(a, b)
  assert [d for _, d in uk.last_decisions] == ["kernel"]
  assert abs(got.to_scipy() - (A.astype(np.float64) + B)).max() < 1e-6
  plan = uk.UnionPlan(Layout(js.CSR, A.shape, a.nse + b.nse), (a.layout, b.layout),
                      (None, None), "add")
  _bitwise(plan, [*a.indices, *b.indices])


def test_extremum_builds_one_pattern():
  """``maximum`` / ``minimum`` / ``union_values`` compute the union pattern once."""
  A, x = random_sparse(30, (4, 7), "csr", padding=2)
  B, y = random_sparse(31, (4, 7), "csr", padding=1)
  case = Case("maximum", ("csr", "csr"), (4, 7))
  assert len(_bound(case, [A, B])) == 1
  assert len(_bound(dataclasses.replace(case, op="minimum"), [A, B])) == 1
  U, a, b = jax.jit(js.ops.elementwise.union_values)(A, B)
  dense = util.jit_todense
  util.assert_allclose(dense(U.with_data(a)), x.astype(np.float64), dtype=F32)
  util.assert_allclose(dense(U.with_data(b)), y.astype(np.float64), dtype=F32)


@pytest.mark.parametrize("lowering", ["c", "portable"])
def test_parts_with_duplicates(lowering):
  """A part that stores a coordinate more than once (unordered COO) contributes the sum of
  its duplicates at that leaf, in add / maximum and concatenate, eagerly and under ``jit``
  (a gather of one source per leaf would keep one of them)."""
  idx, vals, dense = util.random_coo(21, (2, 5, 6), 12, n_batch=1, duplicates=4)
  A = util.jit_from_coo(idx, vals, shape=(2, 5, 6), format=util.UNORDERED_COO, nse=15)
  assert not A.format.unique
  B, y = random_sparse(22, (2, 5, 6), "coo", n_batch=1, padding=2)
  previous = js.config.lowering
  js.config.lowering = lowering
  try:
    for run in (lambda f, *a: f(*a), lambda f, *a: jax.jit(f)(*a)):
      util.assert_allclose(util.jit_todense(run(js.add, A, B)), dense + y, dtype=F32)
      util.assert_allclose(util.jit_todense(run(js.maximum, A, B)), np.maximum(dense, y),
                           dtype=F32)
      util.assert_allclose(util.jit_todense(run(lambda a, b: js.concatenate([a, b], axis=1),
                                                A, B)),
                           np.concatenate([dense, y], axis=1), dtype=F32)
    util.check_grads_both(lambda da: (A.with_data(da) + B).data, (A.data,), atol=1e-2,
                          rtol=1e-2)
  finally:
    js.config.lowering = previous
  out = Layout(union.canonical_format(A.format), A.shape, A.nse + B.nse)
  plan = uk.UnionPlan(out, (A.layout, B.layout), (None, None), "add")
  with pytest.raises(ValueError, match="union_sum: got a part of a non-unique format"):
    uk.union_sum(plan, (A.indices, B.indices), (A.data, B.data))


def test_jvp_through_traced_index_buffers():
  """Forward and reverse derivatives of the fused sum (and of maximum's pattern) when the
  index buffers are traced too: the pattern has zero tangents, the values the gathers'."""
  A, x = random_sparse(23, (4, 6), "csr", padding=2)
  B, y = random_sparse(24, (4, 6), "csr", padding=1)
  pos, crd = (np.asarray(b) for b in A.indices)
  nnz = int(pos[-1])
  rows, cols = np.repeat(np.arange(4), np.diff(pos)), crd[:nnz]
  for op, ref, slope in ((js.add, x + y, lambda t, u: t + u),
                         (js.maximum, np.maximum(x, y), lambda t, u: np.where(x > y, t, u))):
    @jax.jit
    def tangent(a, b, da, db, op=op):
      return jax.jvp(lambda u, v: op(a.with_data(u), b.with_data(v)).todense(),
                     (a.data, b.data), (da, db))

    out, dout = tangent(A, B, A.data, 2 * B.data)
    util.assert_allclose(out, ref, dtype=F32)
    util.assert_allclose(dout, slope(x, 2 * y), dtype=F32)
    grad = jax.jit(jax.grad(lambda u, a, b, op=op: jnp.sum(op(a.with_data(u), b).todense() ** 2)))
    g = np.asarray(grad(A.data, A, B))
    want = np.zeros(A.nse)
    want[:nnz] = (2 * ref * slope(np.ones_like(x), np.zeros_like(y)))[rows, cols]
    util.assert_allclose(g, want, dtype=F32)
