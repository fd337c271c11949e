"""js.sparsify fuses chains of products over one sparse pattern into ONE js.einsum.

The plan is checked on the program sparsify emits (``jax.make_jaxpr``): the
number of ``jscorch_einsum`` equations, the operand count of their spec, and the
absence of any dense value of the sampled product's shape (it is never formed).
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import subjaxprs

import jscorch as js
import util
from jscorch.sparsify import sparsify

M, N, K, L = 7, 6, 3, 2


def eqns(jaxpr):
  """Every equation of ``jaxpr`` and of its sub-jaxprs (jit bodies, branches ...)."""
  yield from jaxpr.eqns
  for sub in subjaxprs(jaxpr):
    yield from eqns(sub)


def einsums(fn, *args):
  closed = jax.make_jaxpr(fn)(*args)
  found = [e for e in eqns(closed.jaxpr) if e.primitive.name == "jscorch_einsum"]
  shapes = {tuple(v.aval.shape) for e in eqns(closed.jaxpr) for v in e.outvars}
  return found, shapes, closed


def data():
  A = util.random_sparse(0, (M, N), "csr", padding=2)[0]
  U = jnp.asarray(util.random_values(1, (M, K), np.float32))
  V = jnp.asarray(util.random_values(2, (N, K), np.float32))
  X = jnp.asarray(util.random_values(3, (N, L), np.float32))
  return A, U, V, X


def test_sddmm_then_spmm_is_one_plan():
  A, U, V, X = data()
  f = lambda A, U, V, X: ((U @ V.T) * A) @ X
  found, shapes, _ = einsums(sparsify(f), A, U, V, X)
  assert len(found) == 1
  spec = found[0].params["spec"]
  assert len(spec.operands) == 4 and spec.out_kind == "dense"
  assert sum(op.sparse for op in spec.operands) == 1
  assert (M, N) not in shapes                     # the sampled product is never formed
  out = sparsify(f)(A, U, V, X)
  unfused = js.einsum("ij,ij->ij", A, U @ V.T) @ X          # two separate einsums
  np.testing.assert_allclose(out, unfused, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out, f(A.todense(), U, V, X), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(sparsify(f))(A, U, V, X), out, rtol=1e-6, atol=1e-6)


def test_masked_row_sum_is_one_plan():
  A, U, V, _ = data()
  f = lambda A, B, C: jnp.sum(A * (B @ C), axis=1)
  found, shapes, _ = einsums(sparsify(f), A, U, V.T)
  assert len(found) == 1 and len(found[0].params["spec"].operands) == 3
  assert found[0].params["spec"].out == (found[0].params["spec"].operands[0].indices[0],) or \
      len(found[0].params["spec"].out) == 1
  assert (M, N) not in shapes
  np.testing.assert_allclose(sparsify(f)(A, U, V.T), f(A.todense(), U, V.T), rtol=1e-5,
                             atol=1e-5)


def test_sampled_product_stays_sparse_in_one_plan():
  A, U, V, _ = data()
  f = lambda A, U, V: 0.5 * (A * (U @ V.T)).T
  found, shapes, _ = einsums(sparsify(f), A, U, V)
  assert len(found) == 1 and found[0].params["spec"].out_kind == "sampled"
  out = sparsify(f)(A, U, V)
  assert js.is_sparse(out) and out.shape == (N, M)
  np.testing.assert_allclose(out.todense(), f(A.todense(), U, V), rtol=1e-5, atol=1e-5)


def test_scalars_negation_and_transposes_fuse():
  A, U, V, X = data()
  f = lambda A, U, V, X: (-(2.0 * (A * (U @ V.T))).T).T @ X / 3.0
  found, _, _ = einsums(sparsify(f), A, U, V, X)
  assert len(found) == 1
  np.testing.assert_allclose(sparsify(f)(A, U, V, X), f(A.todense(), U, V, X), rtol=1e-5,
                             atol=1e-5)


def test_fusion_stops_at_nonlinear_consumers():
  A, U, V, X = data()
  f = lambda A, U, V, X: jnp.tanh((U @ V.T) * A) @ X
  found, shapes, _ = einsums(sparsify(f), A, U, V, X)
  assert len(found) == 2 and (M, N) not in shapes
  np.testing.assert_allclose(sparsify(f)(A, U, V, X), f(A.todense(), U, V, X), rtol=1e-5,
                             atol=1e-5)


def test_elementwise_dense_factor_is_sampled_at_the_pattern():
  A, U, V, _ = data()
  u, v = U[:, 0], V[:, 0]
  f = lambda A, u, v: (A * jnp.exp(jax.nn.leaky_relu(u[:, None] + v[None, :]))).sum(1)
  _, shapes, _ = einsums(sparsify(f), A, u, v)
  assert (M, N) not in shapes                     # exp is evaluated at stored entries only
  np.testing.assert_allclose(sparsify(f)(A, u, v), f(A.todense(), u, v), rtol=1e-5, atol=1e-5)


def test_fused_gradients_match_dense():
  A, U, V, X = data()
  f = lambda U, A, V, X: jnp.sum((((U @ V.T) * A) @ X) ** 2)
  g = jax.jit(jax.grad(sparsify(f)))(U, A, V, X)
  np.testing.assert_allclose(g, jax.grad(f)(U, A.todense(), V, X), rtol=1e-4, atol=1e-4)
  found, shapes, _ = einsums(jax.grad(sparsify(f)), U, A, V, X)
  assert (M, N) not in shapes and all(
      sum(op.sparse for op in e.params["spec"].operands) <= 1 for e in found)
