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
from jscorch.primitives.orient import RESTAGE, TILE_VECTORS, free_indices, orient, tiling

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


# Staged tiles: products whose free index spans several tiles (the last one partial) and
# sits first or in the middle of its dense operands, with stored (owned rows) and
# accumulated (a summed sparse row index) outputs, and their gradients (a sampled dW,
# summed over the tiles); values and gradients vs float64.
STAGED = {
    "x@W": ("ni,io->no", (150, 9), (9, 7)),
    "g@W.T": ("no,io->ni", (140, 7), (9, 7)),
    "middle": ("ajb,ab->j", (5, 100, 6), (5, 6)),
    "middle_out": ("ajb,ab->ja", (5, 70, 6), (5, 6)),
}


def _custom_calls(text: str) -> int:
  return text.count("stablehlo.custom_call")


@pytest.mark.parametrize("fmt", ["csr", "coo"])
@pytest.mark.parametrize("name", sorted(STAGED))
def test_staged_tiles_match_float64(name, fmt):
  subscripts, x_shape, w_shape = STAGED[name]
  rng = np.random.default_rng(len(name) + len(fmt))
  w = util.random_dense(rng, w_shape, density=0.5)
  W = js.from_dense(jnp.asarray(w), format=fmt, nse=util.stored_count(w, 0, 0) + 3)
  dtype = np.float64 if fmt == "coo" else np.float32
  with util.dtype_context(dtype):
    x = jnp.asarray(util.random_values(rng, x_shape, dtype))
    W = W.astype(dtype)
    product = lambda d, x: js.einsum(subscripts, x, W.with_data(d))     # noqa: E731
    einsum_kernel.last_decisions.clear()
    lowered = jax.jit(product).lower(W.data, x)
    text = lowered.as_text()
    # one kernel on the operands as they are: no transposes around it
    assert _custom_calls(text) == 1 and "stablehlo.transpose" not in text, text
    ((spec, reason),) = einsum_kernel.last_decisions
    assert reason == "kernel" and _contiguous_free(spec)
    x_ids, w_ids = subscripts.split("->")[0].split(",")
    extent = x_shape[x_ids.index(next(c for c in x_ids if c not in w_ids))]
    assert extent > spec.size(free_indices(spec)[0])   # several tiles, the last partial
    want = np.einsum(subscripts, util.reference(x), util.reference(w))
    util.assert_allclose(lowered.compile()(W.data, x), want, dtype=dtype)
    # the gradients too: dx a staged dense output, dW a sampled one summed over the tiles
    grads = jax.jit(jax.grad(lambda d, x: jnp.sum(product(d, x) ** 2), (0, 1)))
    assert "stablehlo.transpose" not in grads.lower(W.data, x).as_text()
  with util.dtype_context(np.float64):   # (finite differences want float64)
    W, x = W.astype(np.float64), jnp.asarray(util.reference(x))
    product = lambda d, x: js.einsum(subscripts, x, W.with_data(d))     # noqa: E731
    util.check_grads_both(product, (W.data, x))


def test_tiling_is_declined_where_the_structure_dominates():
  """A staged kernel passes over the sparse structure once per tile: past RESTAGE times
  the dense bytes the transposes stay XLA's."""
  def spec(n, nse):
    lay = Layout(CSR, (64, 64), nse)
    return EinsumSpec((Operand((0, 1)), Operand((1, 2), lay)), out=(0, 2),
                      sizes=((0, n), (1, 64), (2, 64)))
  small = spec(512, 256)
  t = tiling(small, orient(small), 4, 8)
  tile = TILE_VECTORS * 8
  assert t.tile == tile and t.extent == 512 and t.spec.size(0) == tile
  assert t.operands == ((1, 64), None) and t.out == (1, 64)
  # the passes after the first: (512 / tile - 1) x nse x (4 + 2 x 4) bytes, against
  # RESTAGE x 512 x (64 + 64) x 4 bytes
  nse = RESTAGE * 512 * 128 * 4 // ((512 // tile - 1) * 12) + 1
  assert tiling(spec(512, nse), orient(spec(512, nse)), 4, 8) is None
  assert tiling(spec(tile, nse), orient(spec(tile, nse)), 4, 8) is not None   # one tile
  sddmm = EinsumSpec((Operand((2, 0)), Operand((2, 1))), out=(0, 1),
                     sizes=((0, 64), (1, 64), (2, 512)), out_kind=SAMPLED_OUT,
                     out_layout=Layout(CSR, (64, 64), 256))
  t = tiling(sddmm, orient(sddmm), 4, 8)            # summed over tiles: no output view
  assert t.operands == ((1, 64), (1, 64)) and t.out is None


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
