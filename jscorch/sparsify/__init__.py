"""``js.sparsify``: run unchanged dense JAX / Flax code on SparseArray arguments.

``js.sparsify(f)`` traces ``f`` with every SparseArray argument replaced by a dense
stand-in of the same shape and dtype, then evaluates the traced program
(the jaxpr) with sparse implementations of its primitives. See
``docs/sparsify.md`` for the rule of every primitive and the fusion rule.
"""
from __future__ import annotations

import functools
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
  returns the same layout), ``scan`` and ``while_loop`` take sparse constants
  with dense carries.

  Non-array leaves of the arguments (Python scalars, strings, ...) are static:
  ``fun`` sees them as they are. ``fun`` is traced at every call (wrap the result
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
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_sparse)
    if not any(is_sparse(x) for x in leaves):
      return fun(*args, **kwargs)
    dynamic = [k for k, x in enumerate(leaves) if _is_dynamic(x)]

    def flat_fun(*values):
      full = list(leaves)
      for k, v in zip(dynamic, values):
        full[k] = v
      a, kw = jax.tree_util.tree_unflatten(treedef, full)
      return fun(*a, **kw)

    closed, out_shape = jax.make_jaxpr(flat_fun, return_shape=True)(
        *[_stand_in(leaves[k]) for k in dynamic])
    ctx = Context(densify)
    outs = eval_jaxpr(ctx, closed.jaxpr, closed.consts, [leaves[k] for k in dynamic])
    outs = [output(ctx, v) for v in outs]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

  return sparsified
