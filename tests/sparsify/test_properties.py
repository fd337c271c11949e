"""Random short programs over the covered primitives: sparsify(f)(sparse) == f(dense).

Hypothesis draws a chain of shape-preserving steps (products, unions, zero-preserving
functions, masks, transposes) on a sparse ``(4, 5)`` operand (CSR, or a COO holding
repeated coordinates) and a final reduction or product; the sparsified program must
give the dense program's values.

Repeated coordinates: a non-unique format stores some coordinates twice and holds
their sum, so ``jnp.sin(x)`` inside ``js.sparsify`` must be ``sin(a + b)``. One
property test applies a drawn function of ``js.ZERO_PRESERVING`` (its ``jax.numpy``
/ ``jax.nn`` original, as user code calls it) to operands of several formats with
duplicates, batch and block dims and padding, against float64 numpy on the dense
sum; another runs every function of the table at once, eagerly and under ``jit``.
"""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import jscorch as js
import util
from jscorch.ops.unary import ZERO_PRESERVING
from jscorch.sparsify import sparsify
from test_unary import NAMES, case, prepare, reference

STEPS = {
    "scale": lambda x, o: 1.5 * x,
    "neg": lambda x, o: -x,
    "sin": lambda x, o: jnp.sin(x),
    "relu": lambda x, o: jax.nn.relu(x),
    "square": lambda x, o: x ** 2,
    "mul_dense": lambda x, o: x * o["D"],
    "mul_row": lambda x, o: x * o["r"],
    "div_col": lambda x, o: x / o["c"][:, None],
    "add_sparse": lambda x, o: x + o["B"],
    "sub_sparse": lambda x, o: x - 0.5 * o["B"],
    "mul_sparse": lambda x, o: x * o["B"],
    "mask": lambda x, o: jnp.where(o["M"], x, 0.0),
    "transpose_twice": lambda x, o: x.T.T,
    "tanh_sampled": lambda x, o: x * jnp.tanh(o["r"][None, :] + o["c"][:, None]),
    "sddmm": lambda x, o: x * (o["U"] @ o["V"].T),
    "abs": lambda x, o: jnp.abs(x),
}
FINALS = {
    "matmul": lambda x, o: x @ o["X"],
    "sum0": lambda x, o: jnp.sum(x, axis=0),
    "sum1": lambda x, o: jnp.sum(x, axis=1),
    "max1": lambda x, o: jnp.max(x, axis=1),
    "rmatmul": lambda x, o: o["X"].T @ x.T,
    "none": lambda x, o: x,
}


def operands():
  rng = np.random.default_rng(0)
  A = util.random_sparse(rng, (4, 5), "csr", padding=2)[0]
  B = util.random_sparse(rng, (4, 5), "coo", padding=1)[0]
  vals = lambda shape: jnp.asarray(util.random_values(rng, shape, np.float32))
  other = dict(B=B, D=vals((4, 5)), r=vals((5,)), c=vals((4,)), X=vals((5, 3)),
               U=vals((4, 2)), V=vals((5, 2)), M=jnp.asarray(rng.random((4, 5)) < 0.5))
  return A, other


A, OTHER = operands()
DENSE_OTHER = {k: (v.todense() if js.is_sparse(v) else v) for k, v in OTHER.items()}
BASES = {"csr": A, "coo_duplicates": case("coo_duplicates")[0]}


@hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
@hypothesis.given(steps=st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=4),
                  final=st.sampled_from(sorted(FINALS)), base=st.sampled_from(sorted(BASES)))
def test_random_programs(steps, final, base):
  def program(x, o):
    for s in steps:
      x = STEPS[s](x, o)
    return FINALS[final](x, o)

  X = BASES[base]
  out = sparsify(program)(X, OTHER)
  ref = program(X.todense(), DENSE_OTHER)
  out = out.todense() if js.is_sparse(out) else out
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)


# -- every zero-preserving function on repeated coordinates ----------------------------------
CASES = ["coo_duplicates", "batched_coo_duplicates", "coo_blocks_duplicates", "coo3_duplicates",
         "csr_batched_blocks"]
PRE = {   # steps before the function; each keeps the drawn function's domain
    "none": (lambda x, m: x, lambda x, m: x),
    "scale": (lambda x, m: 0.5 * x, lambda x, m: 0.5 * x),
    "neg": (lambda x, m: -x, lambda x, m: -x),
    "mask": (lambda x, m: jnp.where(m, x, 0.0), lambda x, m: np.where(m, x, 0.0)),
}
POST = {
    "none": (lambda y, d: y, lambda y, d: y),
    "sum_last": (lambda y, d: jnp.sum(y, axis=-1), lambda y, d: np.sum(y, axis=-1)),
    "mul_dense": (lambda y, d: y * d, lambda y, d: y * d),
}


def _dense(y):
  return util.jit_todense(y) if js.is_sparse(y) else y


@hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
@hypothesis.given(name=st.sampled_from(NAMES), case_id=st.sampled_from(CASES),
                  pre=st.sampled_from(sorted(PRE)), post=st.sampled_from(sorted(POST)))
def test_zero_preserving_functions_on_repeated_coordinates(name, case_id, pre, post):
  """``sparsify(post(f(pre(x))))`` for a drawn zero-preserving ``f`` equals numpy's ``f`` of
  the dense sum of the duplicates."""
  if name == "sqrt" and pre == "neg":
    pre = "none"                     # sqrt's operands are positive sums
  X, x = case(case_id, prepare(name))
  rng = np.random.default_rng(len(name))
  m = rng.random(x.shape) < 0.7
  d = util.random_values(rng, x.shape, np.float32)
  (pre_js, pre_np), (post_js, post_np) = PRE[pre], POST[post]
  fn = ZERO_PRESERVING[name].fn
  out = sparsify(lambda X, m, d: post_js(fn(pre_js(X, m)), d))(X, jnp.asarray(m), jnp.asarray(d))
  want = post_np(reference(name)(pre_np(x, m)), util.reference(d))
  np.testing.assert_allclose(np.asarray(_dense(out), np.float64), want, rtol=2e-5, atol=2e-5,
                             err_msg=f"{name}, {case_id}, {pre}, {post}")
  if post == "none" and name != "imag":
    assert js.is_sparse(out) and out.nse == X.nse


def test_every_zero_preserving_function_on_repeated_coordinates():
  """Every function of the table in one sparsified program (one coalescing per pattern),
  eagerly and under ``jit``, on a batched COO with repeated coordinates."""
  arrays, refs = {}, {}
  for t in ("plain", "small", "positive"):
    arrays[t], refs[t] = case("batched_coo_duplicates", t)

  def program(arrays):
    return {n: ZERO_PRESERVING[n].fn(arrays[prepare(n)]) for n in NAMES}

  for run in (sparsify(program), jax.jit(sparsify(program))):
    out = run(arrays)
    for n in NAMES:
      want = reference(n)(refs[prepare(n)])
      np.testing.assert_allclose(np.asarray(_dense(out[n]), np.float64), want, rtol=2e-5,
                                 atol=2e-5, err_msg=n)
      if n != "imag":
        assert js.is_sparse(out[n]) and out[n].nse == arrays["plain"].nse, n
