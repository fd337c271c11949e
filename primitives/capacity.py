"""Capacity overflow of sparse results: never silent.

A sparse result has a static capacity ``nse``. When the entries it needs exceed
it, an eager call raises :class:`SparseCapacityError` with the needed size. Under
``jit`` the count is a tracer, so the result is **poisoned** instead: its float
values become NaN (signed integer values -1, unsigned ones their largest value, bool
True), which no downstream loss can miss. With
``jscorch.config.checkify_capacity = True`` a ``checkify`` check is emitted as well
(wrap the function with ``jax.experimental.checkify.checkify`` to receive it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from ._errors import SparseCapacityError
from .settings import settings


def enforce_capacity(needed, capacity: int, data: jax.Array, func: str, *,
                     check: bool = True) -> jax.Array:
  """Raises (eager) or poisons ``data`` (traced) when ``needed > capacity``.

  Args:
    needed: number of entries the result needs (scalar int array or int).
    capacity: the static capacity ``nse`` of the result.
    data: the result's values.
    func: the public function name, for the message.
    check: emit the ``checkify`` check when enabled; False inside lowerings, where
      checks cannot be functionalized (the caller checks at trace level instead).

  Returns:
    ``data``, unchanged unless it overflowed under ``jit``.
  """
  needed_max = jnp.max(needed, initial=0)          # an empty batch needs nothing
  try:
    concrete = int(needed_max)
  except jax.errors.ConcretizationTypeError:
    concrete = None
  if concrete is not None:
    if concrete > capacity:
      raise SparseCapacityError(
          f"{func}: the result needs {concrete} stored entries but its capacity is "
          f"nse={capacity}. Pass nse={concrete} (or larger).")
    return data
  overflow = needed_max > capacity
  if check and settings.checkify_capacity:
    checkify.check(~overflow, f"{func}: the result needs {{needed}} stored entries but "
                   f"its capacity is nse={capacity}; pass a larger nse.", needed=needed_max)
  return jnp.where(overflow, jnp.array(_poison(data.dtype), data.dtype), data)


def _poison(dtype):
  """The value an overflowed result is filled with: NaN, else -1 for signed integers, the
  largest value for unsigned ones, True for bool."""
  if jnp.issubdtype(dtype, jnp.inexact):
    return np.nan
  if jnp.issubdtype(dtype, jnp.unsignedinteger):
    return jnp.iinfo(dtype).max
  return True if dtype == np.dtype(bool) else -1
