"""Random short programs over the covered primitives: sparsify(f)(sparse) == f(dense).

Hypothesis draws a chain of shape-preserving steps (products, unions, zero-preserving
functions, masks, transposes) on a sparse ``(4, 5)`` operand and a final reduction or
product; the sparsified program must give the dense program's values.
"""
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np

import jscorch as js
import util
from jscorch.sparsify import sparsify

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


@hypothesis.settings(max_examples=30, deadline=None, derandomize=True)
@hypothesis.given(steps=st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=4),
                  final=st.sampled_from(sorted(FINALS)))
def test_random_programs(steps, final):
  def program(x, o):
    for s in steps:
      x = STEPS[s](x, o)
    return FINALS[final](x, o)

  out = sparsify(program)(A, OTHER)
  ref = program(A.todense(), DENSE_OTHER)
  out = out.todense() if js.is_sparse(out) else out
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
