"""The union kernel's loop nest, run by the numpy IR interpreter, against the portable rule.

``primitives/structure/union_loops.py`` writes the union of sparse patterns as a
structure kernel (:class:`~jscorch.primitives.loopnest.Assembly`); the interpreter
(:func:`~jscorch.primitives.interpret.run_assembly`) runs that loop nest with no
compiler, and every buffer it returns must equal the portable rule's (a concatenate
and sort in XLA) exactly: ``pos``, ``crd``, ``dest``, ``count``, ``src`` and, for the
fused sum, the values — padding, concatenation offsets, batch and block dims and a
capacity too small included. Fresh random patterns with padding, never all zeros.
A golden file (``golden/union_two_parts.c``) shows the printed two-part kernel.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import jax
import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import c_runtime
from jscorch.primitives import loopnest as ir
from jscorch.primitives import union
from jscorch.primitives.backends.c import assembly
from jscorch.primitives.interpret import run_assembly
from jscorch.primitives.layout import Layout
from jscorch.primitives.structure import union_kernel as uk
from jscorch.primitives.structure import union_loops

import util


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  fmt: str
  shapes: tuple              # one full shape per part
  n_batch: int = 0
  n_dense: int = 0
  offsets: tuple = ()        # per part (concatenation), or () for none
  overflow: bool = False     # a capacity two short of the union
  dest: bool = True


CASES = [
    Case("two_csr", "csr", ((6, 7), (6, 7))),
    Case("two_csc", "csc", ((5, 8), (5, 8))),
    Case("three_parts_src_only", "csr", ((4, 6),) * 3, dest=False),
    Case("batch", "csr", ((2, 4, 5), (2, 4, 5)), n_batch=1),
    Case("block", "csr", ((5, 6, 3), (5, 6, 3)), n_dense=1),
    Case("concatenate_rows", "csr", ((3, 5), (4, 5)), offsets=((0, 0), (3, 0))),
    Case("concatenate_cols", "csr", ((4, 3), (4, 2)), offsets=((0, 0), (0, 3))),
    Case("overflow", "csr", ((5, 6), (5, 6)), overflow=True),
]


def _parts(case: Case, seed: int):
  arrays = []
  for k, shape in enumerate(case.shapes):
    A, _ = util.random_sparse_jit(seed + k, shape, case.fmt, n_batch=case.n_batch,
                                  n_dense=case.n_dense, padding=2 + k, density=0.5,
                                  dtype=np.float32)
    arrays.append(A)
  return arrays


def _plan(case: Case, arrays) -> uk.UnionPlan:
  nb, nd = case.n_batch, case.n_dense
  sparse = np.array([A.shape[nb:len(A.shape) - nd] for A in arrays])
  offsets = case.offsets or (None,) * len(arrays)
  extent = sparse.max(0) if not case.offsets else (sparse + np.array(case.offsets)).max(0)
  shape = (*arrays[0].shape[:nb], *map(int, extent), *arrays[0].shape[len(arrays[0].shape) - nd:])
  nse = sum(A.nse for A in arrays)
  if case.overflow:
    nse = union.union_size([(A.layout, A.indices) for A in arrays]) - 2
  return uk.UnionPlan(Layout(arrays[0].layout.format, shape, nse),
                      tuple(A.layout for A in arrays), offsets, "add", dest=case.dest)


def _flat(arrays):
  return [np.asarray(b) for A in arrays for b in A.indices]


def _outputs_like(values):
  """Result buffers to be overwritten: filled with a value no kernel writes."""
  return [np.full(v.shape, 7777, np.asarray(v).dtype) for v in values]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_union_pattern_interpreted_equals_portable(case):
  arrays = _parts(case, 40 + len(case.id))
  plan = _plan(case, arrays)
  flat = _flat(arrays)
  want = jax.jit(uk._portable(plan))(*flat)
  kernel = uk.lower(plan, want[len(plan.out.index_shapes) + plan.dest].dtype)
  got = run_assembly(kernel, [*flat, uk.params(plan)], _outputs_like(want))
  assert len(got) == len(want)
  for k, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == w.dtype and g.shape == w.shape, k
    np.testing.assert_array_equal(g, np.asarray(w), err_msg=f"output {kernel.outputs[k].name}")


@pytest.mark.parametrize("case", [c for c in CASES if c.dest], ids=lambda c: c.id)
def test_union_sum_interpreted_equals_portable(case):
  arrays = _parts(case, 70 + len(case.id))
  plan = dataclasses.replace(_plan(case, arrays), dest=False)
  flat = _flat(arrays)
  datas = [np.asarray(A.data) for A in arrays]
  with util.use_lowering("portable"):
    want = jax.jit(lambda f, d: uk.union_sum_p.bind(*f, *d, plan=plan))(flat, datas)
  kernel = uk.lower(plan, want[len(plan.out.index_shapes)].dtype, datas[0].dtype)
  assert any(isinstance(s, ir.Fold) for s in kernel.body[-1].leaves)
  got = run_assembly(kernel, [*flat, *datas, uk.params(plan)], _outputs_like(want))
  for k, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == w.dtype and g.shape == w.shape, k
    np.testing.assert_array_equal(g, np.asarray(w), err_msg=f"output {kernel.outputs[k].name}")


def test_loop_nest_holds_no_size():
  """Sizes are run-time Vars: plans of other shapes, capacities and offsets lower to the same
  nest (one build); the number of parts and the dtypes do not."""
  a, b = Layout(js.CSR, (3, 4), 5), Layout(js.CSR, (9, 2), 7)
  one = uk.UnionPlan(Layout(js.CSR, (3, 4), 10), (a, a), (None, None), "add")
  other = uk.UnionPlan(Layout(js.CSR, (9, 6), 3), (b, b), ((0, 0), (0, 2)), "add")
  assert union_loops.lower(one, "int32") == union_loops.lower(other, "int32")
  assert union_loops.lower(one, "int32") != union_loops.lower(one, "int64")
  three = dataclasses.replace(one, parts=(a,) * 3, offsets=(None,) * 3)
  assert len(union_loops.lower(three, "int32").inputs) == 6


# -- golden C: the printed union kernel ---------------------------------------------------------
GOLDEN = pathlib.Path(__file__).parent / "golden"


def test_golden_printed_union_kernel():
  """The two-part pattern kernel (dest and src) as printed, the shared runtime left out and
  the name masked. After an intended change to the printer or the planner, regenerate with
  ``JSCORCH_REGEN_GOLDEN=1 python -m pytest -q tests/primitives/test_interpret_union.py -k
  golden`` and review the diff."""
  a = Layout(js.CSR, (3, 4), 5)
  kernel = union_loops.lower(uk.UnionPlan(Layout(js.CSR, (3, 4), 10), (a, a), (None, None),
                                          "add"), "int32")
  src = assembly.generate(kernel)
  assert c_runtime.RUNTIME in src and assembly._HELPERS in src
  src = src.replace(c_runtime.RUNTIME, "/* (c_runtime.RUNTIME) */")
  src = src.replace(assembly._HELPERS, "/* (assembly._HELPERS) */\n")
  src = re.sub(r"jscorch_s_[0-9a-f]{16}", "jscorch_s_NAME", src)
  path = GOLDEN / "union_two_parts.c"
  if os.environ.get("JSCORCH_REGEN_GOLDEN"):
    path.write_text(src)
  assert src == path.read_text(), f"{path} differs: regenerate it (see the test's docstring)"
