"""Zero-preserving elementwise functions: on a SparseArray they map the stored values.

A function ``f`` with ``f(0) == 0`` keeps every implicit zero a zero, so
``f(A)`` is ``A``'s pattern with ``f`` applied to ``A.data``: no dense array is
formed, jit / vmap / grad are those of ``f`` itself. :data:`ZERO_PRESERVING` is the
one table of such functions; each becomes a public function of the same name in
``jscorch`` and ``jscorch.numpy`` (dense inputs go straight to the JAX function).
Functions that are not zero-preserving (``exp``, ``cos``, ...) are refused on
SparseArrays by ``jscorch.numpy`` with a message that names ``todense()``.

Duplicates: a format that is not unique may store one coordinate several
times, and the array holds their sum. A **linear** function (``negative``,
``positive``, ``conj``, ``real``, ``imag``, the angle conversions: ``f(a + b) ==
f(a) + f(b)``) maps each stored value and keeps ``A``'s index buffers exactly
(the same buffer objects: nothing is coalesced). Every other function (``sin``,
``abs``, ``sign``, ``floor``, ``square``, powers, ...) must see the summed
value, so a non-unique ``A`` is first coalesced with
:func:`jscorch.ops.coalesce.sum_duplicates` (same capacity ``nse``, so shapes
stay static under ``jit``; the result has the ordered, unique version of the
format); a unique format is mapped as it is.

Padding keeps value 0, and gradients at padding are 0 even where ``f'(0)`` is
infinite (``sqrt``, ``cbrt``, fractional powers): those are evaluated at a safe
point for padding leaves.

Example:
  >>> import jax.numpy as jnp, jscorch as js
  >>> A = js.from_dense(jnp.array([[0., -4.], [9., 0.]]))
  >>> js.abs(A).data, js.relu(A).data, js.sqrt(js.abs(A)).data
  (Array([4., 9.], dtype=float32), Array([0., 9.], dtype=float32), Array([2., 3.], dtype=float32))
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jscorch.array import SparseArray, is_sparse
from jscorch.ops.coalesce import coalesced
from jscorch.primitives import segment


class Unary(NamedTuple):
  """One zero-preserving function ``fn(x, *args, **kwargs)``.

  ``singular_at_zero``: ``fn'(0)`` is infinite. ``linear``: ``fn(a + b) ==
  fn(a) + fn(b)``, so duplicates need not be summed first.
  """
  fn: Callable
  singular_at_zero: bool
  reference: str          # the dense function's public name, e.g. "jnp.sin"
  linear: bool = False


LINEAR_NAMES = frozenset({"negative", "positive", "conj", "conjugate", "real", "imag",
                          "deg2rad", "rad2deg", "radians", "degrees"})
"""The table entries that are linear (additive): they map duplicates one by one."""


def _np(name: str, singular: bool = False) -> Unary:
  return Unary(getattr(jnp, name), singular, f"jnp.{name}", name in LINEAR_NAMES)


def _nn(name: str) -> Unary:
  return Unary(getattr(jax.nn, name), False, f"jax.nn.{name}", name in LINEAR_NAMES)


_NUMPY_NAMES = (
    "abs", "absolute", "negative", "positive", "sign", "square",
    "sin", "tan", "arcsin", "asin", "arctan", "atan", "sinh", "tanh", "arcsinh", "asinh",
    "arctanh", "atanh", "expm1", "log1p",
    "floor", "ceil", "round", "trunc", "rint",
    "deg2rad", "rad2deg", "radians", "degrees", "conj", "conjugate", "real", "imag",
)
_NN_NAMES = ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "soft_sign",
             "hard_tanh")

ZERO_PRESERVING: dict[str, Unary] = {
    **{name: _np(name) for name in _NUMPY_NAMES},
    "sqrt": _np("sqrt", singular=True),       # sqrt'(0) = inf
    "cbrt": _np("cbrt", singular=True),
    **{name: _nn(name) for name in _NN_NAMES},
}
"""Name -> :class:`Unary` for every function with ``f(0) == 0`` that SparseArrays accept."""

JAX_NN_NAMES = _NN_NAMES
"""The table entries that come from ``jax.nn`` (not in ``jax.numpy``)."""


def valid_mask(A: SparseArray) -> jax.Array:
  """`[*batch, nse, 1...]` bool, True at in-use leaves, broadcastable against ``A.data``."""
  V = A.block_view()          # a blocked format's block view: the same leaves
  valid = segment.valid_leaves(V.layout, V.indices)
  return valid.reshape(valid.shape + (1,) * V.n_dense)


def map_values(A: SparseArray, fn: Callable, *args, singular_at_zero: bool = False,
               linear: bool = False, **kwargs) -> SparseArray:
  """``fn`` applied to the tensor ``A`` stores, through its values (``fn(0)`` must be 0).

  Args:
    A: the sparse operand (any format; duplicates of a non-unique format hold
      one coordinate's value together).
    fn: an elementwise function with ``fn(0) == 0``.
    *args, **kwargs: extra arguments of ``fn``.
    singular_at_zero: evaluate padding leaves at 1 (then reset to 0), so an
      infinite ``fn'(0)`` does not make their gradient NaN.
    linear: ``fn(a + b) == fn(a) + fn(b)``: duplicates are mapped one by one and
      the result shares ``A``'s index buffers. Otherwise (the default, always
      correct) a non-unique ``A`` is coalesced first (:func:`~jscorch.ops.coalesce.coalesced`).

  Returns:
    A SparseArray of ``A``'s shape and ``nse``: ``A``'s pattern, or for a
    non-linear ``fn`` on a non-unique format, its coalesced pattern.

  Example:
    >>> import jax.numpy as jnp, jscorch as js
    >>> from jscorch.ops.unary import map_values
    >>> map_values(js.from_dense(jnp.array([0., 3.]), "coo"), lambda v: 2 * v).data
    Array([6.], dtype=float32)
  """
  if not linear:
    A = coalesced(A)
  if not singular_at_zero:
    return A.with_data(fn(A.data, *args, **kwargs))
  valid = valid_mask(A)
  safe = jnp.where(valid, A.data, jnp.ones((), A.data.dtype))
  out = fn(safe, *args, **kwargs)
  return A.with_data(jnp.where(valid, out, jnp.zeros((), out.dtype)))


_DUPLICATES = {
    True: "It is linear: duplicates of a non-unique format are mapped one by one, and the "
          "index buffers are those of ``x`` (not copied).",
    False: "Duplicates of a non-unique format are summed first (``x.sum_duplicates()``, same "
           "``nse``), since ``f(a + b) != f(a) + f(b)``.",
}


def _make(name: str, entry: Unary) -> Callable:
  fn, singular, linear = entry.fn, entry.singular_at_zero, entry.linear

  def op(x, *args, **kwargs):
    if is_sparse(x):
      return map_values(x, fn, *args, singular_at_zero=singular, linear=linear, **kwargs)
    return fn(x, *args, **kwargs)

  op.__name__ = op.__qualname__ = name
  op.__module__ = __name__
  op.__doc__ = f"""``{entry.reference}`` that also accepts a SparseArray (zero-preserving).

  On a :class:`SparseArray` the result has the same pattern (format, ``nse``,
  padding) with ``{entry.reference}`` applied to the stored values; extra
  arguments are passed on. {_DUPLICATES[entry.linear]} Dense inputs go straight
  to ``{entry.reference}``. Works under ``jit``, ``vmap`` and ``grad`` like the
  dense function.

  Args:
    x: a dense array or a SparseArray.
    *args, **kwargs: further arguments of ``{entry.reference}``.

  Returns:
    A SparseArray for a sparse ``x``, else what ``{entry.reference}`` returns.

  Example:
    >>> import jax, jax.numpy as jnp, jscorch as js
    >>> A = js.from_dense(jnp.array([[0., 0.5], [0.25, 0.]]))
    >>> B = js.{name}(A)
    >>> B.nse, bool(jnp.allclose(B.todense(), {entry.reference}(A.todense())))
    (2, True)
  """
  return op


_FUNCS = {name: _make(name, entry) for name, entry in ZERO_PRESERVING.items()}
globals().update(_FUNCS)

__all__ = ["ZERO_PRESERVING", "JAX_NN_NAMES", "LINEAR_NAMES", "Unary", "map_values",
           "valid_mask", *_FUNCS]
