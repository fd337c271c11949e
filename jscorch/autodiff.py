"""Differentiation with respect to SparseArrays: only the stored values are variables.

``js.grad`` / ``js.value_and_grad`` behave like their ``jax`` namesakes, except that a
SparseArray argument is differentiated through its ``data`` alone and its gradient
is a SparseArray with the same pattern (never a dense array).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax

from jscorch.array import is_sparse


def _split(tree):
  """Replaces each SparseArray in ``tree`` by its data."""
  return jax.tree_util.tree_map(lambda x: x.data if is_sparse(x) else x, tree, is_leaf=is_sparse)


def _merge(template, values):
  """Puts ``values`` (shaped like ``_split(template)``) back into template's SparseArrays."""
  return jax.tree_util.tree_map(
      lambda t, v: t.with_data(v) if is_sparse(t) else v, template, values, is_leaf=is_sparse)


def value_and_grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
                   **kwargs) -> Callable:
  """Like ``jax.value_and_grad``; SparseArray arguments get SparseArray gradients.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 2.], [3., 0.]]))
    >>> val, g = js.value_and_grad(lambda A: (A.todense() ** 2).sum())(A)
    >>> float(val), g.data
    (13.0, Array([4., 6.], dtype=float32))
  """
  multiple = not isinstance(argnums, int)
  nums = tuple(argnums) if multiple else (argnums,)

  def wrapped(*args):
    templates = [args[i] for i in nums]

    def inner(*args):
      args = list(args)
      for i, t in zip(nums, templates):
        args[i] = _merge(t, args[i])
      return fun(*args)

    flat_args = list(args)
    for i in nums:
      flat_args[i] = _split(args[i])
    value, grads = jax.value_and_grad(inner, argnums=argnums, has_aux=has_aux,
                                      **kwargs)(*flat_args)
    grads = tuple(_merge(t, g) for t, g in zip(templates, grads if multiple else (grads,)))
    return value, (grads if multiple else grads[0])

  return wrapped


def grad(fun: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False,
         **kwargs) -> Callable:
  """Like ``jax.grad``; SparseArray arguments get SparseArray gradients (same pattern).

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 2.], [3., 0.]]))
    >>> g = js.grad(lambda A: A.todense().sum())(A)
    >>> g.data, g.format == A.format
    (Array([1., 1.], dtype=float32), True)
  """
  vg = value_and_grad(fun, argnums, has_aux, **kwargs)

  def wrapped(*args):
    value, g = vg(*args)
    return (g, value[1]) if has_aux else g

  return wrapped
