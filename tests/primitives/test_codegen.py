"""The kernel planner's decisions (as loop-nest IR), the C printer, and balanced chunking.

Kernels come from ``einsum_kernel.kernel_plan(spec, flat, dtype)`` on hand-built
specs (index ids are letter positions, as ``js.einsum`` numbers them, so headers
show the expression as written): the planner writes every decision into a
:class:`~jscorch.primitives.loopnest.Kernel`, and these tests assert on it — which
loop is ``Parallel.OUTER``, the race strategy, the vector index, where products
are hoisted, the transposed workspace — not on the C text.

The printer is tested by **golden files** (``tests/primitives/golden/*.c``: SpMM,
SDDMM, a co-iteration, a transposed product, MTTKRP, staged tiles). After an intended change to
the printer or the planner, regenerate them with::

    JSCORCH_REGEN_GOLDEN=1 python -m pytest -q -p no:xdist tests/primitives/test_codegen.py -k golden

and review the diff (kernel names, which hash the whole kernel, are masked, and the
shared runtime is left out).

The power-law tests run whole einsums on R-MAT-like matrices whose few heavy rows
hold most entries, large enough that the kernels take their parallel path (chunks
balanced by stored entries), and compare with numpy / scipy.
"""
from __future__ import annotations

import ctypes
import os
import pathlib
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sps

import jscorch as js
from jscorch.primitives import c_runtime, einsum_kernel, kernel_build, orient
from jscorch.primitives import loopnest as ir
from jscorch.primitives import plan as kernel_planner
from jscorch.primitives.backends.c import printer
from jscorch.primitives.einsum_spec import PATTERN, SAMPLED_OUT, EinsumSpec, Operand
from jscorch.primitives.layout import Layout

import util

F32, F64 = np.float32, np.float64
GOLDEN = pathlib.Path(__file__).parent / "golden"


@pytest.fixture(autouse=True)
def kernel_lowering():
  """These tests are about generated kernels: lowering "auto" whatever the environment."""
  before = js.config.lowering
  js.config.lowering = "auto"
  yield
  js.config.lowering = before


def ids(term: str) -> tuple[int, ...]:
  return tuple(string.ascii_letters.index(c) for c in term)


def make_spec(expr: str, layouts, sizes: dict[str, int], sampled_by: int | None = None,
              same: bool = True):
  """An EinsumSpec for ``expr``; ``layouts[k]`` is None for a dense operand. With
  ``sampled_by=k`` the output is sampled at operand k's pattern (its very buffers
  unless ``same=False``)."""
  ins, out = expr.split("->")
  terms = ins.split(",")
  operands = tuple(Operand(ids(t), lay) for t, lay in zip(terms, layouts))
  size_pairs = tuple(sorted((string.ascii_letters.index(c), s) for c, s in sizes.items()))
  if sampled_by is None:
    return EinsumSpec(operands, ids(out), size_pairs)
  return EinsumSpec(operands, ids(out), size_pairs, SAMPLED_OUT, layouts[sampled_by],
                    same_pattern=((PATTERN, sampled_by),) if same else ())


def plan(spec: EinsumSpec, dtype=F32, **kw) -> ir.Kernel:
  kp, reason = einsum_kernel.kernel_plan(spec, [object() for _ in range(spec.n_inputs)], dtype,
                                         **kw)
  assert reason == "kernel", reason
  return kp


def header(src: str) -> dict[str, str]:
  head = src[:src.index("*/")]
  return {m.group(1): m.group(2).strip() for m in re.finditer(r"\*\s+(\w+)\s*:\s*(.*)", head)}


def mode(k: ir.Kernel) -> tuple:
  return (k.vector is not None, k.body.parallel, k.race)


def find(k: ir.Kernel, cls) -> list:
  """Statements (or iterators of loops) of type ``cls`` in ``k``, outermost first."""
  out = [s for s in ir.walk(k.body) if isinstance(s, cls)]
  return out + [l.over for l in ir.loops(k.body) if isinstance(l.over, cls)]


def loads(expr) -> list[ir.Load]:
  if isinstance(expr, ir.Load):
    return [expr]
  if isinstance(expr, (ir.Mul, ir.Add)):
    parts = expr.factors if isinstance(expr, ir.Mul) else expr.terms
    return [x for p in parts for x in loads(p)]
  return []


def csr(m, n, nse):
  return Layout.make(js.CSR, (m, n), nse)


def spmm_spec(layout, K, m=6, n=7):
  return make_spec("ij,jk->ik", (layout, None), dict(i=m, j=n, k=K))


VECTOR, SCALAR = True, False
OUTER, SERIAL = ir.Parallel.OUTER, ir.Parallel.NONE
STORE, ACC = ir.Race.STORE, ir.Race.ACCUMULATE


# -- the kernel: hashable, named after its hash, printed with a header -------------------------
def test_kernel_is_hashable_named_by_hash_and_printed_with_a_header():
  k = plan(spmm_spec(csr(6, 7, 20), 64))
  assert re.fullmatch(r"jscorch_k_[0-9a-f]{16}", k.name)
  assert k == plan(spmm_spec(csr(6, 7, 20), 64)) and hash(k) == hash(plan(spmm_spec(
      csr(6, 7, 20), 64)))
  assert plan(spmm_spec(csr(6, 7, 21), 64)).name != k.name       # the name carries the plan
  src = printer.generate(k)
  assert src.startswith(f"/* jscorch generated kernel {k.name}\n")
  h = header(src)
  assert h["einsum"] == "ij:Format(dense, compressed),jk->ik [dense]"
  assert h["driver"] == "Format(dense, compressed), shape (6, 7), nse 20"
  assert h["mode"] == "vector, parallel, store"
  assert f"XLA_FFI_Error* {k.name}(XLA_FFI_CallFrame* cf)" in src
  assert printer.generate(k) == src                                  # deterministic


def test_loop_nest_follows_the_planner_loop_order():
  """The level loops are the driver's levels in storage order (``Plan.loop_order``)."""
  from jscorch.primitives.planner import make_plan
  lay = Layout.make(js.CSF, (5, 6, 7), 30)
  spec = make_spec("ijk,jr,kr->ir", (lay, None, None), dict(i=5, j=6, k=7, r=16))
  k = plan(spec)
  nest = [l.over for l in ir.loops(k.body)][1:]
  assert [type(it) for it in nest] == [ir.Segment, ir.Segment, ir.Segment]
  assert [it.level for it in nest] == [0, 1, 2]
  assert make_plan(spec).loop_order[:3] == ids("ijk")
  assert isinstance(k.body.over, ir.Units) and k.body.over.width == lay.capacities[0]


# -- vector mode --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,K", [(F32, 64), (F32, 19), (F64, 19), (F64, 4), (F32, 8)])
def test_spmm_vector_index_lanes_and_prefetch(dtype, K):
  n = 4096                                     # X [n, K]: past the cache (CACHED_BYTES)
  k = plan(spmm_spec(csr(6, n, 20), K, n=n), dtype)
  lanes = 32 // np.dtype(dtype).itemsize
  assert k.dtype == np.dtype(dtype).name
  assert k.vector == ir.Vector(ir.Coord(f"f{ids('k')[0]}"), K, lanes)
  assert k.vector_index == "f10"
  # Σ_j A_ij X[j,:] is kept in registers (acc1) and stored once per row; X's row is
  # read along the vector index, A's value is not
  (inner, write) = find(k, ir.Accumulate)
  assert inner.out == ir.Acc("acc1") and write.value == ir.Mul((ir.Acc("acc1"),))
  assert {x.buffer: x.lanes for x in loads(inner.value)} == {"x0": False, "x1": True}
  prefetch = find(k, ir.Prefetch)
  if K * np.dtype(dtype).itemsize >= 64:
    (p,) = prefetch
    assert p.distance == kernel_planner.PREFETCH_DISTANCE and p.segment.level == 1
    assert p.targets == (("x1", ir.Affine(((ir.Coord("ahead"), K), (ir.Coord("f10"), 1)))),)
  else:
    assert prefetch == []                      # a row shorter than a cache line
  small = plan(spmm_spec(csr(6, 7, 20), K), dtype)
  assert find(small, ir.Prefetch) == []        # X stays in cache


def test_mttkrp_hoists_the_inner_sum_before_the_outer_factor():
  """``ijk,jr,kr->ir`` (CSF): Σ_k A_ijk K[k,:] accumulates at level 2, then × J[j,:]."""
  lay = Layout.make(js.CSF, (5, 6, 7), 30)
  k = plan(make_spec("ijk,jr,kr->ir", (lay, None, None), dict(i=5, j=6, k=7, r=16)))
  assert mode(k) == (VECTOR, OUTER, ACC)
  level0, level1, level2 = ir.loops(k.body)[1:]
  assert ir.Zero("acc1") in level0.body and ir.Zero("acc2") in level1.body
  (inner,) = [s for s in level2.body if isinstance(s, ir.Accumulate)]
  assert inner.out == ir.Acc("acc2")
  assert [(x.buffer, x.lanes) for x in loads(inner.value)] == [("x0", False), ("x2", True)]
  (mid,) = [s for s in level1.body if isinstance(s, ir.Accumulate)]
  assert mid.out == ir.Acc("acc1")
  assert mid.value.factors[-1] == ir.Acc("acc2")
  assert [x.buffer for x in loads(mid.value)] == ["x1"]          # J[j,:] once per j
  (out,) = [s for s in level0.body if isinstance(s, ir.Accumulate)]
  assert isinstance(out.out, ir.Access) and out.value == ir.Mul((ir.Acc("acc1"),))
  assert out.race is ACC                       # compressed rows: absent rows stay 0


# -- scalar mode ----------------------------------------------------------------------------------
def test_sddmm_scalar_mode_on_the_operand_pattern():
  lay = csr(6, 7, 20)
  spec = make_spec("ij,ik,jk->ij", (lay, None, None), dict(i=6, j=7, k=16), sampled_by=0)
  k = plan(spec)
  assert find(k, ir.Intersect) == []                             # one structure
  assert header(printer.generate(k))["einsum"] == \
      "ij:Format(dense, compressed),ik,jk->ij [sampled]"
  assert mode(k) == (SCALAR, OUTER, ACC)
  (free,) = [it for it in find(k, ir.Range) if not it.srcs]
  assert free == ir.Range(ir.Coord("f10"), 16)                   # k = 'k' = 10, summed
  (dot,) = [s for s in find(k, ir.Accumulate) if s.out == ir.Acc("s")]
  assert [x.buffer for x in loads(dot.value)] == ["x0", "x1", "x2"]
  (write,) = [s for s in find(k, ir.Accumulate) if isinstance(s.out, ir.Access)]
  assert write.out.offset == ir.Affine(((ir.Var("leaf"), 1),)) and write.value == ir.Acc("s")
  # the same spec with a pattern that is *not* the operand's buffers: two structures merged
  merged = plan(make_spec("ij,ik,jk->ij", (lay, None, None), dict(i=6, j=7, k=16),
                          sampled_by=0, same=False))
  (inter,) = find(merged, ir.Intersect)
  assert [p.src for p in inter.parts] == [0, 1] and merged.name != k.name
  assert write.out.offset != [s for s in find(merged, ir.Accumulate)
                              if isinstance(s.out, ir.Access)][0].out.offset


def test_moe_vector_mode_sums_the_dense_index_at_the_leaf():
  """``bd,bn,ndh->bh`` (MoE: x, a sparse gate, the experts' weights): the vector index is
  h, d is summed in a loop around the leaf's product (every factor inside it: x[b,d] and
  W[n,d,:] change with d), into a per-row accumulator stored once per row."""
  lay = csr(4, 5, 12)
  k = plan(make_spec("bd,bn,ndh->bh", (None, lay, None), dict(b=4, d=3, n=5, h=16)))
  assert mode(k) == (VECTOR, OUTER, STORE)
  assert k.vector == ir.Vector(ir.Coord(f"f{ids('h')[0]}"), 16, 8)
  (summed,) = [it for it in find(k, ir.Range) if not it.srcs]
  assert summed == ir.Range(ir.Coord(f"f{ids('d')[0]}"), 3)
  (inner, write) = find(k, ir.Accumulate)
  assert inner.out == ir.Acc("acc1") and write.value == ir.Mul((ir.Acc("acc1"),))
  assert {x.buffer: x.lanes for x in loads(inner.value)} == {"x0": False, "x1": False,
                                                            "x2": True}
  assert find(k, ir.Prefetch) == []             # W's row depends on the summed d


def test_moe_weight_gradient_loops_a_second_output_axis_at_the_leaf():
  """``bn,bd,bh->ndh`` (MoE's weight gradient: the gate, x, the output's cotangent) has two
  free output axes: h (the output's last) is the vector index, d is looped around the
  leaf, which accumulates into the output itself (no per-row accumulator, no store). The
  CSR gate (8192 routed tokens, 512-byte rows of ``dW``) is transposed in the prologue so
  each expert's unit owns ``dW[n]``."""
  lay = csr(4096, 16, 8192)
  k = plan(make_spec("bn,bd,bh->ndh", (lay, None, None), dict(b=4096, d=8, n=16, h=16)))
  assert mode(k) == (VECTOR, OUTER, ACC)
  assert k.vector == ir.Vector(ir.Coord(f"f{ids('h')[0]}"), 16, 8)
  assert isinstance(k.prologue[0], ir.Transpose)
  (looped,) = [it for it in find(k, ir.Range) if not it.srcs]
  assert looped == ir.Range(ir.Coord(f"f{ids('d')[0]}"), 8)
  (write,) = find(k, ir.Accumulate)
  assert isinstance(write.out, ir.Access) and write.race is ACC
  assert ir.Coord(f"f{ids('d')[0]}") in [c for c, _ in write.out.offset.terms]
  assert {x.buffer: x.lanes for x in loads(write.value)} == {"x0": False, "x1": False,
                                                            "x2": True}


# -- race strategy, parallel / serial ------------------------------------------------------------
@pytest.mark.parametrize("fmt,expected", [
    ("csr", (VECTOR, OUTER, STORE)),        # each row written once by its owner
    ("dcsr", (VECTOR, OUTER, ACC)),         # compressed rows: absent rows stay 0
    ("coo", (VECTOR, SERIAL, ACC)),         # non-unique rows: no owner
])
def test_store_vs_accumulate(fmt, expected):
  fmt_obj = {"csr": js.CSR, "dcsr": js.DCSR, "coo": js.COO}[fmt]
  k = plan(spmm_spec(Layout.make(fmt_obj, (6, 7), 20), 16))
  assert mode(k) == expected
  writes = {s.race for s in find(k, ir.Accumulate) if isinstance(s.out, ir.Access)}
  assert writes == {expected[2]}
  assert k.outputs == (ir.Buffer("out", ir.Role.OUT, size=96),)   # zeroed when ACCUMULATE


def test_transposed_product_parallel_via_in_kernel_transpose():
  """``ji,jk->ik`` (Aᵀ G): a CSR driver is transposed in-kernel (counting sort) so the
  output rows have owners and run in parallel (here forced: at this size it does not pay,
  below); COO cannot be, and runs serially."""
  spec = make_spec("ji,jk->ik", (csr(6, 7, 20), None), dict(i=7, j=6, k=16))
  k = plan(spec, always_transpose=True)
  assert k.prologue == (ir.Transpose(0, 6, 7, 20, "pos1", "crd1"),)
  assert mode(k) == (VECTOR, OUTER, STORE)
  assert ir.Let("leaf", ir.Load("perm", ir.Pos(0, 1))) in find(k, ir.Let)
  level0 = ir.loops(k.body)[1].over
  assert level0 == ir.Range(ir.Coord("c0"), 7, 0, (0,), True)    # the old column dim
  # without the transpose the same nest has no owner
  lay = spec.operands[0].layout
  kp = kernel_planner.KernelPlan(spec, lay, ids("ji"), 1, np.dtype(F32))
  assert not kernel_planner.owner(kp) and kernel_planner.owner(kp.transposed())
  coo = plan(make_spec("ji,jk->ik", (Layout.make(js.COO, (6, 7), 20), None),
                       dict(i=7, j=6, k=16)))
  assert coo.prologue == () and mode(coo)[1:] == (SERIAL, ACC)


@pytest.mark.parametrize("nse,width,dtype,transposed", [
    (40_000, 64, F32, True),       # 256-byte output rows, 2.6M products: re-sorted
    (40_000, 32, F32, False),      # 128-byte rows: accumulated serially, in storage order
    (40_000, 32, F64, True),       # 256-byte rows
    (40_000, 1, F32, False),       # Aᵀ v
    (4_000, 64, F32, False),       # 256k products: serial either way, so no re-sort
])
def test_transposed_only_where_the_parallel_split_pays(nse, width, dtype, transposed):
  """``Aᵀ G``: the re-sort costs about what a 64-float row of products does per entry, so
  narrow rows and small work keep the driver's order and accumulate serially into the
  output; a backend that needs owners (``always_transpose``: Pallas) always re-sorts."""
  spec = make_spec("ji,jk->ik", (csr(6000, 7000, nse), None), dict(i=7000, j=6000, k=width))
  k = plan(spec, dtype)
  assert bool(k.prologue) is transposed
  assert mode(k)[1:] == ((OUTER, STORE) if transposed else (SERIAL, ACC))
  assert kernel_planner.transpose_pays(kernel_planner.KernelPlan(
      spec, spec.operands[0].layout, ids("ji"), 1, np.dtype(dtype))) is transposed
  forced = plan(spec, dtype, always_transpose=True)
  assert isinstance(forced.prologue[0], ir.Transpose) and mode(forced)[1] is OUTER


def test_serial_path_for_small_problems_parallel_split_for_large():
  small = plan(spmm_spec(csr(6, 7, 20), 16))
  assert small.body.parallel is OUTER and not small.balance.split and small.balance.units == 6
  big_nse = kernel_planner.SERIAL_WORK // 16 + 1
  big = plan(spmm_spec(csr(4000, 5000, big_nse), 16, 4000, 5000))
  assert big.balance.split and big.balance.units == 4000
  assert big.balance.levels == (ir.Segment(ir.Coord("c1"), 0, 1, 5000, big_nse, 4000,
                                           "pos1", "crd1"),)


# -- golden C: the printer ----------------------------------------------------------------------
GOLDEN_CASES = {
    "spmm_csr_f32_k19": lambda: spmm_spec(csr(6, 7, 20), 19),
    "sddmm_csr": lambda: make_spec("ij,ik,jk->ij", (csr(6, 7, 20), None, None),
                                   dict(i=6, j=7, k=16), sampled_by=0),
    "sddmm_coiterate": lambda: make_spec("ij,ik,jk->ij", (csr(6, 7, 20), None, None),
                                         dict(i=6, j=7, k=16), sampled_by=0, same=False),
    "atg_transposed": lambda: plan(make_spec("ji,jk->ik", (csr(6, 7, 20), None),
                                             dict(i=7, j=6, k=16)), always_transpose=True),
    "mttkrp_csf": lambda: make_spec("ijk,jr,kr->ir", (Layout.make(js.CSF, (5, 6, 7), 30),
                                                      None, None),
                                    dict(i=5, j=6, k=7, r=16)),
    "staged_x_at_w": lambda: staged(make_spec("ni,io->no", (None, csr(9, 7, 20)),
                                              dict(n=45, i=9, o=7))),
}


def staged(spec: EinsumSpec) -> ir.Kernel:
  """``spec``'s oriented kernel run over staged tiles (:func:`orient.tiling`)."""
  t = orient.tiling(spec, orient.orient(spec), 4, 8)
  body = plan(t.spec, always_transpose=True)        # (as the lowering plans a staged body)
  return kernel_planner.staged(body, t.extent, t.tile, t.operands, t.out)


def masked(src: str) -> str:
  """The kernel's own text: its name (a hash) masked, the shared runtime left out."""
  assert c_runtime.RUNTIME in src
  src = src.replace(c_runtime.RUNTIME, "/* (c_runtime.RUNTIME) */")
  return re.sub(r"jscorch_k_[0-9a-f]{16}", "jscorch_k_NAME", src)


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_printed_c(name):
  case = GOLDEN_CASES[name]()
  src = masked(printer.generate(case if isinstance(case, ir.Kernel) else plan(case)))
  path = GOLDEN / f"{name}.c"
  if os.environ.get("JSCORCH_REGEN_GOLDEN"):
    GOLDEN.mkdir(exist_ok=True)
    path.write_text(src)
  assert src == path.read_text(), f"{path} differs: regenerate it (see the module docstring)"


def test_golden_kernel_compiles():
  """One golden kernel really builds (the printer emits valid C for the runtime)."""
  k = plan(GOLDEN_CASES["sddmm_coiterate"]())
  lib = kernel_build.build(printer.generate(k))
  assert hasattr(lib, k.name)


# -- interleaved reductions ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,K,n,ways", [
    (F32, 16, 7, 2), (F32, 32, 7, 2), (F64, 4, 7, 2),      # up to 4 registers: interleaved
    (F32, 33, 7, 1), (F32, 7, 7, 1), (F32, 64, 7, 1),      # 5, 7 and 8 chains already
    (F32, 16, 8192, 1)])                                   # a prefetched (memory-bound) row
def test_short_row_reductions_interleave_accumulators(dtype, K, n, ways):
  k = plan(spmm_spec(csr(6, n, 20), K, n=n), dtype)
  (row,) = [l for l in ir.loops(k.body) if isinstance(l.over, ir.Segment)]
  assert row.interleave == ways
  src = printer.generate(k)
  assert ("acc1_w1_v0" in src) == (ways == 2) and ("} while (0);" in src) == (ways == 2)
  spmv = plan(make_spec("ij,j->i", (csr(6, 7, 20), None), dict(i=6, j=7)))
  assert [l.interleave for l in ir.loops(spmv.body) if isinstance(l.over, ir.Segment)] == [2]


@pytest.mark.parametrize("K", [16, 1])
def test_interleaved_rows_of_every_parity_skip_padding_coordinates(K):
  """Rows of 0..7 entries, some ending in a padding coordinate (>= the column count),
  which the interleaved loop must skip in whichever accumulator set it falls."""
  rng = np.random.default_rng(11)
  n_rows, n_cols = 16, 9
  rows, cols = [], []
  for i in range(n_rows):
    length = i % 8
    pad = i % 3 == 0 and length > 0
    cs = np.sort(rng.choice(n_cols, length - pad, replace=False)).tolist() + [n_cols] * pad
    rows += [i] * length
    cols += cs
  vals = util.random_values(rng, len(rows), F32)
  indptr = np.searchsorted(rows, np.arange(n_rows + 1)).astype(np.int32)
  A = js.SparseArray.from_buffers(vals, [indptr, np.asarray(cols, np.int32)],
                                  shape=(n_rows, n_cols), format="csr", check=False)
  kept = np.asarray(cols) < n_cols
  dense = np.zeros((n_rows, n_cols))
  dense[np.asarray(rows)[kept], np.asarray(cols)[kept]] = vals[kept]
  X = util.random_values(rng, (n_cols, K), F32)
  got = jax.jit(lambda A, X: js.einsum("ij,jk->ik", A, X))(A, jnp.asarray(X))
  np.testing.assert_allclose(np.asarray(got), dense @ X.astype(F64), rtol=1e-5, atol=1e-6)


# -- balanced chunking ----------------------------------------------------------------------------
SPLIT_HARNESS = c_runtime.RUNTIME + """
static int64_t prefix_work(const void* args, int64_t u) { return ((const int64_t*)args)[u]; }

int64_t jscorch_test_split(const int64_t* prefix, int64_t n_units, int64_t n_chunks,
                           int64_t* bounds) {
  return jscorch_split(n_units, prefix_work, prefix, n_chunks, bounds);
}
"""


def rmat_rows(rng, n_rows, nnz, heavy=(0, 7), heavy_share=0.5):
  """Entries per row of a power-law matrix: a few heavy rows hold ``heavy_share``."""
  w = 1.0 / np.arange(1, n_rows + 1) ** 1.2
  counts = rng.multinomial(int(nnz * (1 - heavy_share)), w / w.sum())
  counts[list(heavy)] += int(nnz * heavy_share) // len(heavy)
  return counts


@pytest.mark.parametrize("n_chunks", [2, 8, 256])
def test_split_balances_power_law_work(n_chunks):
  lib = kernel_build.build(SPLIT_HARNESS)
  fn = lib.jscorch_test_split
  fn.restype = ctypes.c_int64
  counts = rmat_rows(np.random.default_rng(n_chunks), 3000, 60000).astype(np.int64)
  prefix = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  bounds = np.zeros(n_chunks + 1, np.int64)
  n = fn(prefix.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(len(counts)),
         ctypes.c_int64(n_chunks), bounds.ctypes.data_as(ctypes.c_void_p))
  assert 1 <= n <= n_chunks
  b = bounds[:n + 1]
  assert b[0] == 0 and b[-1] == len(counts) and np.all(np.diff(b) >= 0)
  work = prefix[b[1:]] - prefix[b[:-1]]
  assert work.sum() == counts.sum()
  # no chunk exceeds its share by more than one unit's work (a row is never split)
  assert work.max() <= counts.sum() / n + counts.max(), (work, counts.max())


def power_law_csr(seed, m, n, nnz, dtype=F32):
  """A CSR SparseArray (built with numpy/scipy, with padding) and its scipy twin."""
  rng = np.random.default_rng(seed)
  counts = np.minimum(rmat_rows(rng, m, nnz), n)
  rows = np.repeat(np.arange(m), counts)
  cols = np.concatenate([rng.choice(n, size=c, replace=False) for c in counts])
  vals = util.random_values(rng, len(rows), dtype)
  S = sps.csr_matrix((vals, (rows, cols)), shape=(m, n))
  S.sort_indices()
  pad = 3
  pos = S.indptr.astype(np.int32)
  crd = np.concatenate([S.indices, np.full(pad, n)]).astype(np.int32)
  data = np.concatenate([S.data, np.zeros(pad, dtype)]).astype(dtype)
  A = js.SparseArray.from_buffers(data, [pos, crd], shape=(m, n), format="csr")
  return A, S.astype(np.float64)


def kernel_of_last_decision():
  """The kernel IR (or the SpGEMM plan) of the most recent lowering decision."""
  spec, reason = einsum_kernel.last_decisions[-1]
  assert reason == "kernel"
  k, _ = einsum_kernel.kernel_plan(spec, [object() for _ in range(spec.n_inputs)], np.float32)
  return k


def runs_in_parallel_chunks(k: ir.Kernel) -> bool:
  return k.body.parallel is ir.Parallel.OUTER and k.balance.split


def test_power_law_products_match_reference(monkeypatch):
  """SpMV, SpMM, Aᵀ G and SDDMM on 3000 x 20000 with 60k entries (half in two rows), in
  parallel chunks (the serial threshold lowered so that SpMV's 60k products split too)."""
  monkeypatch.setattr(kernel_planner, "SERIAL_WORK", 1 << 15)
  A, S = power_law_csr(0, 3000, 20000, 60000)
  rng = np.random.default_rng(1)
  assert S.getnnz(axis=1).max() >= 15000                 # heavy rows really are heavy
  X = util.random_values(rng, (20000, 16), F32)
  G = util.random_values(rng, (3000, 16), F32)
  G64 = util.random_values(rng, (3000, 64), F32)
  U = util.random_values(rng, (3000, 16), F32)
  v = util.random_values(rng, (20000,), F32)
  tol = dict(rtol=1e-4, atol=1e-3)                       # float32 sums of up to 15k terms

  spmm = jax.jit(lambda A, X: js.einsum("ij,jk->ik", A, X))(A, X)
  assert runs_in_parallel_chunks(kernel_of_last_decision())
  np.testing.assert_allclose(np.asarray(spmm), S @ X.astype(F64), **tol)

  spmv = jax.jit(lambda A, v: js.einsum("ij,j->i", A, v))(A, v)
  assert runs_in_parallel_chunks(kernel_of_last_decision())
  np.testing.assert_allclose(np.asarray(spmv), S @ v.astype(F64), **tol)

  atg = jax.jit(lambda A, G: js.einsum("ij,ik->jk", A, G))
  wide = atg(A, G64)            # 256-byte rows: re-sorted, parallel
  k = kernel_of_last_decision()
  assert k.prologue and isinstance(k.prologue[0], ir.Transpose) and runs_in_parallel_chunks(k)
  np.testing.assert_allclose(np.asarray(wide), S.T @ G64.astype(F64), **tol)
  narrow = atg(A, G)            # 64-byte rows: accumulated serially in storage order
  assert not kernel_of_last_decision().prologue
  np.testing.assert_allclose(np.asarray(narrow), S.T @ G.astype(F64), **tol)

  sddmm = jax.jit(lambda A, U, X: js.einsum("ij,ik,jk->ij", A, U, X))(A, U, X)
  assert einsum_kernel.last_decisions[-1][1] == "kernel"
  coo = S.tocoo()
  expected = coo.data * np.einsum("nk,nk->n", U[coo.row].astype(F64), X[coo.col].astype(F64))
  data = np.asarray(sddmm.data)
  np.testing.assert_array_equal(np.asarray(sddmm.indices[1]), np.asarray(A.indices[1]))
  np.testing.assert_allclose(data[:S.nnz], expected, **tol)
  np.testing.assert_array_equal(data[S.nnz:], 0)         # padding stays 0


def test_power_law_spgemm_matches_scipy():
  A, S = power_law_csr(2, 600, 500, 6000)
  B, T = power_law_csr(3, 500, 400, 4000)
  C = (S @ T).tocsr()
  C.sort_indices()
  nse = C.nnz + 5
  out = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=nse))(A, B)
  assert "jscorch_parallel_for(cf, count_rows" in einsum_kernel._source(kernel_of_last_decision())
  pos, crd = (np.asarray(b) for b in out.indices)
  np.testing.assert_array_equal(pos, C.indptr)
  np.testing.assert_array_equal(crd[:C.nnz], C.indices)
  assert np.all(crd[C.nnz:] == 400)                       # padding coordinate = size
  np.testing.assert_allclose(np.asarray(out.data)[:C.nnz], C.data, rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(out.data)[C.nnz:], 0)


def test_spgemm_wide_rows_sorted_both_ways_and_eager_count():
  """A wide B (70000 columns): light rows take the sorted-column-list path, heavy rows
  the bitmap-summary scan; the eager counter sizes it exactly (power-law A, padding in
  both operands), values match float64 scipy, and a capacity one short poisons with NaN."""
  A, S = power_law_csr(5, 300, 2000, 9000)
  B, T = power_law_csr(6, 2000, 70000, 12000)
  assert np.diff(T.indptr)[S.indices].sum() > 2**15     # products: above the serial cutoff
  pattern = (abs(S) @ abs(T)).tocsr()                    # structural: no cancellation
  pattern.sort_indices()
  row_nnz = np.diff(pattern.indptr)
  assert row_nnz.max() > 2000 and np.sum((row_nnz > 0) & (row_nnz < 4)) > 10
  out = js.einsum("ij,jk->ik", A, B)                     # eager: exact nse from the counter
  assert einsum_kernel.last_decisions[-1][1] == "kernel"
  assert out.nse == pattern.nnz
  pos, crd = (np.asarray(b) for b in out.indices)
  np.testing.assert_array_equal(pos, pattern.indptr)
  np.testing.assert_array_equal(crd, pattern.indices)
  got = sps.csr_matrix((np.asarray(out.data), crd, pos), shape=(300, 70000))
  want = S @ T
  assert np.linalg.norm((got - want).data) <= 1e-5 * np.linalg.norm(want.data)
  short = jax.jit(lambda A, B: js.einsum("ij,jk->ik", A, B, nse=pattern.nnz - 1))(A, B)
  assert np.isnan(np.asarray(short.data)).all()
  assert np.asarray(short.indices[0])[-1] == pattern.nnz - 1   # pos clamped at capacity


def test_kernels_are_reentrant_across_threads():
  """Handlers run concurrently from several Python threads (parallel path, transposed
  scratch buffers, shared XLA pool) and every result stays right."""
  import threading
  A, S = power_law_csr(7, 2000, 8000, 30000)
  rng = np.random.default_rng(8)
  Xs = [jnp.asarray(util.random_values(rng, (8000, 16), F32)) for _ in range(3)]
  G = jnp.asarray(util.random_values(rng, (2000, 64), F32))     # wide: a re-sorted driver
  spmm = jax.jit(lambda A, X: js.einsum("ij,jk->ik", A, X))
  atg = jax.jit(lambda A, G: js.einsum("ij,ik->jk", A, G))
  want = [S @ np.asarray(X, F64) for X in Xs]
  want_t = S.T @ np.asarray(G, F64)
  spmm(A, Xs[0]).block_until_ready()
  atg(A, G).block_until_ready()
  failures = []

  def worker(t):
    for it in range(6):
      k = (t + it) % len(Xs)
      if not np.allclose(np.asarray(spmm(A, Xs[k])), want[k], rtol=1e-4, atol=1e-3):
        failures.append(("spmm", t, it))
      if not np.allclose(np.asarray(atg(A, G)), want_t, rtol=1e-4, atol=1e-3):
        failures.append(("atg", t, it))

  threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
  for th in threads:
    th.start()
  for th in threads:
    th.join()
  assert failures == []
