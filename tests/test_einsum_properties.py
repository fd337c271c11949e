"""Property test of ``js.einsum``: random expressions, formats and padding vs numpy.

Hypothesis draws an einsum over 1–4 operands (1–3 of them sparse) of rank 1–3
with shared and summed indices of sizes 1–5; each sparse operand gets a random
format valid for its number of sparse dimensions (named and custom), possibly a
batch dimension (rank ≥ 2) or a dense block dimension, and 0–2 padding slots.
The test checks, eagerly (so sparse × sparse capacities are computed
automatically):

* the value against ``np.einsum`` on float64 dense references;
* ``jax.grad`` of a weighted sum w.r.t. a dense operand and w.r.t. the stored values
  of a sparse operand, against dense JAX autodiff of the same loss (the sparse
  values enter the reference through ``todense``), padding slots getting zero;
* ``jax.vmap`` over a leading axis of a dense operand against a stacked loop.
"""
from __future__ import annotations

import dataclasses

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jscorch as js

import util

F64 = np.float64
LETTERS = "abcdef"
FORMATS_BY_N_SPARSE = {
    1: [("coo", "coo"), ("csf", "csf")],
    2: util.FORMATS_2D,
    3: util.FORMATS_3D,
}


@dataclasses.dataclass
class Problem:
  subscripts: str
  terms: list                 # per operand: letters
  sparse: list                # per operand: None or (format id, format, n_batch, n_dense, padding)
  sizes: dict

  def __repr__(self):
    ops = ", ".join(f"{t}:{s[0]}(nb={s[2]},nd={s[3]},pad={s[4]})" if s else f"{t}:dense"
                    for t, s in zip(self.terms, self.sparse))
    shapes = {c: self.sizes[c] for c in sorted(set("".join(self.terms)))}
    return f"Problem({self.subscripts!r}; {ops}; sizes={shapes})"


@st.composite
def problems(draw):
  n_ops = draw(st.integers(1, 4))
  n_sparse = draw(st.integers(1, min(3, n_ops)))
  sparse_at = set(draw(st.permutations(range(n_ops)))[:n_sparse])
  sizes = {c: draw(st.integers(1, 5), label=f"size_{c}") for c in LETTERS}
  terms, sparse = [], []
  for k in range(n_ops):
    rank = draw(st.integers(1, 3))
    term = "".join(draw(st.permutations(LETTERS))[:rank])
    spec = None
    if k in sparse_at:
      n_batch = draw(st.integers(0, 1)) if rank >= 2 else 0
      n_dense = draw(st.integers(0, 1)) if rank - n_batch >= 2 else 0
      fid, fmt = draw(st.sampled_from(FORMATS_BY_N_SPARSE[rank - n_batch - n_dense]))
      spec = (fid, fmt, n_batch, n_dense, draw(st.integers(0, 2)))
    terms.append(term)
    sparse.append(spec)
  used = list(dict.fromkeys("".join(terms)))
  out = "".join(draw(st.permutations(used))[:draw(st.integers(0, len(used)))])
  return Problem(",".join(terms) + "->" + out, terms, sparse, sizes)


def build(problem: Problem, rng):
  ops, refs = [], []
  for term, sp in zip(problem.terms, problem.sparse):
    shape = tuple(problem.sizes[c] for c in term)
    if sp is None:
      x = util.random_values(rng, shape, F64)
      ops.append(jnp.asarray(x))
    else:
      _, fmt, n_batch, n_dense, padding = sp
      A, x = util.random_sparse(rng, shape, fmt, n_batch=n_batch, n_dense=n_dense,
                                density=0.5, padding=padding, dtype=F64)
      ops.append(A)
    refs.append(x)
  return ops, refs


def dense(x):
  return x.todense() if js.is_sparse(x) else x


def capacities(problem: Problem, ops) -> dict:
  """Static capacities that always suffice (the test runs under one ``jit``): ``work`` =
  product of the sparse capacities (every combination of entries), ``nse`` = the number
  of output coordinates."""
  out = problem.subscripts.split("->")[1]
  caps = dict(nse=int(np.prod([problem.sizes[c] for c in out])))
  sparse = [o for o in ops if js.is_sparse(o)]
  if len(sparse) >= 2:
    caps["work"] = int(np.prod([A.nse * int(np.prod(A.layout.batch_shape)) for A in sparse]))
  return caps


@pytest.mark.slow
@hypothesis.settings(max_examples=25)
@hypothesis.given(problem=problems(), seed=st.integers(0, 2 ** 16))
def test_einsum_matches_numpy_with_grad_and_vmap(problem, seed):
  """Everything for one example is computed by one jitted function (one compilation)."""
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    ops, refs = build(problem, rng)
    expected = np.einsum(problem.subscripts, *refs)
    caps = capacities(problem, ops)
    einsum = lambda *o: js.einsum(problem.subscripts, *o, **caps)
    weight = jnp.asarray(util.random_values(rng, expected.shape, F64))
    kd = next((k for k, s in enumerate(problem.sparse) if s is None), None)
    ks = next(k for k, s in enumerate(problem.sparse) if s is not None)
    grad_at = [ks] + ([kd] if kd is not None else [])
    X = jnp.asarray(util.random_values(rng, (2,) + ops[kd].shape, F64)) if kd is not None \
        else None

    @jax.jit
    def run(ops, X):
      def put(vs):
        full = list(ops)
        for k, v in zip(grad_at, vs):
          full[k] = ops[k].with_data(v) if js.is_sparse(ops[k]) else v
        return full

      primals = [ops[k].data if js.is_sparse(ops[k]) else ops[k] for k in grad_at]
      result = einsum(*ops)
      loss = lambda *vs: jnp.sum(dense(einsum(*put(vs))) * weight)
      dense_loss = lambda *vs: jnp.sum(
          jnp.einsum(problem.subscripts, *[dense(o) for o in put(vs)]) * weight)
      argnums = tuple(range(len(grad_at)))
      grads = jax.grad(loss, argnums)(*primals)
      want = jax.grad(dense_loss, argnums)(*primals)
      mapped = None
      if X is not None:
        mapped = jax.vmap(lambda x: dense(einsum(*ops[:kd], x, *ops[kd + 1:])))(X)
      return result, grads, want, mapped

    result, grads, want, mapped = run(ops, X)
    util.assert_allclose(dense(result), expected, F64, err_msg=repr(problem))
    assert dense(result).dtype == F64

    for k, g, w in zip(grad_at, grads, want):
      shape = ops[k].data.shape if js.is_sparse(ops[k]) else ops[k].shape
      assert g.shape == shape
      util.assert_allclose(g, w, F64, err_msg=f"grad of operand {k}: {problem!r}")
    if grad_at and grad_at[0] == ks:
      A = ops[ks]
      padding = np.arange(A.nse) >= np.asarray(A.nnz).reshape(A.layout.batch_shape + (1,))
      np.testing.assert_array_equal(np.asarray(grads[0])[padding], 0)

    if mapped is not None:
      for n in range(2):
        want_n = np.einsum(problem.subscripts, *refs[:kd], np.asarray(X[n]), *refs[kd + 1:])
        util.assert_allclose(mapped[n], want_n, F64, err_msg=f"vmap element {n}: {problem!r}")
