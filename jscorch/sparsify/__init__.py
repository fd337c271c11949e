"""``js.sparsify``: run unchanged dense JAX / Flax code on SparseArray arguments.

``js.sparsify(f)`` traces ``f`` with every SparseArray argument replaced by a dense
stand-in of the same shape and dtype, then evaluates the traced program
(the jaxpr) with sparse implementations of its primitives. See
``docs/sparsify.md`` for the rule of every primitive and the fusion rule.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

import jax
import numpy as np

from jscorch.array import is_sparse

from ._errors import SparsifyError as SparsifyError
from ._interpreter import Context, eval_jaxpr, output

__all__ = ["SparsifyError", "sparsify"]


def _is_dynamic(x) -> bool:
  return is_sparse(x) or isinstance(x, (jax.Array, np.ndarray, np.generic))


def _stand_in(x):
  if is_sparse(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  aval = jax.typeof(x) if isinstance(x, jax.Array) else None
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                              weak_type=bool(getattr(aval, "weak_type", False)))


def _nnx_variable_type():
  """``flax.nnx.Variable`` when Flax NNX is imported (then arguments may hold Variables)."""
  nnx = sys.modules.get("flax.nnx")
  return getattr(nnx, "Variable", None)


def _closure_mutation_error(e: Exception) -> Exception | None:
  """A SparsifyError for Flax's TraceContextError (a closed-over NNX object was mutated)."""
  errors = sys.modules.get("flax.errors")
  if errors is None or not isinstance(e, getattr(errors, "TraceContextError", ())):
    return None
  return SparsifyError(
      f"sparsify: fun mutates a Flax NNX object it closes over ({e}); got a closed-over "
      "module (e.g. nnx.Dropout or nnx.Rngs drawing a key), expected every module that "
      "fun updates to be an argument, as nnx.jit requires. Pass it as one: "
      "js.sparsify(lambda model, A: model(A))(model, A), or use nn.SparseDropout / "
      "js.dropout outside js.sparsify.")


def sparsify(fun: Callable | None = None, *, densify: bool = False) -> Callable:
  """Transforms ``fun`` so that any of its array arguments may be a :class:`SparseArray`.

  ``js.sparsify(fun)(*args, **kwargs)`` traces ``fun`` as if its SparseArray
  arguments (anywhere in the argument pytrees) were dense, and evaluates the
  traced program with sparse implementations of its primitives: products become
  :func:`jscorch.einsum` calls (chains of products over one pattern are fused into
  a single multi-operand einsum), zero-preserving elementwise functions map the
  stored values, ``+`` of two sparse operands stores the union, and so on (the
  table is in ``docs/sparsify.md``). The result has the same values as
  ``fun`` on the densified arguments; it is a SparseArray where the computation
  keeps sparsity (``2 * A``, ``A * X``, ``relu(A)``, ``A @ B``) and dense otherwise
  (``A @ X``, ``A.sum(0)``).

  Works as a decorator (``@js.sparsify`` or ``@js.sparsify(densify=True)``) and
  composes with ``jax.jit``, ``jax.grad`` / :func:`jscorch.grad`, ``jax.vmap`` and
  the ``flax.nnx`` transforms in either order. ``pjit``, ``custom_jvp`` and
  ``custom_vjp`` bodies are evaluated inline: a custom differentiation rule is
  replaced by differentiating the sparse implementation of the primal body.
  ``cond`` takes sparse operands (a result stays sparse when every branch
  returns the same layout); ``scan``, ``while_loop`` and ``fori_loop`` carry
  sparse values whose pattern the body keeps (or stores in the same capacity),
  and refuse a body that would grow it.

  Non-array leaves of the arguments (Python scalars, strings, ...) are static:
  ``fun`` sees them as they are. Flax NNX modules may be arguments (as with
  ``nnx.jit``): the Variables ``fun`` updates (an ``nnx.Dropout``'s RNG count,
  batch statistics) are written back to the caller's module, so ``nnx.Dropout``
  draws a fresh mask at every call and acts on a sparse operand's stored values.
  A module that ``fun`` *closes over* cannot be updated from inside the trace
  (Flax's rule for every transform): that raises :class:`SparsifyError` saying
  to pass the module as an argument. ``fun`` is traced at every call (wrap the result
  in ``jax.jit`` to trace once).

  Args:
    fun: the function; it must be traceable by ``jax.make_jaxpr`` on dense inputs.
    densify: when a sparse operand reaches a primitive without a sparse rule, or a
      function that is not zero-preserving (``exp``, ``cos``, ``x + 1``), densify
      it with one :class:`jscorch.SparseEfficiencyWarning` naming the primitive and
      the memory it cost, instead of raising.

  Returns:
    The transformed function.

  Raises:
    SparsifyError: (a ``TypeError``) a sparse operand reaches a primitive with no
      sparse rule, or a non-zero-preserving function, without ``densify=True``;
      the message names the primitive and the source line of ``fun`` that emitted it.
    ValueError: shape mismatches, raised while tracing ``fun`` (from its own line).

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> @js.sparsify
    ... def layer(A, x, w):
    ...   return jax.nn.relu(A @ (x @ w))
    >>> layer(A, jnp.ones((2, 3)), jnp.ones((3, 1)))
    Array([[3.],
           [6.]], dtype=float32)
    >>> js.sparsify(lambda A: 2 * jax.nn.relu(A))(A)
    SparseArray(float32[2, 2], format=CSR, nse=2)
  """
  if fun is None:
    return functools.partial(sparsify, densify=densify)
  if not callable(fun):
    raise TypeError(f"sparsify: fun must be callable; got {type(fun).__name__} {fun!r}. "
                    "Use js.sparsify(f) or @js.sparsify.")

  @functools.wraps(fun)
  def sparsified(*args, **kwargs):
    # NNX Variables are leaves: each is rebuilt around its traced value inside the
    # trace (where Flax lets it be updated) and its new value is written back after.
    var_type = _nnx_variable_type()
    is_var = (lambda x: isinstance(x, var_type)) if var_type is not None else lambda x: False
    leaves, treedef = jax.tree_util.tree_flatten(
        (args, kwargs), is_leaf=lambda x: is_sparse(x) or is_var(x))
    variables = {k: x for k, x in enumerate(leaves) if is_var(x)}
    leaves = [x.get_value() if k in variables else x for k, x in enumerate(leaves)]
    if not any(is_sparse(x) for x in leaves):
      return fun(*args, **kwargs)
    dynamic = [k for k, x in enumerate(leaves) if _is_dynamic(x)]
    updated = []               # the Variables fun updated (found while tracing)

    def flat_fun(*values):
      full = list(leaves)
      for k, v in zip(dynamic, values):
        full[k] = v
      rebuilt = {k: variables[k].replace(full[k]) for k in variables}
      a, kw = jax.tree_util.tree_unflatten(
          treedef, [rebuilt[k] if k in rebuilt else x for k, x in enumerate(full)])
      out = fun(*a, **kw)
      updated[:] = [k for k, v in rebuilt.items() if v.get_value() is not full[k]]
      return out, [rebuilt[k].get_value() for k in updated]

    try:
      closed, (out_shape, _) = jax.make_jaxpr(flat_fun, return_shape=True)(
          *[_stand_in(leaves[k]) for k in dynamic])
    except Exception as e:
      error = _closure_mutation_error(e)
      if error is None:
        raise
      raise error from e
    ctx = Context(densify)
    outs = eval_jaxpr(ctx, closed.jaxpr, closed.consts, [leaves[k] for k in dynamic])
    outs = [output(ctx, v) for v in outs]
    n_out = len(outs) - len(updated)
    for k, value in zip(updated, outs[n_out:]):
      variables[k].set_value(value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs[:n_out])

  return sparsified
