"""The planner's loop nests, run by the numpy IR interpreter, against float64 numpy einsum.

``primitives/interpret.py`` executes a :class:`~jscorch.primitives.loopnest.Kernel`
on host buffers with the semantics the C printer keeps, so these tests check the
*plans* (loop nests, hoisting, race strategy, transposed workspaces,
co-iteration) independently of any compiler, on tiny shapes, with padding
present and fresh random non-zero values. A ``Race.STORE`` output starts as NaN
in the interpreter, so a plan that leaves an output location unwritten fails.
"""
from __future__ import annotations

import string

import numpy as np
import pytest

import jscorch as js
from jscorch.primitives import einsum_kernel
from jscorch.primitives import loopnest as ir
from jscorch.primitives.einsum_spec import PATTERN, SAMPLED_OUT, EinsumSpec, Operand
from jscorch.primitives.interpret import interpret

import util


def ids(term: str) -> tuple[int, ...]:
  return tuple(string.ascii_letters.index(c) for c in term)


# (id, subscripts, operand formats (None: dense), n_batch of the sparse operand,
#  sampled: None | "same" (at the operand's pattern) | "other" (another pattern))
CASES = [
    ("spmv_csr", "ij,j->i", ("csr", None), 0, None),
    ("spmm_csr_k19", "ij,jk->ik", ("csr", None), 0, None),
    ("spmm_coo", "ij,jk->ik", ("coo", None), 0, None),
    ("spmm_dcsr", "ij,jk->ik", ("dcsr", None), 0, None),
    ("spmm_csc", "ij,jk->ik", ("csc", None), 0, None),
    ("atg_transposed_csr", "ji,jk->ik", ("csr", None), 0, None),
    ("dense_left_csr", "ki,ij->kj", (None, "csr"), 0, None),
    ("mttkrp_csf", "ijk,jr,kr->ir", ("csf", None, None), 0, None),
    ("batched_spmm_csr", "bij,bjk->bik", ("csr", None), 1, None),
    ("sddmm_csr", "ij,ik,jk->ij", ("csr", None, None), 0, "same"),
    ("sddmm_coo", "ij,ik,jk->ij", ("coo", None, None), 0, "same"),
    ("sddmm_coiterate_csr", "ij,ik,jk->ij", ("csr", None, None), 0, "other"),
    ("moe_scalar", "bd,bn,ndh->bh", (None, "csr", None), 0, None),
]
SIZES = dict(i=4, j=5, k=19, r=16, b=2, d=3, n=5, h=2)


def build(subscripts, formats, n_batch, sampled, seed):
  """The spec, flat host inputs, dense float64 operands and (if sampled) the pattern."""
  rng = np.random.default_rng(seed)
  ins, out = subscripts.split("->")
  terms = ins.split(",")
  operands, flat, dense = [], [], []
  sparse = None
  for term, fmt in zip(terms, formats):
    shape = tuple(SIZES[c] for c in term)
    if fmt is None:
      x = util.random_values(rng, shape, np.float32)
      operands.append(Operand(ids(term)))
      flat.append(np.asarray(x))
    else:
      A, x = util.random_sparse(rng, shape, fmt, n_batch=n_batch)
      sparse = A
      operands.append(Operand(ids(term), A.layout))
      flat += [np.asarray(A.data)] + [np.asarray(b) for b in A.indices]
    dense.append(np.asarray(x, np.float64))
  sizes = tuple(sorted((ids(c)[0], s) for c, s in SIZES.items() if c in subscripts))
  if sampled is None:
    return EinsumSpec(tuple(operands), ids(out), sizes), flat, dense, None
  k = formats.index(next(f for f in formats if f))
  pattern = sparse
  if sampled == "other":
    pattern, _ = util.random_sparse(rng, sparse.shape, formats[k], n_batch=n_batch)
  flat += [np.asarray(b) for b in pattern.indices]
  spec = EinsumSpec(tuple(operands), ids(out), sizes, SAMPLED_OUT, pattern.layout,
                    same_pattern=((PATTERN, k),) if sampled == "same" else ())
  return spec, flat, dense, pattern


@pytest.mark.parametrize("name, subscripts, formats, n_batch, sampled", CASES,
                         ids=[c[0] for c in CASES])
def test_interpreted_plan_matches_numpy(name, subscripts, formats, n_batch, sampled):
  spec, flat, dense, pattern = build(subscripts, formats, n_batch, sampled, seed=len(name))
  kernel, reason = einsum_kernel.kernel_plan(spec, flat, np.float32)
  assert reason == "kernel" and isinstance(kernel, ir.Kernel)
  got = interpret(kernel, flat)
  want = np.einsum(subscripts, *dense)
  if pattern is None:
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-12, atol=1e-12)
    return
  # sampled: the values stored at the pattern's entries (padding entries stay 0)
  out = js.SparseArray.from_buffers(got.astype(np.float32), pattern.indices,
                                    shape=pattern.shape, format=pattern.format)
  mask = np.asarray(pattern.todense()) != 0
  np.testing.assert_allclose(np.asarray(out.todense(), np.float64), want * mask,
                             rtol=1e-6, atol=1e-6)
  n_used = int(np.asarray(pattern.indices[0])[-1]) if pattern.format == js.CSR else None
  if n_used is not None:
    np.testing.assert_array_equal(got[n_used:], 0)


def test_interpreter_catches_a_wrong_plan():
  """Negative control: the same kernel with its outer loop restricted to unit 1 leaves
  the other rows unwritten, and the STORE output shows NaN there."""
  import dataclasses
  spec, flat, dense, _ = build("ij,jk->ik", ("csr", None), 0, None, seed=3)
  kernel, _ = einsum_kernel.kernel_plan(spec, flat, np.float32)
  assert kernel.race is ir.Race.STORE
  only_unit_1 = ir.SkipUnless(ir.Var("q"), ir.Const(1))
  outer = dataclasses.replace(kernel.body, body=(only_unit_1,) + kernel.body.body)
  got = interpret(dataclasses.replace(kernel, body=outer), flat).reshape(4, 19)
  want = np.einsum("ij,jk->ik", *dense)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
  assert np.isnan(got[[0, 2, 3]]).all()
