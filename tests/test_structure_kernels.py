"""The structure primitive (conversions and coalescing): generated kernel vs jnp rule vs numpy.

Random cases (op, source format, destination format, shape, padding, duplicates, batch and
block dims) are sampled deterministically from one seed; each compares

* the primitive's integer outputs (level buffers, slot map, count) from the generated
  kernel and from the portable rule, exactly;
* the public result (``asformat`` / ``from_coo`` / ``sum_duplicates`` / ``sort_indices``)
  against a float64 numpy reference, values and decoded coordinates, and its index
  buffers against the canonical ones built by numpy.

Then: values through a conversion under ``jit``, ``vmap`` (the batching rule, with padding
and different patterns per element), ``check_grads`` and ``eval_shape``, and the fallbacks
(``lowering="portable"``, no compiler, empty shapes).
"""
from __future__ import annotations

import math
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js
import util
from jscorch.primitives import kernel_build, settings
from jscorch.primitives import structure as st
from jscorch.primitives.layout import Layout
from jscorch.primitives.structure import kernel as structure_kernel
from jscorch.primitives.structure.portable import structure_portable

UNORDERED_COO = js.Format(js.compressed(ordered=False, unique=False),
                          js.singleton(ordered=False, unique=False))
FORMATS_2D = ["csr", "csc", "coo", "dcsr", "dcsc", UNORDERED_COO]
FORMATS_3D = ["coo", "csf", js.Format(js.dense, js.compressed, js.compressed)]


def _fmt(f, n_sparse):
  if isinstance(f, js.Format):
    return f
  if f == "dcsc":
    return js.Format(js.compressed, js.compressed, mode_ordering=(1, 0))
  return js.primitives.formats.resolve_format(f, n_sparse)


def _cases(n=14, seed=12):
  """Deterministic random cases: (op, src, dst, n_sparse, n_batch, n_dense, padding, dups)."""
  rng = np.random.default_rng(seed)
  ops = ["convert", "from_coo", "convert", "from_coo", "sum_duplicates", "sort_indices"]
  out = []
  for i in range(n):
    op = ops[i % len(ops)]
    n_sparse = 3 if i % 5 == 4 else 2
    pool = FORMATS_3D if n_sparse == 3 else FORMATS_2D
    src = pool[rng.integers(len(pool))]
    dst = pool[rng.integers(len(pool))]
    if op in ("sum_duplicates", "sort_indices"):
      src = UNORDERED_COO if n_sparse == 2 else js.Format(
          js.compressed(ordered=False, unique=False), js.singleton(ordered=False, unique=False),
          js.singleton(ordered=False, unique=False))
    n_batch = int(i % 4 == 1)
    n_dense = int(i % 7 == 3)
    padding = int(rng.integers(1, 5))
    dups = int(rng.integers(0, 3)) if op != "convert" else 0
    out.append((op, src, dst, n_sparse, n_batch, n_dense, padding, dups))
  return out


def _case_id(case):
  op, src, dst, n_sparse, nb, nd, pad, dups = case
  name = lambda f: f if isinstance(f, str) else ("coo_unordered" if f.n_sparse == 2 and  # noqa
                                                  not f.ordered else util.format_id(f))
  return f"{op}-{name(src)}-{name(dst)}-{n_sparse}d-b{nb}-k{nd}-pad{pad}-dup{dups}"


CASES = _cases()


def _canonical_coordinates(dense_mask, fmt, n_batch, n_sparse):
  """Sorted storage-order coordinates of the nonzeros of one batch element (numpy)."""
  logical = np.argwhere(dense_mask)
  storage = logical[:, list(fmt.mode_ordering)]
  order = np.lexsort(storage.T[::-1])
  return logical[order]


def _inputs(case, rng):
  """(SparseArray source or coordinates, dense float64 reference, capacity)."""
  op, src, dst, n_sparse, nb, nd, pad, dups = case
  shape = (2,) * nb + util.SPARSE_SHAPES[n_sparse] + (3,) * nd
  if op == "convert":
    A, x = util.random_sparse(rng, shape, _fmt(src, n_sparse), n_batch=nb, n_dense=nd,
                              padding=pad)
    return A, util.reference(x), A.nse
  n = 6 + dups
  idx, vals, dense = util.random_coo(rng, shape, n, n_batch=nb, n_dense=nd, duplicates=dups)
  # padding rows: out of range (and negative) coordinates, dropped by the conversion
  sizes = np.asarray(util.SPARSE_SHAPES[n_sparse])
  bad = np.broadcast_to(np.where(np.arange(n_sparse) == 0, -1, sizes), idx.shape[:-2] + (pad, n_sparse))
  bad = bad.copy()
  bad[..., ::2, :] = sizes + 3
  idx = np.concatenate([idx, bad.astype(idx.dtype)], axis=-2)
  pad_vals = util.random_values(rng, idx.shape[:-2] + (pad,) + (3,) * nd, np.float32)
  vals = np.concatenate([vals, pad_vals], axis=nb)
  return (idx, vals), dense, n + pad


def _run(case, A_or_coo, cap):
  op, src, dst, n_sparse, nb, nd, pad, dups = case
  if op == "convert":
    fmt = _fmt(dst, n_sparse)
    return jax.jit(lambda A: A.asformat(fmt, nse=cap))(A_or_coo)
  idx, vals = A_or_coo
  shape = (2,) * nb + util.SPARSE_SHAPES[n_sparse] + (3,) * nd
  if op == "from_coo":
    fmt = _fmt(dst, n_sparse)
    return jax.jit(lambda i, v: js.from_coo(i, v, shape, format=fmt, nse=cap, check=False))(
        idx, vals)
  A = js.from_coo(idx, vals, shape, format=_fmt(src, n_sparse), nse=cap, check=False)
  return jax.jit(js.sum_duplicates if op == "sum_duplicates" else js.sort_indices)(A)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_structure_cases(case):
  op = case[0]
  rng = np.random.default_rng(zlib.crc32(_case_id(case).encode()))
  inp, dense, cap = _inputs(case, rng)
  structure_kernel.last_decisions.clear()
  out = _run(case, inp, cap)
  decisions = [d for _, d in structure_kernel.last_decisions]
  if kernel_build.compiler() is not None:
    assert decisions and set(decisions) == {"kernel"}, decisions
  # values (duplicates summed) against float64 numpy
  util.assert_allclose(out.todense(), dense, out.dtype)
  # index buffers: the canonical pattern of the result's format, padding after it
  lay = out.layout
  nb = lay.n_batch
  for b in np.ndindex(*lay.batch_shape):
    el = util.element(out, b) if nb else out
    got = util.stored_coordinates(el)
    mask = dense[b] if nb else dense
    if lay.n_dense:
      mask = np.any(mask != 0, axis=tuple(range(-lay.n_dense, 0)))
    want = _canonical_coordinates(mask != 0, lay.format, 0, lay.n_sparse)
    if lay.format.unique and op != "sort_indices":
      np.testing.assert_array_equal(got, want)
    else:                                   # duplicates kept: the same set, sorted storage order
      assert {tuple(r) for r in got} == {tuple(r) for r in want}
      storage = got[:, list(lay.format.mode_ordering)]
      assert all(tuple(storage[k]) <= tuple(storage[k + 1]) for k in range(len(storage) - 1))
  # the primitive itself: kernel and portable rule agree exactly on every integer output
  _compare_rules(case, inp, out)


def _compare_rules(case, inp, out):
  op, src, dst, n_sparse, nb, nd, pad, dups = case
  lay = out.layout
  if op == "convert":
    A = inp
    plan = st.make_plan(lay, A.layout)
    args = [i.reshape((-1,) + i.shape[nb:]) for i in A.indices]
  else:
    idx, _ = inp
    storage = idx[..., list(lay.format.mode_ordering)] if op == "from_coo" else None
    if storage is None:
      return                                # (the front end builds these from coordinates too)
    sizes = np.asarray(lay.level_sizes)
    storage = np.where(np.any((storage < 0) | (storage >= sizes), -1, keepdims=True), sizes,
                       storage).astype(np.int32)
    plan = st.make_plan(lay, n=storage.shape[-2])
    args = [storage.reshape((-1,) + storage.shape[nb:])]
  kern = jax.jit(lambda *a: st.structure(plan, *a))(*args)
  port = jax.jit(lambda *a: structure_portable(plan, *a))(*args)
  assert len(kern) == len(port)
  for k, (g, w) in enumerate(zip(kern, port)):
    assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"output {k}")


@pytest.mark.parametrize("shape,n,fmt", [((3, 500), 300, "csr"), ((1 << 20, 3), 64, "csr"),
                                         ((1 << 21,), 40, "coo"), ((4, 6, 5), 90, "csf")],
                         ids=["long-rows", "radix-level", "radix-1d", "csf"])
def test_sort_paths_match_the_portable_rule(shape, n, fmt):
  """Buckets long enough for the merge sort, levels large enough for radix passes."""
  rng = np.random.default_rng(len(shape) * n)
  idx = rng.integers(-1, max(shape) + 1, (n, len(shape))).astype(np.int32)
  idx[: n // 4] = idx[n // 4: 2 * (n // 4)]                 # duplicates
  vals = util.random_values(rng, (n,), np.float32)
  A = jax.jit(lambda i, v: js.from_coo(i, v, shape, format=fmt, nse=n, check=False))(idx, vals)
  keep = np.all((idx >= 0) & (idx < np.asarray(shape)), 1)
  dense = {}
  for r, v in zip(map(tuple, idx[keep]), util.reference(vals[keep])):
    dense[r] = dense.get(r, 0.0) + v
  got = util.stored_coordinates(A)
  assert [tuple(r) for r in got] == sorted(dense)
  used = len(dense)
  util.assert_allclose(np.asarray(A.data)[:used], np.array([dense[k] for k in sorted(dense)]),
                       np.float32)
  lay = A.layout
  storage = np.where(keep[:, None], idx[:, list(lay.format.mode_ordering)],
                     np.asarray(lay.level_sizes)).astype(np.int32)
  plan = st.make_plan(lay, n=n)
  kern = jax.jit(lambda c: st.structure(plan, c))(storage[None])
  port = jax.jit(lambda c: structure_portable(plan, c))(storage[None])
  for k, (g, w) in enumerate(zip(kern, port)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"output {k}")


def test_parallel_transpose_matches_scipy_and_the_portable_rule():
  """CSR -> CSC with enough entries for the multi-threaded counting sort."""
  sp = pytest.importorskip("scipy.sparse")
  m = sp.random(300, 400, density=0.35, random_state=8, format="csr", dtype=np.float32)
  A = js.from_scipy(m, nse=m.nnz + 4)
  C = jax.jit(lambda A: A.asformat("csc"))(A)
  want = m.tocsc()
  np.testing.assert_array_equal(np.asarray(C.indices[0]), want.indptr)
  np.testing.assert_array_equal(np.asarray(C.indices[1])[:m.nnz], want.indices)
  np.testing.assert_array_equal(np.asarray(C.data)[:m.nnz], want.data)
  plan = st.make_plan(C.layout, A.layout)
  kern = jax.jit(lambda *i: st.structure(plan, *i))(*[i[None] for i in A.indices])
  port = jax.jit(lambda *i: structure_portable(plan, *i))(*[i[None] for i in A.indices])
  for k, (g, w) in enumerate(zip(kern, port)):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=f"output {k}")


def test_convert_matches_scipy_csr_to_csc():
  sp = pytest.importorskip("scipy.sparse")
  rng = np.random.default_rng(3)
  m = sp.random(9, 11, density=0.3, random_state=4, format="csr", dtype=np.float32)
  A = js.from_scipy(m, nse=m.nnz + 3)
  C = jax.jit(lambda A: A.asformat("csc"))(A)
  want = m.tocsc()
  np.testing.assert_array_equal(np.asarray(C.indices[0]), want.indptr)
  np.testing.assert_array_equal(np.asarray(C.indices[1])[:m.nnz], want.indices)
  np.testing.assert_array_equal(np.asarray(C.indices[1])[m.nnz:], 9)      # padding: the size
  np.testing.assert_array_equal(np.asarray(C.data)[:m.nnz], want.data)
  np.testing.assert_array_equal(np.asarray(C.data)[m.nnz:], 0)
  del rng


# -- order-preserving conversions ---------------------------------------------------------
def _full_rule(plan, args):
  """The general (sorting, gathering) portable rule of a passthrough plan: the reference."""
  import dataclasses
  full = dataclasses.replace(plan, passthrough=False)
  return jax.jit(lambda *a: structure_portable(full, *a))(*args)


@pytest.mark.parametrize("src,dst,n_batch", [("csr", "coo", 0), ("coo", "csr", 0),
                                             ("csr", "coo", 1), ("dcsr", "coo", 0)])
def test_order_preserving_conversions_move_nothing(src, dst, n_batch):
  """CSR -> COO, sorted unique COO -> CSR (...): the values are the input's (no gather in
  the program), the per-entry crd the source holds is reused, the rest matches the
  general rule buffer for buffer (padding included), in the kernel and the portable rule."""
  rng = np.random.default_rng(zlib.crc32(f"{src}{dst}{n_batch}".encode()))
  A, x = util.random_sparse(rng, (2,) * n_batch + (7, 9), _fmt(src, 2), n_batch=n_batch,
                            padding=3)
  dfmt = _fmt(dst, 2)
  plan = st.make_plan(Layout(dfmt.replace(n_batch=n_batch), A.shape, A.nse), A.layout)
  assert plan.passthrough
  conv = jax.jit(lambda A: A.asformat(dfmt))
  jaxpr = str(jax.make_jaxpr(lambda A: A.asformat(dfmt))(A))
  assert "gather" not in jaxpr and "scatter" not in jaxpr, jaxpr
  out = conv(A)
  util.assert_allclose(out.todense(), x, np.float32)
  np.testing.assert_array_equal(np.asarray(out.data), np.asarray(A.data))
  with _lowering("portable"):
    port = jax.jit(lambda A: A.asformat(dfmt))(A)
  # the general path (sort + gather) gives the same buffers, padding included
  want_data, want_indices = _general(A, dfmt)
  assert len(out.indices) == len(want_indices)
  for g, p, w in zip(out.indices, port.indices, want_indices):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(p), np.asarray(w))
  np.testing.assert_array_equal(np.asarray(out.data), np.asarray(want_data))
  # the primitive: kernel == portable rule == the general rule's buffers it replaces
  args = [i.reshape((-1,) + i.shape[n_batch:]) for i in A.indices]
  kern = jax.jit(lambda *a: st.structure(plan, *a))(*args)
  portable = jax.jit(lambda *a: structure_portable(plan, *a))(*args)
  for g, w in zip(kern, portable):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  full = _full_rule(plan, args)
  e = plan.entry_level
  lead = sum(len(lvl.buffers) for lvl in plan.dst.format.levels[:e])
  np.testing.assert_array_equal(np.asarray(kern[0]), np.asarray(full[lead]))
  computed = iter(kern[1:])
  for k in range(e, plan.n_levels):
    idx = lead + sum(len(lvl.buffers) for lvl in plan.dst.format.levels[e:k + 1]) - 1
    if k in plan.computed_levels:
      np.testing.assert_array_equal(np.asarray(next(computed)), np.asarray(full[idx]))


class _lowering:
  def __init__(self, choice):
    self.choice = choice

  def __enter__(self):
    self.before = settings.lowering
    settings.lowering = self.choice

  def __exit__(self, *exc):
    settings.lowering = self.before


def _general(A, fmt):
  """``(values, indices)`` of ``A`` in ``fmt`` by the general rule (sort, gather)."""
  import dataclasses

  from jscorch.primitives.structure import primitive as prim
  lay = Layout(fmt.replace(n_batch=A.layout.n_batch), A.shape, A.nse)
  full = dataclasses.replace(st.make_plan(lay, A.layout), passthrough=False)
  flat = [prim._flat_batch(i, A.layout.n_batch) for i in A.indices]
  outs = jax.jit(lambda *a: structure_portable(full, *a))(*flat)
  return prim._finish(lay, full, outs, A.data, "asformat", True)


@pytest.mark.parametrize("rows,cols,density", [(700, 900, 0.06), (3000, 40, 0.3)])
def test_order_preserving_paths_large_and_differentiable(rows, cols, density):
  """Enough entries for the threaded walk (kernel == portable rule == scipy): long rows,
  and short ones (about 12) written as fixed-width blocks whose
  tails the next rows overwrite; values pass through, so gradients are the identity's."""
  sp = pytest.importorskip("scipy.sparse")
  m = sp.random(rows, cols, density=density, random_state=3, format="csr", dtype=np.float32)
  A = js.from_scipy(m, nse=m.nnz + 5)
  coo = jax.jit(lambda A: A.asformat("coo"))(A)
  want = m.tocoo()
  np.testing.assert_array_equal(np.asarray(coo.indices[1])[:m.nnz], want.row)
  np.testing.assert_array_equal(np.asarray(coo.indices[1])[m.nnz:], rows)
  np.testing.assert_array_equal(np.asarray(coo.indices[2])[:m.nnz], want.col)
  back = jax.jit(lambda A: A.asformat("csr"))(coo)
  np.testing.assert_array_equal(np.asarray(back.indices[0]), m.indptr)
  for B, C in ((A, coo), (coo, back)):
    plan = st.make_plan(C.layout, B.layout)
    assert plan.passthrough
    args = [i[None] for i in B.indices]
    kern = jax.jit(lambda *a: st.structure(plan, *a))(*args)
    port = jax.jit(lambda *a: structure_portable(plan, *a))(*args)
    for g, w in zip(kern, port):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  if rows != 700:
    return
  with util.dtype_context(np.float64):
    S, _ = util.random_sparse(4, (5, 6), "csr", padding=2)
    S = S.with_data(S.data.astype(jnp.float64))
    g = lambda d: jnp.sum(jnp.sin(S.with_data(d).asformat("coo").asformat("csr").data) ** 2)  # noqa: E731
    jax.test_util.check_grads(g, (S.data,), order=2, modes=("fwd", "rev"))


# -- transformations of values through a conversion ---------------------------------------
@pytest.fixture(scope="module")
def csr_pair():
  A, x = util.random_sparse(7, (5, 6), "csr", padding=3)
  return A, x


def test_values_grad_jit_eval_shape(csr_pair):
  A, x = csr_pair
  ref = util.reference(x)

  def f(d):
    return A.with_data(d).asformat("csc").asformat("coo").todense()

  util.assert_allclose(jax.jit(f)(A.data), ref, np.float32)
  with util.dtype_context(np.float64):
    A64 = A.with_data(A.data.astype(jnp.float64))
    g = lambda d: jnp.sum(jnp.sin(A64.with_data(d).asformat("csc").data) ** 2)  # noqa: E731
    jax.test_util.check_grads(g, (A64.data,), order=2, modes=("fwd", "rev"))
  shaped = jax.eval_shape(lambda A: A.asformat("csc"), A)
  assert shaped.shape == A.shape and shaped.format == js.primitives.formats.resolve_format(
      "csc", 2)


def test_vmap_matches_a_loop():
  rng = np.random.default_rng(11)
  As = [util.random_sparse(rng, (4, 5), "csr", padding=2 + k % 2)[0] for k in range(3)]
  nse = max(A.nse for A in As)
  As = [A.asformat("csr", nse=nse) for A in As]
  stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *As)
  dcsc = _fmt("dcsc", 2)
  out = jax.jit(jax.vmap(lambda A: A.asformat(dcsc)))(stacked)
  for k, A in enumerate(As):
    want = A.asformat(dcsc)
    got = util.element(out, k)
    for g, w in zip(got.indices, want.indices):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(got.data), np.asarray(want.data))
  # in_axes=None for the values: one value vector for every pattern
  vals = jnp.arange(1.0, nse + 1.0)
  out = jax.vmap(lambda A, v: A.with_data(v).asformat("csc").todense(), in_axes=(0, None))(
      stacked, vals)
  for k, A in enumerate(As):
    np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(A.with_data(vals).todense()))


# -- lowering choices -----------------------------------------------------------------------
def test_portable_setting_and_missing_compiler(monkeypatch, csr_pair):
  A, x = csr_pair
  before = settings.lowering
  try:
    settings.lowering = "portable"
    structure_kernel.last_decisions.clear()
    P = jax.jit(lambda A: A.asformat("coo"))(A)
    assert [d for _, d in structure_kernel.last_decisions] == ["portable"]
  finally:
    settings.lowering = before
  monkeypatch.setattr(kernel_build, "compiler", lambda: None)
  monkeypatch.setattr(kernel_build, "_warned", [False])
  structure_kernel.last_decisions.clear()
  with pytest.warns(js.primitives.SparseEfficiencyWarning, match="no C compiler found"):
    N = jax.jit(lambda A: A.asformat("coo"))(A)
  assert [d for _, d in structure_kernel.last_decisions] == ["no compiler"]
  monkeypatch.undo()
  structure_kernel.last_decisions.clear()
  K = jax.jit(lambda A: A.asformat("coo"))(A)
  if kernel_build.compiler() is not None:
    assert [d for _, d in structure_kernel.last_decisions] == ["kernel"]
  for R in (N, K):
    for g, w in zip(R.indices, P.indices):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(R.data), np.asarray(P.data))


def test_empty_shapes_take_the_portable_rule():
  structure_kernel.last_decisions.clear()
  A = js.from_coo(np.zeros((0, 2), np.int32), np.zeros((0,), np.float32), (0, 4), format="csr",
                  nse=0)
  B = jax.jit(lambda A: A.asformat("csc"))(A)
  assert B.shape == (0, 4) and B.nse == 0
  assert {d for _, d in structure_kernel.last_decisions} <= {"empty", "portable", "no compiler"}


def test_capacity_overflow_is_reported():
  idx = np.array([[0, 0], [1, 1], [2, 2]], np.int32)
  with pytest.raises(js.primitives.SparseCapacityError, match="needs 3 stored entries"):
    js.from_coo(idx, np.ones(3, np.float32), (3, 3), format="csr", nse=2)
  out = jax.jit(lambda i: js.from_coo(i, jnp.ones(3), (3, 3), format="csr", nse=2,
                                      check=False))(idx)
  assert np.isnan(np.asarray(out.data)).all()


def test_generated_source_is_readable():
  plan = st.make_plan(Layout(js.primitives.formats.resolve_format("csc", 2), (4, 5), 6),
                      Layout(js.primitives.formats.resolve_format("csr", 2), (4, 5), 6))
  src = structure_kernel.generate(plan)
  assert "jscorch structure kernel" in src and "sort: destination levels (0,)" in src
  assert structure_kernel.kernel_name(plan) in src
  assert math.prod(plan.dst.level_sizes) == 20
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert plan == st.make_plan(plan.dst, plan.src)        # hashable, equal plans
