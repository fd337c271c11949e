"""The conversion kernel's loop nest, run by the numpy IR interpreter, against the portable rule.

``primitives/structure/convert_loops.py`` writes every structure computation (format
conversion, ``from_coo``, ``sum_duplicates``, ``sort_indices``) as a structure kernel
(:class:`~jscorch.primitives.loopnest.Assembly`); the interpreter
(:func:`~jscorch.primitives.interpret.run_assembly`) runs that loop nest with no compiler,
and every buffer it returns must equal the portable rule's (sorts and scatters in XLA)
exactly: ``pos``, ``crd``, the slot map and the count -- padding, duplicates, batch and
block dims, passthrough conversions and every sort strategy included. A golden file
(``golden/conversion_csc_to_csr.c``) shows a printed conversion kernel.
"""
from __future__ import annotations

import os
import pathlib
import re
import zlib

import jax
import numpy as np
import pytest
import util
from test_structure_kernels import CASES, _case_id, _fmt, _inputs

import jscorch as js
from jscorch.primitives import c_runtime
from jscorch.primitives import loopnest as ir
from jscorch.primitives import structure as st
from jscorch.primitives.backends.c import convert, convert_text
from jscorch.primitives.interpret import run_assembly
from jscorch.primitives.layout import Layout
from jscorch.primitives.structure import convert_loops
from jscorch.primitives.structure.portable import structure_portable


def _plan_and_args(case, inp):
  op, src, dst, n_sparse, nb, nd, pad, dups = case
  shape = (2,) * nb + util.SPARSE_SHAPES[n_sparse] + (3,) * nd
  if op == "convert":
    A = inp
    out = A.asformat(_fmt(dst, n_sparse), nse=A.nse)
    return st.make_plan(out.layout, A.layout), [i.reshape((-1,) + i.shape[nb:])
                                               for i in A.indices]
  idx, vals = inp
  n = idx.shape[-2]
  if op == "from_coo":
    out = js.from_coo(idx, vals, shape, format=_fmt(dst, n_sparse), nse=n, check=False)
    lay = out.layout
    storage = idx[..., list(lay.format.mode_ordering)]
    sizes = np.asarray(lay.level_sizes)
    storage = np.where(np.any((storage < 0) | (storage >= sizes), -1, keepdims=True), sizes,
                       storage).astype(np.int32)
    return st.make_plan(lay, n=n), [storage.reshape((-1,) + storage.shape[nb:])]
  A = js.from_coo(idx, vals, shape, format=_fmt(src, n_sparse), nse=n, check=False)
  out = js.sum_duplicates(A) if op == "sum_duplicates" else js.sort_indices(A)
  return st.make_plan(out.layout, A.layout), [i.reshape((-1,) + i.shape[nb:])
                                             for i in A.indices]


def _check(plan, args):
  want = jax.jit(lambda *a: structure_portable(plan, *a))(*args)
  kernel = convert_loops.lower(plan)
  got = run_assembly(kernel, [np.asarray(a) for a in args],
                     [np.zeros(w.shape, w.dtype) for w in want])
  assert len(got) == len(want)
  for k, (g, w) in enumerate(zip(got, want)):
    assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
    np.testing.assert_array_equal(g, np.asarray(w), err_msg=f"output {k} of {plan}")
  return kernel


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_interpreter_matches_portable(case):
  rng = np.random.default_rng(zlib.crc32(_case_id(case).encode()))
  inp, _, _ = _inputs(case, rng)
  _check(*_plan_and_args(case, inp))


@pytest.mark.parametrize("shape,n,fmt", [((3, 500), 300, "csr"), ((1 << 20, 3), 64, "csr"),
                                         ((1 << 21,), 40, "coo"), ((4, 6, 5), 90, "csf")],
                         ids=["long-rows", "radix-level", "radix-1d", "csf"])
def test_sort_strategies(shape, n, fmt):
  """Buckets long enough for the merge sort, levels large enough for radix passes."""
  rng = np.random.default_rng(len(shape) * n)
  idx = rng.integers(-1, max(shape) + 1, (n, len(shape))).astype(np.int32)
  idx[: n // 4] = idx[n // 4: 2 * (n // 4)]                 # duplicates
  lay = js.from_coo(idx, np.ones(n, np.float32), shape, format=fmt, nse=n, check=False).layout
  sizes = np.asarray(lay.level_sizes)
  storage = idx[:, list(lay.format.mode_ordering)]
  storage = np.where(np.any((storage < 0) | (storage >= sizes), -1, keepdims=True), sizes,
                     storage).astype(np.int32)
  kernel = _check(st.make_plan(lay, n=n), [storage[None]])
  want = ir.SortBuckets if shape == (3, 500) or fmt == "csf" else ir.RadixSort
  assert any(isinstance(s, want) for s in kernel.body)


@pytest.mark.parametrize("src,dst", [("csr", "coo"), ("coo", "csr"), ("csr", "csc"),
                                     ("csc", "csr")])
def test_conversions_with_padding(src, dst):
  """Every planned path of a plain conversion, the source padded (passthrough included)."""
  rng = np.random.default_rng(7)
  A, _ = util.random_sparse(rng, (5, 7), src, padding=3)
  out = A.asformat(dst, nse=A.nse)
  _check(st.make_plan(out.layout, A.layout), [i[None] for i in A.indices])


# -- golden C: the printed conversion kernel -----------------------------------------------------
GOLDEN = pathlib.Path(__file__).parent / "golden"


def test_golden_printed_conversion_kernel():
  """CSC -> CSR (a counting sort, serial or in chunks) as printed, the shared runtime and
  the fixed helpers left out and the name masked. After an intended change to the printer
  or the planner, regenerate with ``JSCORCH_REGEN_GOLDEN=1 python -m pytest -q
  tests/primitives/test_interpret_convert.py -k golden`` and review the diff."""
  kernel = convert_loops.lower(st.make_plan(Layout(js.CSR, (4, 5), 6), Layout(js.CSC, (4, 5), 6)))
  src = convert.generate(kernel)
  for name in ("RUNTIME", "SCRATCH", "BUILDER"):
    text = c_runtime.RUNTIME if name == "RUNTIME" else getattr(convert_text, name)
    assert text in src
    src = src.replace(text, f"/* ({name}) */\n")
  src = re.sub(r"jscorch_s_[0-9a-f]{16}", "jscorch_s_NAME", src)
  path = GOLDEN / "conversion_csc_to_csr.c"
  if os.environ.get("JSCORCH_REGEN_GOLDEN"):
    path.write_text(src)
  assert src == path.read_text(), f"{path} differs: regenerate it (see the test's docstring)"
