"""The Pallas backend's blocked form (primitives/backends/pallas/blocks.py), without an accelerator.

BSR products — ``A @ X`` (``IJab,Jbk->Iak`` on the block view), ``A.T @ G``
(``IJab,Iak->Jbk`` over the transposed copy) and the SDDMM at ``A``'s blocks (the
gradient w.r.t. the block values) — run as tile matmuls in Pallas' interpreter (GPU and
TPU forms) and are compared with the portable lowering and float64 numpy, on block
matrices with all-zero blocks, empty block rows and padding blocks, with several programs
and several ``k`` tiles; under ``jit``, ``vmap`` and second-order ``check_grads``; and
lowered for ``cuda`` / ``tpu`` from the CPU. ``backend.last_forms`` says which form ran.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util

import jscorch as js
from jscorch.primitives import einsum_kernel
from jscorch.primitives.backends.pallas import backend as pallas_backend
from jscorch.primitives.backends.pallas import blocks

F32, F64 = np.float32, np.float64
TOL = {np.dtype(F32): dict(rtol=2e-5, atol=2e-5), np.dtype(F64): dict(rtol=1e-12, atol=1e-12)}
MARKERS = {"cuda": "__gpu$xla.gpu.triton", "tpu": "tpu_custom_call"}


@pytest.fixture(scope="module", autouse=True)
def pallas():
  """Lowering "pallas" (the interpreter), several programs and ``k`` tiles per grid."""
  before = js.config.lowering, blocks.BLOCKS_PER_PROGRAM, blocks.GPU_K_TILE
  blocks.BLOCKS_PER_PROGRAM, blocks.GPU_K_TILE = 2, 16
  js.config.lowering = "portable"       # (a change clears the compilation caches)
  js.config.lowering = "pallas"
  yield
  blocks.BLOCKS_PER_PROGRAM, blocks.GPU_K_TILE = before[1:]
  js.config.lowering = "portable"
  js.config.lowering = before[0]


def block_matrix(rng, grid, block, dtype):
  """A dense ``[grid * block]`` matrix of random blocks at about 40 % of the grid's cells,
  block row 1 empty, and one stored block that is all zeros but a single entry."""
  (gm, gn), (bm, bn) = grid, block
  mask = rng.random(grid) < 0.4
  mask[1] = False
  mask[0, 0] = True
  x = util.random_values(rng, (gm * bm, gn * bn), dtype)
  x *= np.kron(mask, np.ones(block)).astype(dtype)
  x[:bm, :bn] = 0
  x[0, 0] = 1
  return x


def bsr(x, block, padding=2):
  A = js.from_dense(x, format=js.BSR(block))
  A = js.from_dense(x, format=js.BSR(block), nse=A.nse + padding)
  assert int(A.indices[0][-1]) < A.nse                # padding blocks present
  return A


def assert_close(got, want, dtype, err_msg=""):
  assert np.asarray(got).dtype == dtype
  np.testing.assert_allclose(util.reference(got), want, err_msg=err_msg, **TOL[np.dtype(dtype)])


def forms_of(f, *args):
  pallas_backend.last_forms.clear()
  out = jax.jit(f)(*args)
  return out, [form for _, form in pallas_backend.last_forms]


def spmm(A, x):
  return A @ x


def spmm_t(A, g):
  return A.T @ g


def sddmm(A, y, z):
  """``y z^T`` at ``A``'s blocks (the gradient of ``sum((A @ z) * y)`` w.r.t. the values)."""
  return jax.grad(lambda v: jnp.sum(spmm(A.with_data(v), z) * y))(A.data)


def _case(rng, block, dtype, k=40):
  x = block_matrix(rng, (5, 4), block, dtype)
  m, n = x.shape
  return dict(a=x, A=bsr(x, block), x=util.random_values(rng, (n, k), dtype),
              g=util.random_values(rng, (m, k), dtype), y=util.random_values(rng, (m, 6), dtype),
              z=util.random_values(rng, (n, 6), dtype))


def _want(name, d):
  a = util.reference(d["a"])
  if name == "spmm":
    return a @ d["x"]
  if name == "spmm_t":
    return a.T @ d["g"]
  A = d["A"]
  full = util.reference(d["y"]) @ util.reference(d["z"]).T
  bm, bn = A.format.blocks
  pos, crd = (np.asarray(i) for i in A.indices)
  out = np.zeros(A.data.shape)
  for i in range(len(pos) - 1):
    for p in range(pos[i], pos[i + 1]):
      out[p] = full[i * bm:(i + 1) * bm, crd[p] * bn:(crd[p] + 1) * bn]
  return out


CASES = {"spmm": (spmm, ("A", "x")), "spmm_t": (spmm_t, ("A", "g")),
         "sddmm": (sddmm, ("A", "y", "z"))}


@pytest.mark.parametrize("block,dtype", [((16, 16), F32), ((8, 4), F64)],
                         ids=["16x16-float32", "8x4-float64"])
@pytest.mark.parametrize("name", list(CASES))
def test_blocked_matches_portable_and_numpy(name, block, dtype):
  f, keys = CASES[name]
  rng = np.random.default_rng(0)
  with util.dtype_context(dtype):
    d = _case(rng, block, dtype)
    args = [d[n] for n in keys]
    got, forms = forms_of(f, *args)
    assert forms and set(forms) == {"blocked"}
    with util.use_lowering("portable"):
      port = jax.jit(f)(*args)
    want = _want(name, d)
    assert_close(got, want, dtype)
    assert_close(got, util.reference(port), dtype)
    if name == "sddmm":
      stored = int(d["A"].indices[0][-1])
      assert np.all(np.asarray(got)[stored:] == 0)          # padding blocks stay 0


def test_tpu_form_in_the_interpreter(monkeypatch):
  """The TPU form (scalar prefetch, (8, 128) padded tiles, ``k`` tiles as BlockSpecs)."""
  monkeypatch.setattr(pallas_backend, "INTERPRET_FLAVOR", "tpu")
  js.config.lowering = "portable"       # (clears the caches compiled with the GPU form)
  js.config.lowering = "pallas"
  try:
    d = _case(np.random.default_rng(1), (8, 16), F32)
    for name, (f, keys) in CASES.items():
      got, forms = forms_of(f, *(d[n] for n in keys))
      assert forms and set(forms) == {"blocked"}, name
      assert_close(got, _want(name, d), F32, err_msg=name)
  finally:
    js.config.lowering = "portable"
    js.config.lowering = "pallas"


def test_vmap_over_the_dense_operand():
  """``vmap`` over ``X`` adds a free index to the dense operand: folded into ``k``."""
  rng = np.random.default_rng(2)
  d = _case(rng, (16, 16), F32, k=8)
  xs = util.random_values(rng, (3, *d["x"].shape), F32)
  got, forms = forms_of(jax.vmap(spmm, in_axes=(None, 0)), d["A"], xs)
  assert forms == ["blocked"]
  assert_close(got, np.einsum("ij,bjk->bik", util.reference(d["a"]), xs), F32)
  gs = util.random_values(rng, (2, *d["g"].shape), F32)
  got, forms = forms_of(jax.vmap(spmm_t, in_axes=(None, 0)), d["A"], gs)
  assert forms == ["blocked"]
  assert_close(got, np.einsum("ij,bik->bjk", util.reference(d["a"]), gs), F32)


def test_grad_second_order_uses_blocked_kernels():
  """check_grads (order 2, fwd and rev) w.r.t. the block values (an SDDMM) and ``X``
  (``A^T G``), float64; every einsum of ``jit(grad)`` is a blocked kernel."""
  rng = np.random.default_rng(3)
  with util.dtype_context(F64):
    x = block_matrix(rng, (3, 2), (4, 4), F64)
    A = bsr(x, (4, 4), padding=1)
    X = util.random_values(rng, (8, 3), F64)
    f = lambda v, X: jnp.sin(spmm(A.with_data(v), X))
    util.check_grads_both(f, (A.data, X), atol=1e-5, rtol=1e-5)
    gf = jax.grad(lambda v, X: jnp.sum(f(v, X) ** 2), argnums=(0, 1))
    _, forms = forms_of(gf, A.data, X)
    assert forms == ["blocked"] * 3


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_lowers_for_accelerators_from_the_cpu(platform):
  """Under ``"auto"`` a GPU / TPU lowering of SpMM, SDDMM and the gradient emits one
  blocked Triton / Mosaic kernel per einsum."""
  d = _case(np.random.default_rng(4), (16, 16), F32)
  grad = jax.grad(lambda v, x: jnp.sum(spmm(d["A"].with_data(v), x) ** 2), argnums=(0, 1))
  with util.use_lowering("auto"):
    for f, args in [(spmm, (d["A"], d["x"])), (sddmm, (d["A"], d["y"], d["z"])),
                    (grad, (d["A"].data, d["x"]))]:
      einsum_kernel.last_decisions.clear()
      pallas_backend.last_forms.clear()
      text = jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()
      decisions = [r for _, r in einsum_kernel.last_decisions]
      assert decisions and set(decisions) == {"kernel"}, decisions
      assert [form for _, form in pallas_backend.last_forms] == ["blocked"] * len(decisions)
      assert text.count(MARKERS[platform]) == len(decisions)


def _spec(f, *args):
  jaxpr = jax.make_jaxpr(f)(*args)
  *_, last = (e for e in jaxpr.eqns if e.primitive.name == "jscorch_einsum")
  return last.params["spec"]      # (of a gradient: the last einsum)


def _plan(spec, dtype=F32):
  return einsum_kernel.kernel_plan(spec, range(spec.n_inputs), dtype, always_transpose=True)[0]


def test_form_is_recognised_from_the_plan():
  """The plan of a BSR product has a blocked form; a CSR product's has none (block dims
  of size 1 are no matrix); a GPU runs float64 blocks element by element."""
  d = _case(np.random.default_rng(5), (16, 8), F32)
  k = _plan(_spec(spmm, d["A"], d["x"]))
  f = blocks.form(k)
  assert (f.sampled, f.rows, f.inner, f.free, f.transposed) == (False, 16, 8, 40, False)
  k_t = _plan(_spec(spmm_t, d["A"], d["g"]))
  assert blocks.form(k_t).transposed
  k_s = _plan(_spec(sddmm, d["A"], d["y"], d["z"]))
  assert (blocks.form(k_s).sampled, blocks.form(k_s).free) == (True, 6)
  a = d["a"]
  C = js.from_dense(a, "csr")
  k_csr = _plan(_spec(spmm, C, d["x"]))
  assert blocks.form(k_csr) is None
  pallas = pallas_backend.PallasBackend()
  assert pallas.blocked(k, F32, "cuda") is not None and pallas.blocked(k, F64, "cuda") is None
  assert pallas.blocked(k, F64, "cpu") is not None
