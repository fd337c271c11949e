"""Helpers for the ``jscorch.nn`` layer tests: random graphs and pure layer functions.

Example:
  >>> import layer_util
  >>> adj, dense = layer_util.random_adjacency(0, 5)
  >>> adj.shape, dense.shape
  ((5, 5), (5, 5))
"""
from __future__ import annotations


import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jscorch as js
import util

GRAPH_FORMATS = ["csr", "coo", "csc"]

# Eager constructors compile operation by operation (seconds per new shape); one jitted
# call compiles once.
_from_dense = jax.jit(js.from_dense, static_argnames=("format", "nse", "n_batch"))


def from_dense(x, format="csr", *, nse=None, n_batch=0):
  """``js.from_dense`` through one jitted call (``nse`` defaults to the exact count)."""
  nse = util.stored_count(x, n_batch) if nse is None else nse
  return _from_dense(jnp.asarray(x), format=format, nse=nse, n_batch=n_batch)


todense = jax.jit(lambda A: A.todense())
"""``A.todense()`` as one compiled call."""


def random_adjacency(rng, n: int, *, density: float = 0.35, padding: int = 2,
                     format="csr", dtype=np.float32, positive: bool = True):
  """A random `[n, n]` weighted adjacency with padding, and its dense numpy array.

  Weights are in ``[0.5, 2)`` (``positive``) or ``±[0.5, 2)``; the diagonal is
  cleared except for node 0, so "remaining self loops" logic is exercised.
  """
  rng = np.random.default_rng(rng)
  x = util.random_dense(rng, (n, n), density=density, dtype=dtype)
  if positive:
    x = np.abs(x)
  diag = np.arange(1, n)
  x[diag, diag] = 0
  if x[0, 0] == 0:
    x[0, 0] = np.asarray(1.25, dtype)
  return from_dense(x, format, nse=util.stored_count(x) + padding), x


def random_features(rng, n: int, f: int, *, sparse: bool = False, dtype=np.float32):
  """Dense features `[n, f]` (nonzero) or a sparse CSR array with padding, and the dense copy."""
  rng = np.random.default_rng(rng)
  if sparse:
    x = util.random_dense(rng, (n, f), density=0.4, dtype=dtype)
    return from_dense(x, "csr", nse=util.stored_count(x) + 2), x
  x = util.random_values(rng, (n, f), dtype)
  return jnp.asarray(x), x


def params_of(model):
  """``{path: float64 numpy array}`` of the model's ``nnx.Param``s."""
  state = nnx.state(model, nnx.Param)
  return {tuple(str(p) for p in path): np.asarray(v.get_value(), np.float64)
          for path, v in nnx.to_flat_state(state)}


def pure(model, fn):
  """``f(params, *args) = fn(merged_model, *args)``: a pure function of the parameters."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def f(params, *args):
    return fn(nnx.merge(graphdef, params, rest), *args)

  return f, params


def leaky_relu(x, slope):
  return np.where(x >= 0, x, slope * x)


def masked_softmax(scores, mask, axis=1):
  """Softmax over ``axis`` where ``mask``; rows without entries give 0."""
  s = np.where(mask, scores, -np.inf)
  top = np.max(s, axis=axis, keepdims=True)
  top = np.where(np.isfinite(top), top, 0)
  e = np.where(mask, np.exp(s - top), 0)
  total = e.sum(axis=axis, keepdims=True)
  return np.where(total > 0, e / np.where(total > 0, total, 1), 0)


def kernel_transposes(jaxpr) -> int:
  """How many generated kernels of ``jaxpr``'s sparse einsums (sub-jaxprs included) re-sort
  a sparse operand's pattern in their prologue; every einsum must have a kernel."""
  from jscorch.primitives import einsum_kernel, loopnest
  count = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "jscorch_einsum":
      kernel, reason = einsum_kernel.kernel_plan(eqn.params["spec"], [None] * len(eqn.invars),
                                                 eqn.invars[0].aval.dtype)
      assert reason == "kernel", reason
      count += sum(isinstance(s, loopnest.Transpose) for s in getattr(kernel, "prologue", ()))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += kernel_transposes(sub)
  return count
