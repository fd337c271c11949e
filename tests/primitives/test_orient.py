"""Operand orientation (primitives/orient.py): every way of writing a product with a sparse
operand gets a vectorised kernel (or, for a sampled output, contiguous reductions), with
values and gradients equal to the dense float64 product.

The sweep covers the operand orders and transposes a user writes (``x @ W``, ``W @ x``,
``x @ W.T``, ``W.T @ x``, ``(W.T @ x.T).T`` ...) for CSR and CSC weights; the kernel
decisions of the forward and of both gradients (``dx``: dense output, ``dW``: sampled at
``W``'s pattern) are checked, so no orientation is left to a strided scalar kernel.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import util

import jscorch as js
from jscorch.primitives import einsum_kernel, kernel_build
from jscorch.primitives import loopnest as ir
from jscorch.primitives.einsum_spec import DENSE_OUT, SAMPLED_OUT, EinsumSpec, Operand
from jscorch.primitives.formats import CSR
from jscorch.primitives.layout import Layout
from jscorch.primitives.orient import free_indices, orient

pytestmark = pytest.mark.skipif(kernel_build.compiler() is None, reason="no C compiler")

# (name, product of dense x [12, 9] / x.T-shaped and sparse W [9, 7] / W [12, 9]-shaped)
PRODUCTS = {
    "x@W": (lambda x, W: x @ W, lambda x, w: x @ w, (12, 9), (9, 7)),
    "W@x": (lambda x, W: W @ x, lambda x, w: w @ x, (7, 12), (9, 7)),
    "x@W.T": (lambda x, W: x @ W.T, lambda x, w: x @ w.T, (12, 7), (9, 7)),
    "W.T@x": (lambda x, W: W.T @ x, lambda x, w: w.T @ x, (9, 12), (9, 7)),
    "(W.T@x.T).T": (lambda x, W: (W.T @ x.T).T, lambda x, w: (w.T @ x.T).T, (12, 9), (9, 7)),
    "x.T@W": (lambda x, W: x.T @ W, lambda x, w: x.T @ w, (9, 12), (9, 7)),
    "einsum_ki,kj->ij": (lambda x, W: js.einsum("ki,kj->ji", x, W),
                         lambda x, w: np.einsum("ki,kj->ji", x, w), (9, 12), (9, 7)),
}


def _kernel(spec):
  k, reason = einsum_kernel.kernel_plan(spec, [object()] * spec.n_inputs, np.float32)
  assert reason == "kernel", (str(spec), reason)
  return k


def _contiguous_free(spec: EinsumSpec) -> bool:
  """The spec's one free index is last in every dense operand holding it."""
  (r,) = free_indices(spec)
  return all(op.indices[-1] == r for op in spec.operands if not op.sparse and r in op.indices)


def _check_decisions(decisions):
  assert decisions and all(r == "kernel" for _, r in decisions), decisions
  for spec, _ in decisions:
    k = _kernel(spec)
    if spec.out_kind == DENSE_OUT:
      assert isinstance(k, ir.Kernel) and k.vector is not None and k.vector.coord is not None, \
          f"{spec}: a scalar kernel"
    else:
      assert spec.out_kind == SAMPLED_OUT and _contiguous_free(spec), f"{spec}: strided"


@pytest.mark.parametrize("fmt", ["csr", "csc"])
@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_every_orientation_vectorises(name, fmt):
  product, reference, x_shape, w_shape = PRODUCTS[name]
  rng = np.random.default_rng(len(name))
  w = util.random_dense(rng, w_shape, density=0.4)
  W = js.from_dense(jnp.asarray(w), format=fmt, nse=util.stored_count(w, 0, 0) + 2)
  x = jnp.asarray(util.random_values(rng, x_shape, np.float32))
  einsum_kernel.last_decisions.clear()
  out = jax.jit(product)(x, W)
  _check_decisions(list(einsum_kernel.last_decisions))
  util.assert_allclose(out, reference(util.reference(x), util.reference(w)), dtype=np.float32)

  def loss(d, x):
    return jnp.sum(jnp.sin(product(x, W.with_data(d))))

  einsum_kernel.last_decisions.clear()
  gd, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(W.data, x)
  _check_decisions(list(einsum_kernel.last_decisions))
  dense_loss = lambda wd, x: jnp.sum(jnp.sin(product(x, wd)))       # noqa: E731
  rw, rx = jax.grad(dense_loss, argnums=(0, 1))(jnp.asarray(w, jnp.float32), x)
  util.assert_allclose(gx, rx, dtype=np.float32)
  util.assert_allclose(W.with_data(gd).todense(), np.asarray(rw) * (w != 0), dtype=np.float32)


def test_orient_specs():
  lay = Layout(CSR, (5, 6), 9)
  spmm = EinsumSpec((Operand((0, 1), lay), Operand((1, 2))), out=(0, 2),
                    sizes=((0, 5), (1, 6), (2, 4)))
  assert orient(spmm) is None                         # already oriented
  flipped = spmm.replace(out=(2, 0))                  # (A @ X).T
  o = orient(flipped)
  assert o.spec.out == (0, 2) and o.out_perm == (1, 0) and o.operand_perms == (None, None)
  two_free = EinsumSpec((Operand((0, 1), lay), Operand((1, 2, 3))), out=(3, 0, 2),
                        sizes=((0, 5), (1, 6), (2, 4), (3, 2)))
  assert orient(two_free) is None                     # two free indices: left as written
  sddmm = EinsumSpec((Operand((2, 0)), Operand((2, 1))), out=(0, 1),
                     sizes=((0, 5), (1, 6), (2, 4)), out_kind=SAMPLED_OUT, out_layout=lay)
  o = orient(sddmm)
  assert [op.indices for op in o.spec.operands] == [(0, 2), (1, 2)]
  assert o.operand_perms == ((1, 0), (1, 0)) and o.out_perm is None
  diagonal = EinsumSpec((Operand((0, 1), lay), Operand((2, 2))), out=(0, 2),
                        sizes=((0, 5), (1, 6), (2, 6)))
  assert orient(diagonal) is None                     # a repeated free index


def test_portable_lowering_is_not_oriented():
  """The portable lowering runs the spec as written (orientation is a kernel decision)."""
  W = js.from_dense(jnp.asarray(util.random_dense(3, (6, 5), density=0.5)), format="csr")
  x = jnp.asarray(util.random_values(4, (4, 6), np.float32))
  previous = js.config.lowering
  js.config.lowering = "portable"
  try:
    einsum_kernel.last_decisions.clear()
    hlo = jax.jit(lambda x, W: x @ W).lower(x, W).as_text()
    assert "jscorch_k_" not in hlo
    assert [r for _, r in einsum_kernel.last_decisions] == ["portable"]
  finally:
    js.config.lowering = previous
