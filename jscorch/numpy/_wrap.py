"""How ``jscorch.numpy`` wraps ``jax.numpy``: sparse-aware einsum, and refusal of the rest.

Names that ``jscorch.numpy`` does not define itself are looked up in ``jax.numpy``
on first use; functions among them are wrapped by :class:`DenseOnly`, which passes
dense calls straight through and refuses SparseArray arguments with a message
that names the function and ``todense()``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax.numpy as jnp

from jscorch.array import SparseArray, is_sparse
from jscorch.einsum import einsum as _sparse_einsum

# Elementwise functions of jax.numpy with f(0) != 0: their result on a sparse array is dense.
NOT_ZERO_PRESERVING = frozenset({
    "exp", "exp2", "cos", "cosh", "log", "log2", "log10", "arccos", "acos", "arccosh", "acosh",
    "reciprocal", "sinc", "i0", "sigmoid", "logical_not", "invert", "bitwise_not",
    "bitwise_invert", "isfinite", "logaddexp", "logaddexp2", "float_power", "floor_divide",
    "remainder", "mod", "fmod", "equal", "less_equal", "greater_equal", "ones_like",
    "full_like",
})


def find_sparse(args, kwargs) -> SparseArray | None:
  """The first SparseArray among the arguments (looking one level into lists/tuples)."""
  for x in list(args) + list(kwargs.values()):
    if is_sparse(x):
      return x
    if isinstance(x, (list, tuple)):
      for y in x:
        if is_sparse(y):
          return y
  return None


def refusal(name: str, A: SparseArray) -> TypeError:
  """The TypeError for a SparseArray passed to ``jscorch.numpy.<name>``."""
  where = f"jscorch.numpy.{name}"
  if name in NOT_ZERO_PRESERVING:
    return TypeError(
        f"{where}: {name} is not zero-preserving ({name} of an implicit zero is not 0), so its "
        f"result on a SparseArray would be dense; got {A!r}, expected a dense array. Call "
        "A.todense() first, or use a zero-preserving function (see js.ZERO_PRESERVING).")
  return TypeError(
      f"{where}: SparseArrays are not supported by {name}; got {A!r}, expected dense arrays. "
      "Call A.todense() first.")


class DenseOnly:
  """A ``jax.numpy`` function that refuses SparseArray arguments (attributes forwarded)."""

  def __init__(self, name: str, fn: Callable):
    self._name = name
    self._fn = fn
    try:
      functools.update_wrapper(self, fn)
    except (AttributeError, TypeError):
      self.__wrapped__ = fn

  def __call__(self, *args, **kwargs):
    A = find_sparse(args, kwargs)
    if A is not None:
      raise refusal(self._name, A)
    return self._fn(*args, **kwargs)

  def __getattr__(self, attr: str) -> Any:
    if attr.startswith("__") or attr in ("_fn", "_name"):
      raise AttributeError(attr)
    return getattr(self._fn, attr)

  def __repr__(self):
    return f"<jscorch.numpy.{self._name}: {self._fn!r} (dense only)>"


class SparseAware:
  """A sparse-aware function that otherwise looks like its ``jax.numpy`` namesake.

  Calls go to ``fn`` (which handles SparseArrays and dense inputs); other
  attributes (a ufunc's ``at``, ``reduce``, ``outer``, ``nin``...) come from the
  ``jax.numpy`` function, for dense use.
  """

  def __init__(self, name: str, fn: Callable, dense: Any):
    self._name = name
    self._fn = fn
    self._dense = dense
    functools.update_wrapper(self, fn)

  def __call__(self, *args, **kwargs):
    return self._fn(*args, **kwargs)

  def __getattr__(self, attr: str) -> Any:
    if attr.startswith("__") or attr in ("_fn", "_name", "_dense"):
      raise AttributeError(attr)
    return getattr(self._dense, attr)

  def __repr__(self):
    return f"<jscorch.numpy.{self._name} (sparse-aware)>"


def wrap(name: str, obj: Any) -> Any:
  """``obj`` (a ``jax.numpy`` attribute) as ``jscorch.numpy`` exposes it."""
  if callable(obj) and not isinstance(obj, type):
    return DenseOnly(name, obj)
  return obj


def _interleaved_to_subscripts(args) -> tuple[str, list]:
  """``einsum(op0, sub0, op1, sub1, ..., [out])`` -> ``("ab,bc->ac", [op0, op1])``."""
  args = list(args)
  out = args.pop() if len(args) % 2 else None
  letters = {}

  def name(ids):
    text = ""
    for i in ids:
      if i is Ellipsis:
        text += "..."
      else:
        if int(i) not in letters:
          letters[int(i)] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[len(letters)]
        text += letters[int(i)]
    return text

  ops = args[0::2]
  subs = ",".join(name(s) for s in args[1::2])
  if out is not None:
    subs += "->" + name(out)
  return subs, ops


def einsum(subscripts, *operands, out=None, optimize="auto", precision=None,
           preferred_element_type=None, out_format=None, nse: int | None = None,
           work: int | None = None, **kwargs):
  """``jnp.einsum`` where operands may be SparseArrays (then :func:`jscorch.einsum`).

  Dense-only calls go to ``jax.numpy.einsum`` unchanged. With a SparseArray
  operand the string form and the interleaved form (``einsum(x, [0, 1], y,
  [1, 2])``) are accepted; ``out_format``, ``nse`` and ``work`` are those of
  :func:`jscorch.einsum`, ``precision`` and ``optimize`` are ignored, and
  ``preferred_element_type`` casts the result.

  Example:
    >>> import jax.numpy as jnp, jscorch as js, jscorch.numpy as jsnp
    >>> A = js.from_dense(jnp.array([[1., 0.], [0., 2.]]))
    >>> jsnp.einsum("ij,j->i", A, jnp.ones(2)), jsnp.einsum(A, [0, 1], [1])
    (Array([1., 2.], dtype=float32), Array([1., 2.], dtype=float32))
  """
  everything = (subscripts,) + operands
  if find_sparse(everything, kwargs) is None:
    if out_format is not None or nse is not None or work is not None:
      raise TypeError("jscorch.numpy.einsum: out_format=, nse= and work= apply to sparse "
                      "operands only; got dense operands. Drop them.")
    return jnp.einsum(subscripts, *operands, out=out, optimize=optimize, precision=precision,
                      preferred_element_type=preferred_element_type, **kwargs)
  if out is not None or kwargs:
    raise TypeError(f"jscorch.numpy.einsum: unsupported arguments with SparseArray operands; "
                    f"got {sorted(['out'] * (out is not None) + list(kwargs))}. Drop them.")
  if isinstance(subscripts, str):
    subs, ops = subscripts, list(operands)
  else:
    subs, ops = _interleaved_to_subscripts(everything)
  del optimize, precision
  result = _sparse_einsum(subs, *ops, out_format=out_format, nse=nse, work=work)
  if preferred_element_type is not None:
    result = result.astype(preferred_element_type)
  return result


def public_names() -> list[str]:
  """The public names of ``jax.numpy`` (what ``jscorch.numpy`` forwards)."""
  return [n for n in dir(jnp) if not n.startswith("_")]

