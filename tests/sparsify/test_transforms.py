"""js.sparsify composes with jit, grad, vmap, nnx transforms (both orders) and control flow.

Gradients are checked against finite differences (``check_grads``, order 2, forward
and reverse) in float64: w.r.t. dense arguments, and w.r.t. the stored values of a
sparse argument (``A.with_data(d)``); ``js.grad`` returns a SparseArray with A's pattern.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jscorch as js
import util
from jscorch.sparsify import SparsifyError, sparsify

F64 = dict(rtol=1e-9, atol=1e-9)


def sp(seed, shape=(5, 6), dtype=np.float32, **kw):
  return util.random_sparse(seed, shape, "csr", padding=2, dtype=dtype, **kw)[0]


def dn(seed, shape, dtype=np.float32):
  return jnp.asarray(util.random_values(seed, shape, dtype))


def close(a, b, **tol):
  a = a.todense() if js.is_sparse(a) else a
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(tol or dict(rtol=2e-5, atol=2e-5)))


def spmm_loss(A, X):
  return jnp.sum(jnp.tanh(A @ X) ** 2)


def fused_loss(A, U, V, X):
  return jnp.sum(jnp.sin(((U @ V.T) * A) @ X))


def attention_loss(A, u, v):
  w = A * jnp.exp(jnp.tanh(u[:, None] + v[None, :]))
  return jnp.sum((w / jnp.sum(w, axis=1, keepdims=True)) ** 2)


def union_loss(A, B, x):
  C = jax.nn.relu(A - 0.5 * B) + A * B
  return jnp.sum((C @ x) ** 2) + jnp.sum(jnp.max(C, axis=0))


# -- gradients: check_grads order 2, float64 --------------------------------------------------
def _grad_case(name):
  A, B = sp(0, dtype=np.float64), sp(1, dtype=np.float64)
  X, x = dn(2, (6, 3), np.float64), dn(3, (6,), np.float64)
  U, V = dn(4, (5, 2), np.float64), dn(5, (6, 2), np.float64)
  u, v = dn(6, (5,), np.float64) * 0.3, dn(7, (6,), np.float64) * 0.3
  if name == "spmm":
    f = jax.jit(sparsify(spmm_loss))
    return lambda X, d: f(A.with_data(d), X), (X, A.data)
  if name == "fused":
    g = jax.jit(sparsify(fused_loss))
    return lambda U, d: g(A.with_data(d), U, V, X), (U, A.data)
  if name == "attention":                       # positive weights: row sums away from 0
    h = jax.jit(sparsify(attention_loss))
    return lambda u, d: h(A.with_data(d), u, v), (u, jnp.abs(A.data))
  k = jax.jit(sparsify(union_loss))
  return lambda a, b, x: k(A.with_data(a), B.with_data(b), x), (A.data, B.data, x)


@pytest.mark.parametrize("name", ["spmm", "fused", "attention", "union"])
def test_check_grads_dense_and_sparse_arguments(name):
  with jax.enable_x64(True):
    fn, args = _grad_case(name)
    util.check_grads_both(fn, args)


def test_js_grad_returns_sparse_gradient_with_the_pattern():
  with jax.enable_x64(True):
    A, X = sp(0, dtype=np.float64), dn(2, (6, 3), np.float64)
    gA, gX = js.grad(sparsify(spmm_loss), argnums=(0, 1))(A, X)
    assert js.is_sparse(gA) and gA.format == A.format and gA.nse == A.nse
    dA, dX = jax.grad(spmm_loss, argnums=(0, 1))(A.todense(), X)
    close(gA, dA * (A.todense() != 0), **F64)
    close(gX, dX, **F64)
    gA_jit = jax.jit(js.grad(sparsify(spmm_loss)))(A, X)
    close(gA_jit, dA * (A.todense() != 0), **F64)


def test_sparsify_of_grad_handles_transposed_programs():
  A, X = sp(0), dn(2, (6, 3))
  for argnums in (1, 0):
    out = sparsify(jax.grad(spmm_loss, argnums=argnums))(A, X)
    close(out, jax.grad(spmm_loss, argnums=argnums)(A.todense(), X), rtol=1e-4, atol=1e-4)
  U, V = dn(4, (5, 2)), dn(5, (6, 2))
  out = sparsify(jax.grad(fused_loss, argnums=(1, 2)))(A, U, V, X)
  ref = jax.grad(fused_loss, argnums=(1, 2))(A.todense(), U, V, X)
  for o, r in zip(out, ref):
    close(o, r, rtol=1e-4, atol=1e-4)
  hvp = sparsify(lambda A, X, T: jax.jvp(jax.grad(spmm_loss, 1), (A, X), (A * 0, T))[1])
  close(hvp(A, X, X), jax.jvp(jax.grad(spmm_loss, 1), (A.todense(), X),
                              (0 * A.todense(), X))[1], rtol=1e-4, atol=1e-4)


# -- jit and vmap, both orders -------------------------------------------------------------
def test_jit_both_orders():
  A, X = sp(0), dn(2, (6, 3))
  ref = spmm_loss(A.todense(), X)
  close(jax.jit(sparsify(spmm_loss))(A, X), ref)
  close(sparsify(jax.jit(spmm_loss))(A, X), ref)
  close(jax.jit(sparsify(jax.jit(spmm_loss)))(A, X), ref)
  out = sparsify(jax.jit(lambda A: 2.0 * A))(A)
  assert js.is_sparse(out)


def test_vmap_both_orders():
  Ab = sp(0, (3, 5, 6), n_batch=1)
  Xb, X = dn(1, (3, 6, 2)), dn(2, (6, 2))
  ref = jnp.einsum("bij,bjk->bik", Ab.todense(), Xb)
  f = lambda A, X: A @ X
  close(jax.vmap(sparsify(f))(Ab, Xb), ref)
  close(sparsify(jax.vmap(f))(Ab, Xb), ref)
  close(jax.vmap(sparsify(f), in_axes=(0, None))(Ab, X), Ab.todense() @ X)
  A = sp(3)
  close(jax.vmap(sparsify(f), in_axes=(None, 0))(A, Xb), jnp.einsum("ij,bjk->bik",
                                                                  A.todense(), Xb))
  g = lambda A, u: jnp.sum(A * jnp.exp(u)[:, None], axis=1)
  close(jax.jit(jax.vmap(sparsify(g)))(Ab, dn(4, (3, 5))),
        jax.vmap(g)(Ab.todense(), dn(4, (3, 5))))


# -- flax nnx transforms ----------------------------------------------------------------------
def test_nnx_transforms_both_orders():
  model = nnx.Linear(6, 3, rngs=nnx.Rngs(0))
  A, y = sp(0), dn(1, (5, 3))

  def loss(model, x):
    return jnp.mean((jax.nn.gelu(model(x)) - y) ** 2)

  ref_loss = loss(model, A.todense())
  ref_grads = nnx.grad(loss)(model, A.todense())
  close(nnx.jit(sparsify(loss))(model, A), ref_loss)
  close(sparsify(nnx.jit(loss))(model, A), ref_loss)
  for grads in (nnx.grad(sparsify(loss))(model, A), sparsify(nnx.grad(loss))(model, A),
                nnx.jit(nnx.grad(sparsify(loss)))(model, A)):
    close(grads["kernel"][...], ref_grads["kernel"][...], rtol=1e-4, atol=1e-5)
    close(grads["bias"][...], ref_grads["bias"][...], rtol=1e-4, atol=1e-5)


# -- control flow and custom rules -------------------------------------------------------------
def test_cond_with_sparse_operands():
  A = sp(0)
  f = lambda A, p: jax.lax.cond(p, lambda A: 2.0 * A, lambda A: -A, A)
  for p in (True, False):
    out = jax.jit(sparsify(f))(A, p)
    assert js.is_sparse(out)
    close(out, f(A.todense(), p))
  g = lambda A, p, x: jax.lax.cond(p, lambda: A @ x, lambda: jnp.exp(x[:5]))
  for p in (True, False):
    close(jax.jit(sparsify(g))(A, p, dn(1, (6,))), g(A.todense(), p, dn(1, (6,))))
  mixed = lambda A, B, p: jax.lax.cond(p, lambda A, B: A, lambda A, B: A + B, A, B)
  with pytest.raises(SparsifyError, match=r"'cond' at .*test_transforms.py.*layouts differ"):
    jax.jit(sparsify(mixed))(A, sp(1), True)
  with pytest.warns(js.SparseEfficiencyWarning, match="'cond'"):
    out = jax.jit(sparsify(mixed, densify=True))(A, sp(1), False)
  close(out, A.todense() + sp(1).todense())


def test_scan_and_while_with_sparse_constants():
  A = sp(0, (6, 6))
  x = dn(1, (6,))
  s = lambda A, x: jax.lax.scan(lambda c, _: (jnp.tanh(A @ c), jnp.sum(c)), x, None, length=3)
  for fn in (sparsify(s), jax.jit(sparsify(s))):
    out, ref = fn(A, x), s(A.todense(), x)
    close(out[0], ref[0])
    close(out[1], ref[1])
  w = lambda A, x: jax.lax.fori_loop(0, 3, lambda i, c: jnp.tanh(A @ c) + c, x)
  close(jax.jit(sparsify(w))(A, x), w(A.todense(), x))
  close(jax.grad(lambda x: jnp.sum(sparsify(w)(A, x)))(x),
        jax.grad(lambda x: jnp.sum(w(A.todense(), x)))(x), rtol=1e-4, atol=1e-4)
  Ab = sp(2, (3, 6, 6), n_batch=1)
  over = lambda As, x: jax.lax.scan(lambda c, a: (a @ c, None), x, As)[0]
  close(sparsify(over)(Ab, x), over(Ab.todense(), x), rtol=1e-4, atol=1e-4)


def test_custom_rules_on_dense_operands_are_kept():
  """A custom derivative applied to a dense value computed from a sparse one (``A @ x``,
  pending in the fusion pass) is JAX's: the straight-through round's identity cotangent,
  ReLU's 0 at an exactly-zero pre-activation (an empty row of ``A``), not the body's."""
  @jax.custom_vjp
  def ste_round(x):
    return jnp.round(x)

  ste_round.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))
  with jax.enable_x64(True):
    A = js.from_dense(np.array([[1., 0., 2.], [0., 0., 0.], [0., 3., -1.]]))
    x, w = jnp.asarray(dn(3, (3, 2), np.float64)), jnp.asarray([1., 2., 3.])
    for f in [lambda A, x: jnp.sum(ste_round(A @ x) * w[:, None]),
              lambda A, x: jnp.sum(jax.nn.relu(A @ x) * w[:, None])]:
      want = jax.grad(f, 1)(A.todense(), x)
      close(jax.grad(sparsify(f), 1)(A, x), want, **F64)
      close(jax.jit(jax.grad(sparsify(f), 1))(A, x), want, **F64)


def test_custom_jvp_and_custom_vjp_bodies_are_entered():
  @jax.custom_vjp
  def double(x):
    return 2.0 * x

  double.defvjp(lambda x: (2.0 * x, None), lambda _, g: (2.0 * g,))

  @jax.custom_jvp
  def softplus0(x):                 # zero-preserving: log(1 + e^x) - log 2
    return jnp.logaddexp(x, 0.0) - jnp.log(2.0)

  softplus0.defjvp(lambda p, t: (softplus0(p[0]), jax.nn.sigmoid(p[0]) * t[0]))
  A, X = sp(0), dn(1, (6, 2))
  f = lambda A, X: jnp.sum((double(jax.nn.relu(A)) @ X) ** 2)
  close(sparsify(f)(A, X), f(A.todense(), X))
  close(jax.grad(sparsify(f), 1)(A, X), jax.grad(f, 1)(A.todense(), X), rtol=1e-4, atol=1e-4)
  g = lambda A, Y: jnp.sum(A * softplus0(Y) + A * softplus0(A) * Y)   # sampled at A
  Y = dn(2, (5, 6))
  close(sparsify(g)(A, Y), g(A.todense(), Y))
  close(jax.grad(sparsify(g), 1)(A, Y), jax.grad(g, 1)(A.todense(), Y), rtol=1e-4, atol=1e-4)


def test_blocked_operands():
  """BSR operands: maps and sampled divisions run on the blocks; an op without a blocked
  rule (a slice, a select, a loop carry) densifies with ``densify=True`` and otherwise
  raises a SparsifyError naming the primitive (not an error from the layout underneath)."""
  x = np.array([[1., -2., 0., 0.], [3., 4., 0., 0.], [0., 0., 0., 0.], [0., 0., 5., -6.]])
  A, X = js.from_dense(x, format=js.BSR((2, 2))), dn(4, (4, 3))
  fine = [lambda A: jax.nn.relu(A) @ X, lambda A: A / (1 + jnp.abs(A).sum(1))[:, None]]
  dense_only = [lambda A: A[:, :2] @ X[:2], lambda A: jnp.where(A > 0, A, 0) @ X,
                lambda A: jax.lax.fori_loop(0, 2, lambda i, c: c * 0.5, A)]
  for f in fine:
    out = sparsify(f)(A)
    close(out.todense() if js.is_sparse(out) else out, f(jnp.asarray(x)))
  for f in dense_only:
    with pytest.warns(js.SparseEfficiencyWarning, match=r"has no rule for blocked operands"):
      out = sparsify(f, densify=True)(A)
    close(out.todense() if js.is_sparse(out) else out, f(jnp.asarray(x)))
    with pytest.raises(SparsifyError, match=r"has no rule for blocked operands"):
      sparsify(f)(A)
