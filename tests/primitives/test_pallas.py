"""The Pallas backend (primitives/backends/pallas), tested without an accelerator.

On the CPU the backend runs its kernels in Pallas' interpreter when chosen by name
(``jscorch.config.lowering = "pallas"``), in both kernel forms (the GPU's plain refs
and the TPU's scalar prefetch / SMEM / VMEM refs). Kernels — SpMM, its transpose
``A^T G`` (the gradient), SDDMM, batched and vmapped forms — are compared with the
portable lowering and a float64 numpy reference on CSR inputs with padding, empty rows
and power-law rows; the grid is made small enough (``WORK_PER_PROGRAM``) that several
programs split the rows. Lowering for ``cuda`` / ``rocm`` / ``tpu`` from the CPU checks
that the Triton and Mosaic kernels are emitted.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util

import jscorch as js
from jscorch.primitives import backends, einsum_kernel
from jscorch.primitives import loopnest as ir
from jscorch.primitives.backends.pallas import backend as pallas_backend
from jscorch.primitives.backends.pallas import launch, printer

F32, F64 = np.float32, np.float64
TOL = {np.dtype(F32): dict(rtol=2e-5, atol=2e-5), np.dtype(F64): dict(rtol=1e-12, atol=1e-12)}
MARKERS = {"cuda": "__gpu$xla.gpu.triton", "rocm": "__gpu$xla.gpu.triton",
           "tpu": "tpu_custom_call"}


@pytest.fixture(scope="module", autouse=True)
def pallas():
  """Lowering "pallas" (the interpreter on the CPU), several programs per grid."""
  before, work = js.config.lowering, launch.WORK_PER_PROGRAM
  launch.WORK_PER_PROGRAM = 8
  js.config.lowering = "portable"       # (a change clears the compilation caches)
  js.config.lowering = "pallas"
  yield
  launch.WORK_PER_PROGRAM = work
  js.config.lowering = "portable"
  js.config.lowering = before


def power_law(rng, shape, dtype):
  """A dense matrix with power-law row counts (row ``i`` ~ ``n / (i + 1)^1.5``, shuffled),
  some rows empty, fresh nonzero values."""
  m, n = shape
  counts = np.minimum(n, (n * 1.5 / (np.arange(m) + 1) ** 1.5).astype(int))
  counts[::5] = 0
  rng.shuffle(counts)
  x = np.zeros(shape, dtype)
  for i, c in enumerate(counts):
    cols = rng.choice(n, c, replace=False)
    x[i, cols] = util.random_values(rng, (c,), dtype)
  assert (counts == 0).any() and counts.max() >= n // 2
  return x


def csr(x, padding=3):
  A = js.from_dense(x, "csr", nse=int((x != 0).sum()) + padding)
  assert int(A.indices[0][-1]) < A.nse             # padding present
  return A


def decisions_of(f, *args):
  einsum_kernel.last_decisions.clear()
  jax.jit(f).lower(*args)
  return [d for _, d in einsum_kernel.last_decisions]


def spmm(A, x):
  return js.einsum("ij,jk->ik", A, x)


def spmm_t(A, g):
  return js.einsum("ij,ik->jk", A, g)        # A^T G: the gradient w.r.t. x of spmm


def sddmm(A, y, x):
  return js.einsum("ij,ik,jk->ij", A, y, x).data


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  out = {}
  for dtype in (F32, F64):
    with util.dtype_context(dtype):
      a = power_law(rng, (14, 11), dtype)
      out[np.dtype(dtype)] = dict(
          a=a, A=csr(a), x=util.random_values(rng, (11, 5), dtype),
          g=util.random_values(rng, (14, 5), dtype), y=util.random_values(rng, (14, 6), dtype),
          z=util.random_values(rng, (11, 6), dtype))
  return out


def _sddmm_reference(d):
  dense = d["a"] != 0
  full = util.reference(d["y"]) @ util.reference(d["z"]).T * util.reference(d["a"])
  return full[dense]          # (CSR order: row-major, sorted columns)


CASES = {
    "spmm": (spmm, lambda d: (d["A"], d["x"]), lambda d: util.reference(d["a"]) @ d["x"]),
    "spmm_t": (spmm_t, lambda d: (d["A"], d["g"]), lambda d: util.reference(d["a"]).T @ d["g"]),
    "sddmm": (sddmm, lambda d: (d["A"], d["y"], d["z"]), _sddmm_reference),
}


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_portable_and_numpy(data, name, dtype):
  f, args_of, want_of = CASES[name]
  with util.dtype_context(dtype):
    d = data[np.dtype(dtype)]
    args = args_of(d)
    assert decisions_of(f, *args) == ["kernel"]
    got = jax.jit(f)(*args)
    with util.use_lowering("portable"):
      port = jax.jit(f)(*args)
    want = want_of(d)
    if name == "sddmm":
      got, port = np.asarray(got)[:want.size], np.asarray(port)[:want.size]
      assert np.all(np.asarray(jax.jit(f)(*args))[want.size:] == 0)      # padding stays 0
    assert np.asarray(got).dtype == dtype
    np.testing.assert_allclose(util.reference(got), want, **TOL[np.dtype(dtype)])
    np.testing.assert_allclose(util.reference(got), util.reference(port), **TOL[np.dtype(dtype)])


def test_a_second_output_axis_looped_at_the_leaf():
  """MoE's weight gradient ``te,ti,to->eio`` (a CSR gate): o is the vector index, i a loop
  around the leaf that accumulates into the output, as in the C kernel."""
  rng = np.random.default_rng(3)
  g = np.zeros((12, 5), np.float32)
  for t in range(12):
    g[t, rng.choice(5, 2, replace=False)] = rng.standard_normal(2)
  x, dy = util.random_values(rng, (12, 3), F32), util.random_values(rng, (12, 16), F32)
  f = lambda G, x, dy: js.einsum("te,ti,to->eio", G, x, dy)      # noqa: E731
  G = js.from_dense(g, format="csr", nse=26)
  assert decisions_of(f, G, x, dy) == ["kernel"]
  np.testing.assert_allclose(jax.jit(f)(G, x, dy), np.einsum("te,ti,to->eio", g, x, dy),
                             **TOL[np.dtype(F32)])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_half_precision_accumulates_in_float32(data, dtype):
  """bfloat16 / float16 values (GPUs and the interpreter; the C backend declines them):
  products summed in float32, rounded once, so within one rounding of the float64
  reference of the rounded inputs."""
  d = data[np.dtype(F32)]
  A = d["A"].with_data(d["A"].data.astype(dtype))
  a = util.reference(A.todense())
  x, y, z = (jnp.asarray(d[n], dtype) for n in ("x", "y", "z"))
  for f, args, want in [(spmm, (A, x), a @ util.reference(x)),
                        (sddmm, (A, y, z), (util.reference(y) @ util.reference(z).T * a)[a != 0])]:
    assert decisions_of(f, *args) == ["kernel"]
    got = np.asarray(jax.jit(f)(*args))
    assert got.dtype == dtype
    np.testing.assert_allclose(util.reference(got)[:want.size].reshape(want.shape), want,
                               rtol=2 ** -7 if dtype == jnp.bfloat16 else 2 ** -10, atol=1e-6)
    with util.use_lowering("auto"):
      assert decisions_of(f, *args) == ["dtype"]        # (the C backend: portable)
      einsum_kernel.last_decisions.clear()
      jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",))
      assert [r for _, r in einsum_kernel.last_decisions] == ["dtype"]


def test_grid_has_several_programs_balanced_by_entries(data):
  """The test grid splits the rows among programs; the bounds give each about the same
  stored entries plus rows, on power-law rows."""
  d = data[np.dtype(F32)]
  pos = np.asarray(d["A"].indices[0])
  # work_before of a CSR: rows and entries before each row; the padding counts at the end
  before = np.arange(len(pos)) + np.append(pos[:-1], d["A"].nse)
  for programs in (2, 3, 5):
    bounds = np.asarray(launch.balanced_bounds(jnp.asarray(before), programs))
    assert bounds[0] == 0 and bounds[-1] == len(pos) - 1 and np.all(np.diff(bounds) >= 0)
    work = before[bounds[1:]] - before[bounds[:-1]]
    heaviest = np.max(np.diff(before))
    assert work.sum() == before[-1] and work.max() <= before[-1] / programs + heaviest, work
  k, _ = einsum_kernel.kernel_plan(_spec(spmm, d["A"], d["x"]), range(4), F32)
  assert launch.grid_size(k.balance) > 2
  index = {"pos1": jnp.asarray(pos), "crd1": d["A"].indices[1]}
  np.testing.assert_array_equal(launch.work_before(k.balance, index), before)


def _spec(f, *args):
  jaxpr = jax.make_jaxpr(f)(*args)
  return next(e for e in jaxpr.eqns if e.primitive.name == "jscorch_einsum").params["spec"]


def test_vmap_batched_and_dcsr(data):
  """vmap over the dense operand, over the sparse values (a block dim), over batched
  sparse arrays (units over batch elements), and a DCSR driver (compressed units)."""
  rng = np.random.default_rng(1)
  d = data[np.dtype(F32)]
  a, A = d["a"], d["A"]
  xs = util.random_values(rng, (2, 11, 5), F32)
  vals = util.random_values(rng, (2, A.nse), F32)
  b = power_law(rng, (14, 11), F32)
  As = js.from_dense(np.stack([a, b]), "csr", n_batch=1,
                     nse=util.stored_count(np.stack([a, b]), 1) + 2)
  cases = [
      (jax.vmap(spmm, in_axes=(None, 0)), (A, xs), np.einsum("ij,bjk->bik", a, xs)),
      (jax.vmap(lambda v, x: spmm(A.with_data(v), x), in_axes=(0, None)), (vals, d["x"]),
       np.stack([A.with_data(v).todense() for v in vals]) @ d["x"]),
      (jax.vmap(spmm, in_axes=(0, None)), (As, d["x"]), np.stack([a, b]) @ d["x"]),
      (spmm, (js.from_dense(a, "dcsr", nse=int((a != 0).sum()) + 2), d["x"]), a @ d["x"]),
  ]
  for f, args, want in cases:
    assert set(decisions_of(f, *args)) == {"kernel"}
    util.assert_allclose(jax.jit(f)(*args), util.reference(np.asarray(want)), F32)


def test_grad_second_order_and_eval_shape():
  """check_grads (order 2, forward and reverse) through SpMM w.r.t. the sparse values
  (its transpose is an SDDMM) and the dense operand (``A^T G``), in float64."""
  rng = np.random.default_rng(2)
  with util.dtype_context(F64):
    a = power_law(rng, (6, 5), F64)
    A = csr(a, padding=2)
    x = util.random_values(rng, (5, 3), F64)
    f = lambda v, x: jnp.sin(spmm(A.with_data(v), x))
    util.check_grads_both(f, (A.data, x), atol=1e-5, rtol=1e-5)
    gf = jax.jit(jax.grad(lambda v, x: jnp.sum(f(v, x) ** 2), argnums=(0, 1)))
    assert set(decisions_of(gf, A.data, x)) == {"kernel"}
    out = jax.eval_shape(spmm, A, x)
    assert out.shape == (6, 3) and out.dtype == F64


@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
def test_lowers_for_accelerators_from_the_cpu(data, platform):
  """Lowering for a GPU or TPU from this CPU-only jaxlib emits the Pallas kernel (Triton
  or Mosaic) under ``"auto"`` too: the backend serves those platforms first."""
  d = data[np.dtype(F32)]
  grad = jax.grad(lambda v, x: jnp.sum(spmm(d["A"].with_data(v), x) ** 2), argnums=(0, 1))
  with util.use_lowering("auto"):
    for f, args in [(spmm, (d["A"], d["x"])), (sddmm, (d["A"], d["y"], d["z"])),
                    (grad, (d["A"].data, d["x"]))]:
      einsum_kernel.last_decisions.clear()
      text = jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
      decisions = [r for _, r in einsum_kernel.last_decisions]
      assert decisions and set(decisions) == {"kernel"}, decisions
      assert text.count(MARKERS[platform]) == len(decisions), text[:2000]


def test_tpu_has_no_float64_and_falls_back():
  rng = np.random.default_rng(3)
  with util.dtype_context(F64):
    a = power_law(rng, (6, 5), F64)
    A, x = csr(a), util.random_values(rng, (5, 3), F64)
    einsum_kernel.last_decisions.clear()
    text = jax.jit(spmm).trace(A, x).lower(lowering_platforms=("tpu",)).as_text()
    assert [r for _, r in einsum_kernel.last_decisions] == ["dtype"]
    assert "tpu_custom_call" not in text
    text = jax.jit(spmm).trace(A, x).lower(lowering_platforms=("cuda",)).as_text()
    assert MARKERS["cuda"] in text


def test_unsupported_plans_give_their_reason_and_run_portable(data):
  d = data[np.dtype(F32)]
  a, A = d["a"], d["A"]
  b = a * (np.arange(11) % 2)
  B = csr(b)
  cases = [   # co-iteration of two patterns; a new sparse pattern (SpGEMM)
      (lambda A, B: js.einsum("ij,ij->i", A, B), (A, B), (a * b).sum(1), "pallas: loop"),
      (lambda A, B: js.einsum("ij,jk->ik", A, B, nse=14 * 14).todense(), (A, csr(b.T)),
       a @ b.T, "pallas: sparse output"),
      (lambda A, x: js.einsum("ij,jk->k", A, x), (A, d["x"]), (a @ d["x"]).sum(0),
       "pallas: serial"),     # (rows, or columns, are not owners of the output)
  ]
  for f, args, want, reason in cases:
    assert reason in pallas_backend.FALLBACKS
    assert decisions_of(f, *args)[0] == reason
    util.assert_allclose(jax.jit(f)(*args), util.reference(want).astype(F32), F32)


def test_tpu_rows_are_never_read_one_element_at_a_time(data):
  """A buffer viewed as rows in VMEM also read as a scalar: fine on a GPU, a TPU falls
  back (it reads scalars from SMEM only)."""
  d = data[np.dtype(F32)]
  k, _ = einsum_kernel.kernel_plan(_spec(spmm, d["A"], d["x"]), range(4), F32)
  assert printer.check(k, scalar_loads=False) is None and printer.views(k) == {"x1": 5, "out": 5}
  acc = next(s for s in ir.walk(k.body) if isinstance(s, ir.Accumulate) and
             isinstance(s.out, ir.Acc))
  scalar = ir.Load("x1", ir.Affine(((ir.Coord("c1"), 1),)))
  bigger = dataclasses.replace(acc, value=ir.Mul(acc.value.factors + (scalar,)))
  k2 = _replace_stmt(k, acc, bigger)
  assert printer.check(k2, scalar_loads=True) is None
  assert printer.check(k2, scalar_loads=False) == "pallas: lanes"
  assert "pallas: lanes" in pallas_backend.FALLBACKS
  huge = dataclasses.replace(k, outputs=(dataclasses.replace(k.outputs[0], size=2 ** 31),))
  assert printer.check(huge, scalar_loads=True) == "pallas: index size"
  assert "pallas: index size" in pallas_backend.FALLBACKS


def _replace_stmt(k, old, new):
  def visit(s):
    if s == old:
      return new
    if isinstance(s, ir.Loop):
      return dataclasses.replace(s, body=tuple(visit(b) for b in s.body))
    return s
  return dataclasses.replace(k, body=visit(k.body))


def test_auto_on_the_cpu_keeps_the_c_backend():
  pallas = backends.get("pallas")
  assert backends.for_platform("cpu") == (backends.get("c"),)
  assert backends.for_platform("cpu", "pallas") == (pallas,)
  assert backends.for_platform("cuda") == (pallas,) and backends.for_platform("tpu") == (pallas,)
  assert pallas.supports(None, F32, "cuda") == "pallas: sparse output"
  assert pallas.supports(None, np.int32, "cuda") == "dtype"


def test_tpu_kernel_form_in_the_interpreter(data, monkeypatch):
  """The TPU form (scalar prefetch, SMEM scalars, VMEM rows of 128 lanes) run by the
  interpreter gives the same values."""
  monkeypatch.setattr(pallas_backend, "INTERPRET_FLAVOR", "tpu")
  js.config.lowering = "portable"       # (clears the caches compiled with the GPU form)
  js.config.lowering = "pallas"
  try:
    d = data[np.dtype(F32)]
    for name, (f, args_of, want_of) in CASES.items():
      args = args_of(d)
      want = want_of(d)
      got = np.asarray(jax.jit(f)(*args))[:len(want)]
      np.testing.assert_allclose(util.reference(got), want, **TOL[np.dtype(F32)], err_msg=name)
  finally:
    js.config.lowering = "portable"
    js.config.lowering = "pallas"
