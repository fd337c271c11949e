"""Operand handling shared by the products and elementwise ops: checks, broadcasting.

Every function here takes the public function's name (``func``) for its error messages.
"""
from __future__ import annotations

import string

import jax
import jax.numpy as jnp
import numpy as np

from jscorch.array import SparseArray, is_operand
from jscorch.primitives import checks

_LETTERS = string.ascii_letters


def as_dense(x, func: str, name: str) -> jax.Array:
  if not is_operand(x):
    raise TypeError(f"{func}: {name} must be an array, a scalar or a SparseArray; got "
                    f"{checks.describe(x)}." + (checks.conversion_hint(x) or
                                                " Convert it with jnp.asarray first."))
  return jnp.asarray(x)


def no_foreign(func: str, **operands) -> None:
  """Raises for another library's sparse matrix (described, never printed) with its conversion."""
  for name, x in operands.items():
    hint = checks.conversion_hint(x)
    if hint:
      raise TypeError(f"{func}: {name} must be an array, a scalar or a SparseArray; got "
                      f"{checks.describe(x)}.{hint}")


def shape_of(x) -> tuple[int, ...]:
  return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def broadcast_shapes(a, b, func: str) -> tuple[int, ...]:
  sa, sb = shape_of(a), shape_of(b)
  try:
    return tuple(np.broadcast_shapes(sa, sb))
  except ValueError:
    raise ValueError(f"{func}: operand shapes do not broadcast; got a.shape={sa}, "
                     f"b.shape={sb}, expected numpy-broadcastable shapes. Reshape the "
                     "dense operand (e.g. x[:, None] for a column).") from None


# One compiled conversion per layout (eager conversions would run op by op).
densify = jax.jit(lambda A: A.todense())


def broadcast_sparse(A: SparseArray, shape: tuple[int, ...], func: str) -> SparseArray:
  """``A`` broadcast to ``shape``: new leading dims become batch dims, the pattern repeats.

  Size-1 batch and block dimensions broadcast too; sparse dimensions cannot.
  """
  if A.shape == shape:
    return A
  lead = len(shape) - A.ndim
  aligned = shape[lead:]
  nb, ns = A.n_batch, A.n_sparse
  for d in range(nb, nb + ns):
    if A.shape[d] != aligned[d]:
      raise ValueError(
          f"{func}: a sparse dimension cannot broadcast; got a SparseArray of shape {A.shape} "
          f"(sparse dimensions {tuple(range(nb, nb + ns))}) against shape {shape}, expected "
          "the sparse dimensions to match. Densify it with A.todense() or reshape the "
          "other operand.")
  batch = shape[:lead] + aligned[:nb]
  data = jnp.broadcast_to(A.data, batch + (A.nse,) + aligned[nb + ns:])
  indices = [jnp.broadcast_to(i, batch + i.shape[nb:]) for i in A.indices]
  return SparseArray._make(data, indices, A.format.replace(n_batch=lead + nb), shape)


def letters(n: int, start: int = 0) -> str:
  if start + n > len(_LETTERS):
    raise ValueError(f"jscorch: at most {len(_LETTERS)} dimensions are supported; got {n}.")
  return _LETTERS[start:start + n]
