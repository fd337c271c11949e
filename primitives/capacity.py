"""Capacity overflow of sparse results: never silent.

A sparse result has a static capacity ``nse``. When the entries it needs exceed
it, an eager call raises :class:`SparseCapacityError` with the needed size. Under
``jit`` the count is a tracer, so the result is **poisoned** instead: its float
values become NaN (integer values -1), which no downstream loss can miss. With
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
  bad = jnp.array(np.nan if jnp.issubdtype(data.dtype, jnp.inexact) else -1, data.dtype)
  return jnp.where(overflow, bad, data)
