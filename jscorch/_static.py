"""Turning arguments that fix buffer shapes into concrete Python values, or a clear error."""
from __future__ import annotations

import jax
import numpy as np

from jscorch.primitives import checks


def static_int(value, name: str, func: str) -> int:
  """``int(value)``; raises a TypeError that names the argument when it is traced.

  Example:
    >>> static_int(np.int64(3), "nse", "from_dense")
    3
  """
  if not checks.is_concrete(value):
    raise TypeError(
        f"{func}: {name} must be a static Python int because it fixes buffer shapes; got a "
        f"traced value. Pass {name}= as a concrete int (mark it static in jax.jit).")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
      isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0
      and np.issubdtype(value.dtype, np.integer)):
    raise TypeError(f"{func}: {name} must be an int; got {type(value).__name__} {value!r}.")
  return int(value)


def axes(axis, ndim: int, func: str) -> tuple[int, ...]:
  """Sorted, non-negative axes from ``None`` (all), an int or a sequence of ints.

  Example:
    >>> axes((-1, 0), 3, "sum")
    (0, 2)
  """
  if axis is None:
    return tuple(range(ndim))
  raw = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
  out = []
  for ax in raw:
    ax = static_int(ax, "axis", func)
    if not -ndim <= ax < ndim:
      raise ValueError(f"{func}: axis out of range; got axis={axis!r}, expected "
                       f"-{ndim} <= axis < {ndim} for an array of rank {ndim}.")
    out.append(ax % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"{func}: repeated axis; got axis={axis!r}, expected distinct axes.")
  return tuple(sorted(out))


def static_shape(shape, func: str) -> tuple[int, ...]:
  """A tuple of ints from an int or a sequence of ints (never traced)."""
  if isinstance(shape, (int, np.integer)):
    shape = (shape,)
  return tuple(static_int(s, "shape", func) for s in shape)
