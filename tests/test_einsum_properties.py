"""Property test of ``js.einsum``: random expressions, formats and padding vs numpy.

Hypothesis draws an einsum over 1–4 operands (1–3 of them sparse) of rank 1–3
with shared and summed indices of sizes 1–5; each sparse operand gets a random
format valid for its number of sparse dimensions (named and custom, all-dense ones and
dense last levels), possibly a batch dimension (rank ≥ 2) or a dense block dimension,
and 0–2 padding slots.
A sparse operand may also hold **repeated coordinates** (the non-unique version of
its format, built with ``js.from_coo``: the array holds their sum), and may first go
through a zero-preserving function drawn from ``js.ZERO_PRESERVING`` (``js.sin(A)``,
``js.relu(A)``, ...), which must see the summed duplicates. The test checks:

* the value against ``np.einsum`` on float64 dense references (the function's
  numpy reference applied to the dense sum of the duplicates);
* ``jax.grad`` of a weighted sum w.r.t. a dense operand and w.r.t. the stored values
  of a sparse operand, against dense JAX autodiff of the same loss (the sparse
  values enter the reference through ``todense``), padding slots getting zero;
* ``jax.vmap`` over a leading axis of a dense operand against a stacked loop.

:func:`test_every_zero_preserving_function_on_repeated_coordinates` runs every
function of the table through one einsum (one compilation), so the coverage of the
table does not depend on what hypothesis draws.
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
from test_unary import NAMES, TRANSFORMS, prepare, reference

F64 = np.float64
LETTERS = "abcdef"
# The suite's formats, and formats of dense levels: all-dense ones (a driver whose sparse
# partners are converted to its levels) and dense last levels (block dimensions that a
# joined partner's level may bind).
DENSE_DENSE = js.Format(js.dense, js.dense)
FORMATS_BY_N_SPARSE = {
    1: [("compressed", js.Format(js.compressed)), ("dense", js.Format(js.dense))],
    2: util.FORMATS_2D + [("dense_dense", DENSE_DENSE),
                          ("dense_dense_col_major", DENSE_DENSE.replace(mode_ordering=(1, 0))),
                          ("compressed_dense", js.Format(js.compressed, js.dense))],
    3: util.FORMATS_3D + [("dense_compressed_dense",
                           js.Format(js.dense, js.compressed, js.dense))],
}


@dataclasses.dataclass
class Problem:
  subscripts: str
  terms: list                 # per operand: letters
  sparse: list                # per operand: None or (format id, format, n_batch, n_dense,
  sizes: dict                 #                         padding, duplicates, function name)

  def __repr__(self):
    ops = ", ".join(f"{t}:{s[0]}(nb={s[2]},nd={s[3]},pad={s[4]},dup={s[5]},fn={s[6]})"
                    if s else f"{t}:dense" for t, s in zip(self.terms, self.sparse))
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
      padding = draw(st.integers(0, 2))
      duplicates = draw(st.integers(0, 2)) if fmt.levels[-1].kind != "dense" else 0
      fn = draw(st.one_of(st.none(), st.sampled_from(NAMES)))
      spec = (fid, fmt, n_batch, n_dense, padding, duplicates, fn)
    terms.append(term)
    sparse.append(spec)
  used = list(dict.fromkeys("".join(terms)))
  out = "".join(draw(st.permutations(used))[:draw(st.integers(0, len(used)))])
  return Problem(",".join(terms) + "->" + out, terms, sparse, sizes)


def nonunique(fmt: js.Format) -> js.Format:
  """``fmt`` with its last level non-unique, so it may store a coordinate twice."""
  return fmt.replace(levels=fmt.levels[:-1] + (fmt.levels[-1](unique=False),))


def with_duplicates(rng, shape, fmt, n_batch, n_dense, padding, duplicates, transform):
  """A sparse array of the non-unique ``fmt`` storing ``duplicates`` repeated coordinates
  per batch element (values ``transform``-ed), and the float64 dense sum it holds."""
  n_sparse = len(shape) - n_batch - n_dense
  size = int(np.prod(shape[n_batch:n_batch + n_sparse]))
  n = max(1, (size + 1) // 2) + duplicates
  idx, values, _ = util.random_coo(rng, shape, n, n_batch=n_batch, n_dense=n_dense,
                                   duplicates=duplicates, dtype=F64)
  values = transform(values)
  x = np.zeros(shape, F64)
  for b in np.ndindex(*shape[:n_batch]):
    np.add.at(x[b], tuple(idx[b].T), values[b])
  return js.from_coo(idx, values, shape, format=nonunique(fmt), nse=n + padding), x


def build(problem: Problem, rng):
  """Operands and the float64 dense references of what the einsum sees (functions applied)."""
  ops, refs = [], []
  for term, sp in zip(problem.terms, problem.sparse):
    shape = tuple(problem.sizes[c] for c in term)
    if sp is None:
      x = util.random_values(rng, shape, F64)
      ops.append(jnp.asarray(x))
    else:
      _, fmt, n_batch, n_dense, padding, duplicates, fn = sp
      tf = TRANSFORMS[prepare(fn)] if fn else TRANSFORMS["plain"]
      if duplicates:
        A, x = with_duplicates(rng, shape, fmt, n_batch, n_dense, padding, duplicates, tf)
      else:
        A, x = util.random_sparse(rng, shape, fmt, n_batch=n_batch, n_dense=n_dense,
                                  density=0.5, padding=padding, dtype=F64)
        A, x = A.with_data(tf(A.data)), tf(x)
      if fn:
        x = reference(fn)(x)
      ops.append(A)
    refs.append(x)
  return ops, refs


def functions(problem: Problem):
  """Per operand: the sparse function (``js.<fn>``) and its dense twin, or identities."""
  ident = lambda x: x
  fns = [(getattr(js, sp[6]), js.ZERO_PRESERVING[sp[6]].fn) if sp and sp[6] else (ident, ident)
         for sp in problem.sparse]
  return [f for f, _ in fns], [g for _, g in fns]


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
@hypothesis.settings(max_examples=10)
@hypothesis.given(problem=problems(), seed=st.integers(0, 2 ** 16))
def test_einsum_matches_numpy_with_grad_and_vmap(problem, seed):
  """Everything for one example is computed by one jitted function (one compilation)."""
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    ops, refs = build(problem, rng)
    expected = np.einsum(problem.subscripts, *refs)
    caps = capacities(problem, ops)
    fns, dense_fns = functions(problem)
    einsum = lambda *o: js.einsum(problem.subscripts, *[f(x) for f, x in zip(fns, o)], **caps)
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
      dense_loss = lambda *vs: jnp.sum(jnp.einsum(
          problem.subscripts, *[g(dense(o)) for g, o in zip(dense_fns, put(vs))]) * weight)
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


def test_every_zero_preserving_function_on_repeated_coordinates():
  """``js.einsum`` of ``f(A)`` for every zero-preserving ``f`` (one compilation): ``A`` a
  batched COO with repeated coordinates and padding; a dense and a sampled result."""
  rng = np.random.default_rng(7)
  with jax.enable_x64(True):
    shape = (2, 4, 5)
    arrays, xs = {}, {}
    for t, tf in TRANSFORMS.items():
      arrays[t], xs[t] = with_duplicates(np.random.default_rng(3), shape, js.COO, 1, 0, 2, 3, tf)
    X = jnp.asarray(util.random_values(rng, (2, 5, 3), F64))
    W = jnp.asarray(util.random_values(rng, shape, F64))

    @jax.jit
    def run(arrays, X, W):
      out = {}
      for n in NAMES:
        B = getattr(js, n)(arrays[prepare(n)])
        out[n] = (js.einsum("bij,bjk->bik", B, X), js.einsum("bij,bij->bij", B, W).todense())
      return out

    out = run(arrays, X, W)
    assert not arrays["plain"].format.unique
    for n in NAMES:
      fx = reference(n)(xs[prepare(n)])
      util.assert_allclose(out[n][0], np.einsum("bij,bjk->bik", fx, np.asarray(X)), F64,
                           err_msg=n)
      util.assert_allclose(out[n][1], fx * np.asarray(W), F64, err_msg=n)
