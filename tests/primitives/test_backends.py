"""Tests of the backend registry (primitives/backends) and the per-platform einsum rule."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util

import jscorch as js
from jscorch.primitives import backends, einsum_kernel, einsum_portable, kernel_build
from jscorch.primitives.backends.c.backend import CBackend
from jscorch.primitives.formats import resolve_format

F32 = np.float32
_KERNEL_CALL = re.compile(r"custom_call\s*@jscorch_(k|spgemm)_[0-9a-f]+")


class Recording:
  """A backend for the CPU that records what it is asked and delegates to the C one."""
  platforms = ("cpu",)

  def __init__(self, name="recording", reason=None):
    self.name, self.reason, self.asked, self.lowered = name, reason, [], []

  def available(self):
    return None

  def supports(self, plan, dtype, platform):
    self.asked.append(np.dtype(dtype))
    return self.reason

  def lower(self, ctx, plan, *args, platform):
    self.lowered.append(plan)
    return backends.get("c").lower(ctx, plan, *args, platform=platform)


@pytest.fixture
def lowering():
  before = js.config.lowering
  yield
  backends.unregister_backend("recording")
  js.config.lowering = before


@pytest.fixture(scope="module")
def spmm():
  A, a = util.random_sparse(3, (6, 5), "csr", dtype=F32)
  x = util.random_values(4, (5, 3), F32)
  return jax.jit(lambda A, x: js.einsum("ij,jk->ik", A, x)), A, jnp.asarray(x), a @ x


def lower(f, *args):
  einsum_kernel.last_decisions.clear()
  text = f.lower(*args).as_text()
  return text, [d for _, d in einsum_kernel.last_decisions]


def test_c_backend_is_registered_for_the_cpu():
  c = backends.get("c")
  assert isinstance(c, CBackend) and isinstance(c, backends.Backend)
  assert backends.get("kernel") is c and "cpu" in backends.platforms()
  assert backends.for_platform("cpu") == (c,) and backends.for_platform("cpu", "portable") == ()
  assert c.supports(None, np.int32, "cpu") == "dtype" and c.supports(None, F32, "cpu") is None
  assert c.available() == (None if kernel_build.compiler() else "no compiler")


def test_setting_accepts_backend_names_and_the_kernel_alias(lowering):
  for value, stored in (("c", "c"), ("kernel", "c"), ("portable", "portable"),
                        ("auto", "auto")):
    js.config.lowering = value
    assert js.config.lowering == stored
  with pytest.raises(ValueError, match=r"lowering: got 'recording', expected one of \("):
    js.config.lowering = "recording"
  backends.register_backend(Recording())
  js.config.lowering = "recording"
  assert js.config.lowering == "recording"


def test_rule_asks_the_chosen_backend_and_records_its_reason(lowering, spmm):
  f, A, x, want = spmm
  rec = backends.register_backend(Recording())
  js.config.lowering = "recording"        # only this backend is asked
  text, decisions = lower(f, A, x)
  assert decisions == ["kernel"] and rec.asked == [np.dtype(F32)] and len(rec.lowered) == 1
  assert _KERNEL_CALL.search(text)
  util.assert_allclose(f(A, x), want, F32)
  rec.reason = "dtype"                    # declines: the portable rule runs
  js.config.lowering = "auto"
  js.config.lowering = "recording"
  text, decisions = lower(f, A, x)
  assert decisions == ["dtype"] and not _KERNEL_CALL.search(text)
  util.assert_allclose(f(A, x), want, F32)
  js.config.lowering = "portable"         # no backend is asked
  rec.asked.clear()
  text, decisions = lower(f, A, x)
  assert decisions == ["portable"] and rec.asked == [] and not _KERNEL_CALL.search(text)


@pytest.mark.skipif(kernel_build.compiler() is None, reason="needs a C compiler")
def test_auto_takes_the_first_backend_that_supports_the_kernel(lowering, spmm):
  f, A, x, _ = spmm
  rec = backends.register_backend(Recording(reason="dtype"))
  js.config.lowering = "portable"
  js.config.lowering = "auto"             # C first (registered first), so rec is not asked
  _, decisions = lower(f, A, x)
  assert decisions == ["kernel"] and rec.asked == []
  assert backends.for_platform("cpu") == (backends.get("c"), rec)


def test_register_backend_rejects_bad_backends():
  with pytest.raises(TypeError, match=r"register_backend: got .*, expected a Backend"):
    backends.register_backend(object())
  with pytest.raises(ValueError, match=r"register_backend: got name='portable', expected"):
    backends.register_backend(Recording(name="portable"))
  assert "portable" not in backends.names()


# -- capacities from the spec alone: CSR x CSR needs no work ----------------------------------
@pytest.fixture(scope="module")
def csr_pair():
  rng = np.random.default_rng(11)
  A, a = util.random_sparse(rng, (7, 5), "csr", dtype=F32)
  B, b = util.random_sparse(rng, (5, 9), "csr", dtype=F32)
  return A, a, B, b, int(((a @ b) != 0).sum())


def test_spgemm_jaxpr_is_the_same_with_or_without_kernels(lowering, csr_pair):
  """Under jit a CSR x CSR product needs nse= only, whether or not a compiler exists: the
  traced program does not depend on the backend; both lowerings give the same result."""
  A, a, B, b, needed = csr_pair
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=needed + 3))
  results, jaxprs = {}, {}
  for mode in ("portable", "c"):
    js.config.lowering = mode
    jaxprs[mode] = str(jax.make_jaxpr(f)(A, B))
    text, decisions = lower(f, A, B)
    want = ["portable"] if mode == "portable" else \
        ["kernel" if kernel_build.compiler() else "no compiler"]
    assert decisions == want and bool(_KERNEL_CALL.search(text)) == (want == ["kernel"])
    results[mode] = f(A, B)
  assert jaxprs["portable"] == jaxprs["c"] and "work=" not in jaxprs["c"]
  for C in results.values():
    assert C.format == js.CSR and C.nse == needed + 3
    util.assert_allclose(C.todense(), a @ b, F32)
  for x, y in zip(results["portable"].indices, results["c"].indices):   # one canonical pattern
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("fa,fb,out", [("dcsr", "dcsr", "dcsr"), ("coo", "csr", "coo"),
                                        ("csc", "dcsr", "csr")])
def test_other_2d_formats_run_the_csr_product_without_work(lowering, fa, fb, out):
  """A 2-D product of other formats (DCSR, COO, mixed) is the CSR product between
  conversions in both lowerings, so under jit it needs nse= only; kernel, portable and
  numpy agree, and the result has the requested format and the canonical pattern."""
  rng = np.random.default_rng(12)
  A, a = util.random_sparse(rng, (7, 5), fa, dtype=F32)
  B, b = util.random_sparse(rng, (5, 9), fb, dtype=F32)
  needed = int(((a @ b) != 0).sum())
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=needed + 2, out_format=out))
  results = {}
  for mode in ("portable", "c"):
    js.config.lowering = mode
    text, decisions = lower(f, A, B)
    # (the portable rule records the product as given and the CSR product it runs)
    assert decisions == (["portable", "portable"] if mode == "portable" else
                         ["kernel"] if kernel_build.compiler() else
                         ["no compiler", "no compiler"]), decisions
    assert "work=" not in str(jax.make_jaxpr(f)(A, B))
    results[mode] = C = f(A, B)
    assert C.format == resolve_format(out, 2)
    util.assert_allclose(C.todense(), a @ b, F32)
  for x, y in zip(results["portable"].indices, results["c"].indices):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # eager (exact sizes): the gradient w.r.t. A's values is 2 (a b) b^T at A's entries
  js.config.lowering = "auto"
  g = jax.grad(lambda d: jnp.sum(js.einsum("ij,jk->ik", A.with_data(d), B).data ** 2))(A.data)
  util.assert_allclose(A.with_data(g).todense(), 2 * (a @ b) @ b.T * (a != 0), F32)


def test_portable_spgemm_without_work_overflow_poisons(lowering, csr_pair):
  js.config.lowering = "portable"
  A, a, B, b, needed = csr_pair
  over = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=needed - 1))(A, B)
  assert np.isnan(np.asarray(over.data)).all()            # poisoned, never truncated


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_batched_spgemm_kernel_and_portable_without_work(lowering, fmt):
  """n_batch = 1 throughout: the kernel loops over the batch (no fallback), the portable
  rule needs no work either; eager sizes (max nse, summed pairs) agree between them."""
  rng = np.random.default_rng(12)
  xs = np.stack([util.random_dense(rng, (4, 5), density=0.5, dtype=F32) for _ in range(3)])
  ys = np.stack([util.random_dense(rng, (5, 6), density=0.5, dtype=F32) for _ in range(3)])
  As = js.from_dense(xs, fmt, n_batch=1, nse=util.stored_count(xs, 1) + 2)
  Bs = js.from_dense(ys, fmt, n_batch=1, nse=util.stored_count(ys, 1) + 2)
  f = jax.jit(lambda A, B: js.einsum("bij,bjk->bik", A, B, nse=24, out_format=fmt))
  got, sizes = {}, {}
  for mode in ("portable", "c"):
    js.config.lowering = mode
    _, decisions = lower(f, As, Bs)
    assert decisions == (["portable"] if mode == "portable" else
                         ["kernel" if kernel_build.compiler() else "no compiler"])
    got[mode] = f(As, Bs)
    assert got[mode].n_batch == 1 and got[mode].format.replace(n_batch=0) == {"csr": js.CSR, "csc": js.CSC}[fmt]
    util.assert_allclose(got[mode].todense(), np.einsum("bij,bjk->bik", xs, ys), F32)
    over = jax.jit(lambda A, B: js.einsum("bij,bjk->bik", A, B, nse=18, out_format=fmt))
    assert np.isnan(np.asarray(over(As, Bs).data)).all()   # one element over: all poisoned
    jaxpr = jax.make_jaxpr(lambda: js.einsum("bij,bjk->bik", As, Bs, out_format=fmt))()
    sizes[mode] = [e.params["spec"] for e in jaxpr.jaxpr.eqns
                   if e.primitive.name == "jscorch_einsum"][0]
  for x, y in zip(got["portable"].indices, got["c"].indices):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert sizes["portable"] == sizes["c"]        # the same exact nse and work either way
  assert sizes["c"].out_layout.nse == 19 and sizes["c"].work > 19


@pytest.mark.skipif(kernel_build.compiler() is None, reason="needs a C compiler")
def test_eager_counter_gives_the_portable_counts(csr_pair):
  A, _, B, _, needed = csr_pair
  jaxpr = jax.make_jaxpr(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=needed))(A, B)
  (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "jscorch_einsum"]
  spec = eqn.params["spec"]
  flat = [A.data, *A.indices, B.data, *B.indices]
  work, nse = einsum_portable.exact_capacities(spec, *flat)
  plan = einsum_kernel.spgemm_plan(spec, F32)
  assert einsum_kernel.spgemm_sizes(plan, A.indices, B.indices) == (nse, work)
  assert nse == needed == spec.out_layout.nse


# -- CSC x CSC -> CSC: the CSR kernel on the transposes, swapped --------------------------------
def _spgemm_plan_of(A, B, nse, out_format):
  jaxpr = jax.make_jaxpr(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=nse,
                                                out_format=out_format))(A, B)
  (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "jscorch_einsum"]
  return einsum_kernel.spgemm_plan(eqn.params["spec"], F32)


def test_csc_spgemm_is_the_csr_kernel_of_the_transposes(lowering):
  """No conversion: the same buffers in swapped order (one compiled kernel serves both);
  eager exact nse from the counter, jit without work, kernel == portable == numpy."""
  rng = np.random.default_rng(13)
  A, a = util.random_sparse(rng, (7, 5), "csc", dtype=F32)
  B, b = util.random_sparse(rng, (5, 9), "csc", dtype=F32)
  needed = int(((a @ b) != 0).sum())
  plan = _spgemm_plan_of(A, B, needed, "csc")
  assert plan.swapped and (plan.m, plan.k, plan.n) == (9, 5, 7)
  csr = _spgemm_plan_of(js.from_dense(a, "csr"), js.from_dense(b, "csr"), needed, "csr")
  assert not csr.swapped and csr.name == plan.name         # one kernel for both
  f = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=needed + 2, out_format="csc"))
  got = {}
  for mode in ("portable", "c"):
    js.config.lowering = mode
    eager = js.einsum("ij,jk->ik", A, B, out_format="csc")
    assert eager.format == js.CSC and eager.nse == needed
    util.assert_allclose(eager.todense(), a @ b, F32)
    text, decisions = lower(f, A, B)
    assert decisions == (["portable"] if mode == "portable" else
                         ["kernel" if kernel_build.compiler() else "no compiler"])
    got[mode] = f(A, B)
    util.assert_allclose(got[mode].todense(), a @ b, F32)
  for x, y in zip(got["portable"].indices, got["c"].indices):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
